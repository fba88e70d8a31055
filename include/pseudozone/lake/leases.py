"""Writers that cannot undo each other: leases and subject-set epochs in the state database.

- **Leases.** A lease is a name held by one holder until it is released or expires. Taking
  one is a write to the state database, and writers are serialized there, so two holders
  never hold one name at once. A holder that dies stops renewing, and its lease expires
  after its time to live; at once when the holder was a process of the same host that is
  gone (a killed ingest is rerun without waiting). Names:
  - ``rewrite:<tenant>``: a rights run, from its plan to its close, or a compaction of the
    tenant. Only one of them rewrites the tenant's files at a time.
  - ``publish:<tenant>:<batch>``: an ingest while it writes a batch's index and publishes
    its files.
- **Epochs.** Each tenant has a subject-set epoch. A rights run bumps it when it is
  planned. An ingest reads it when it plans a batch, and checks it again when it takes the
  batch's publish lease. If the epoch moved, the ingest plans again under the new sets. A
  rights run waits, after its bump, until no publish lease of the tenant is live before it
  reads the index. So an ingest either published before the run read the index, and the
  run rewrites its files, or it plans again and sees the run's erasures and restrictions.

docs/adr/0019-writer-leases.md says why and what it covers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

if TYPE_CHECKING:
    from pseudozone.state import StateConn

log = logging.getLogger(__name__)

# how long a lease lives without renewal (a holder renews it every third of this)
PUBLISH_TTL_S = 300.0
REWRITE_TTL_S = 600.0
# a rights run holds its tenants' rewrite leases from plan to close, across tasks that may run
# on other workers: each task renews them while it runs (``kept``); a run that waits longer
# than this between tasks may lose them, and its later tasks then fail and its requests go to
# the next run (never a rewrite from a plan another writer may have outdated)
RUN_TTL_S = 900.0
WAIT_POLL_S = 0.2


class LeaseTimeout(PseudozoneError):
    """A lease stayed held by another holder past the wait (names a lease, never data)."""


def holder_id(prefix: str = "") -> str:
    """A holder name unique to this process and call: host, pid and a random part."""
    return f"{prefix}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` (``holder_id``) is a process of this host that no longer runs: its
    lease need not wait for its expiry (a killed ingest rerun at once)."""
    parts = holder.split(":")
    if len(parts) < 4 or parts[-3] != socket.gethostname() or not parts[-2].isdigit():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def take(conn: StateConn, name: str, holder: str, ttl_s: float) -> bool:
    """Take (or renew) ``name`` for ``holder`` in the open state transaction: True unless another
    holder's lease on it is live (not expired, and not of a process of this host that is gone)."""
    now = _now_ms()
    row = conn.execute("SELECT holder, expires_ms FROM leases WHERE name = ?", (name,)).fetchone()
    if row is not None and row[0] != holder and int(row[1]) > now and not _dead_here(str(row[0])):
        return False
    expires = now + int(ttl_s * 1000)
    if row is None:
        conn.execute("INSERT INTO leases (name, holder, expires_ms) VALUES (?, ?, ?)",
                     (name, holder, expires))
    else:
        if row[0] != holder:
            log.warning("lease %s: taken over from %s, whose lease expired", name, row[0])
        conn.execute("UPDATE leases SET holder = ?, expires_ms = ? WHERE name = ?", (holder, expires, name))
    return True


def renew(conn: StateConn, name: str, holder: str, ttl_s: float) -> bool:
    """Extend ``holder``'s lease on ``name`` if it is still the holder, expired or not: nobody
    took the name in between (a taker would have replaced the holder).  False when it is lost."""
    done = conn.execute("UPDATE leases SET expires_ms = ? WHERE name = ? AND holder = ?",
                        (_now_ms() + int(ttl_s * 1000), name, holder)).rowcount
    return bool(done)


def release(conn: StateConn, names: Iterable[str], holder: str) -> None:
    """Give ``names`` up, where ``holder`` still holds them."""
    for name in names:
        conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))


def release_held(conn: StateConn, holder: str) -> int:
    """Give up every lease ``holder`` holds."""
    return int(conn.execute("DELETE FROM leases WHERE holder = ?", (holder,)).rowcount or 0)


def live(conn: StateConn, prefix: str, *, besides: str | None = None) -> list[str]:
    """Names starting with ``prefix`` whose lease is live (not another's ``besides``)."""
    rows = conn.execute("SELECT name, holder FROM leases WHERE expires_ms > ?", (_now_ms(),)).fetchall()
    return sorted(str(r[0]) for r in rows
                  if str(r[0]).startswith(prefix) and (besides is None or r[1] != besides)
                  and not _dead_here(str(r[1])))


class _Heartbeat:
    """Renews leases every third of their time to live until stopped (a daemon thread: it dies
    with the process, and the leases expire)."""

    def __init__(self, settings: Settings, names: list[str], holder: str, ttl_s: float) -> None:
        self.settings, self.names, self.holder, self.ttl_s = settings, names, holder, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pseudozone-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                with state.connect(self.settings) as conn:
                    for name in self.names:
                        if not take(conn, name, self.holder, self.ttl_s):
                            log.error("lease %s was lost to another holder", name)
            except Exception:  # noqa: BLE001 - a failed renewal is retried; the lease may expire
                log.warning("lease renewal failed; retrying", exc_info=False)


@contextlib.contextmanager
def held(settings: Settings, names: list[str], holder: str, *, ttl_s: float = REWRITE_TTL_S,
         wait_s: float | None = None) -> Iterator[None]:
    """Hold every lease of ``names`` (all or none, in one transaction), renewed while the block
    runs, released after it. Waits for another holder up to ``wait_s`` (None: as long as its
    lease lives, plus a poll), then raises ``LeaseTimeout``."""
    deadline = time.monotonic() + (ttl_s + 1.0 if wait_s is None else wait_s)
    while True:
        with state.connect(settings) as conn:
            taken = [n for n in names if take(conn, n, holder, ttl_s)]
            if len(taken) < len(names):
                release(conn, taken, holder)
                blocked = sorted(set(names) - set(taken))
            else:
                blocked = []
        if not blocked:
            break
        if time.monotonic() > deadline:
            raise LeaseTimeout(f"lease {blocked[0]} is held by another writer; try again once it is done")
        time.sleep(WAIT_POLL_S)
    try:
        with _Heartbeat(settings, names, holder, ttl_s):
            yield
    finally:
        with state.connect(settings) as conn:
            release(conn, names, holder)


class EpochMoved(PseudozoneError):
    """A rights run changed the tenant's subject sets after this batch was planned: plan again."""


@contextlib.contextmanager
def publishing(settings: Settings, tenant: str, batch_id: str, planned_epoch: int) -> Iterator[None]:
    """Hold the batch's publish lease while the block writes its index and files, taken only if
    the tenant's epoch is still the one the batch was planned under (else ``EpochMoved``)."""
    name, holder = f"publish:{tenant}:{batch_id}", holder_id("ingest:")
    with state.connect(settings) as conn:
        if epoch(conn, tenant) != planned_epoch:
            raise EpochMoved(f"batch {batch_id}: a rights run of tenant {tenant} began after it was planned")
        if not take(conn, name, holder, PUBLISH_TTL_S):
            raise LeaseTimeout(f"batch {batch_id} is being published by another worker")
    try:
        with _Heartbeat(settings, [name], holder, PUBLISH_TTL_S):
            yield
    finally:
        with state.connect(settings) as conn:
            release(conn, [name], holder)


def hold_now(stack: contextlib.ExitStack, settings: Settings, names: list[str], holder: str, *,
             ttl_s: float = REWRITE_TTL_S) -> bool:
    """Take ``names`` now, held until ``stack`` closes; False (nothing taken) when another holds one."""
    try:
        stack.enter_context(held(settings, names, holder, ttl_s=ttl_s, wait_s=0))
    except LeaseTimeout:
        return False
    return True


@contextlib.contextmanager
def kept(settings: Settings, names: list[str], holder: str, *, ttl_s: float = RUN_TTL_S) -> Iterator[None]:
    """Renew leases ``holder`` took earlier (another task of the same run) and keep them renewed
    while the block runs; ``LeaseTimeout`` when one was lost to another writer."""
    with state.connect(settings) as conn:
        lost = [n for n in names if not renew(conn, n, holder, ttl_s)]
    if lost:
        raise LeaseTimeout(f"{holder} no longer holds lease {lost[0]} (it expired and another writer"
                           " took it): this work is left to the next run")
    with _Heartbeat(settings, names, holder, ttl_s):
        yield


# -- subject-set epochs ---------------------------------------------------------------------------


def epoch(conn: StateConn, tenant: str) -> int:
    row = conn.execute("SELECT epoch FROM subject_epochs WHERE tenant_id = ?", (tenant,)).fetchone()
    return 0 if row is None else int(row[0])


def current_epoch(settings: Settings, tenant: str) -> int:
    with state.read(settings) as conn:
        return 0 if conn is None else epoch(conn, tenant)


def bump(conn: StateConn, tenant: str) -> int:
    """Move the tenant's epoch on (inside the transaction that changes its subject sets)."""
    conn.execute("INSERT INTO subject_epochs (tenant_id, epoch) VALUES (?, 1) ON CONFLICT (tenant_id)"
                 " DO UPDATE SET epoch = subject_epochs.epoch + 1", (tenant,))
    return epoch(conn, tenant)


def wait_for_publishers(settings: Settings, tenants: Iterable[str], *,
                        wait_s: float = PUBLISH_TTL_S + 5) -> None:
    """Until no ingest of ``tenants`` holds a publish lease (an ingest that checked its epoch
    before the bump finishes publishing first); a dead ingest's lease expires."""
    deadline = time.monotonic() + wait_s
    for tenant in sorted(set(tenants)):
        while True:
            with state.read(settings) as conn:
                busy = [] if conn is None else live(conn, f"publish:{tenant}:")
            if not busy:
                break
            if time.monotonic() > deadline:
                raise LeaseTimeout(f"ingest of tenant {tenant} still publishing ({busy[0]}); try again")
            time.sleep(WAIT_POLL_S)
