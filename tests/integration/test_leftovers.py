"""Nothing left behind (issue 12): a killed writer's temp files are never read and are swept
by the next run; ingest workers die with their parent."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pseudozone import ingest, query, zones
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError
from pseudozone.keys import KeyRing
from tests import planted
from tests.conftest import TEST_MASTER_KEY

SUBJECT = KeyRing(TEST_MASTER_KEY).subject_id(planted.TENANT, planted.USER)
HOUR = 3600


def _count(settings: Settings) -> int:
    _cols, rows = query.run(settings, "SELECT count(*) FROM events")
    return int(rows[0][0])  # type: ignore[call-overload]


def _subject_rows(settings: Settings) -> tuple[Path, pa.Table]:
    """An event-zone file holding the planted subject's rows, and those rows."""
    for f in sorted(settings.event_zone.glob("events/**/*.parquet")):
        table = pq.read_table(f)
        mine = table.filter(pc.fill_null(pc.equal(table["subject_id"], SUBJECT), False))
        if mine.num_rows:
            return f, mine
    raise AssertionError("the planted subject has no event rows")


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _cli(settings: Settings, *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pseudozone.cli", "--home", str(settings.root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


def test_a_killed_writers_temp_file_is_not_read_and_the_next_run_removes_it(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    before = _count(lake)
    published, rows = _subject_rows(lake)
    # what a rewrite killed between write and rename leaves: the subject's rows (say, just
    # restricted) under a temp name in an event-zone partition, hours old
    stale = zones.temp_path(published)
    pq.write_table(rows, stale)
    _age(stale, 2 * HOUR)
    legacy = published.with_name(f".{published.name}.tmp-{'0' * 32}")  # the name before issue 12
    shutil.copy(stale, legacy)
    _age(legacy, 2 * HOUR)
    live = zones.temp_path(published)  # a concurrent writer's, still being written
    pq.write_table(rows, live)
    # hidden or underscored Parquet files (a stray upload, a tool's scratch) are no data either
    hidden = published.with_name("." + published.name)
    underscored = published.with_name("_" + published.name)
    for extra in (hidden, underscored):
        pq.write_table(rows, extra)

    assert not stale.name.endswith(".parquet") and stale.name.startswith(".")
    assert _count(lake) == before                                       # DuckDB (pseudozone query)
    assert ds.dataset(lake.event_zone / "events", partitioning="hive").count_rows() == before  # pyarrow
    assert zones.parquet_files(lake.event_zone).count(stale) == 0

    # the next run (a new ingest process with a batch to do) sweeps stale temp files only
    landed = sorted((lake.landing / "events").rglob("*.*"))[0]
    shutil.copy(landed, landed.with_name("redelivered-" + landed.name))
    run = _cli(lake, "ingest")
    _out, err = run.communicate(timeout=300)
    assert run.returncode in (0, 1), err.decode()
    assert not stale.exists() and not legacy.exists()
    assert live.exists()
    assert published.exists() and hidden.exists() and underscored.exists()


def test_sweep_removes_stale_temp_files_and_staged_batches_but_not_live_ones(settings: Settings) -> None:
    part = settings.event_zone / "events" / "tenant_id=acme" / "date=2026-11-01"
    index_dir = settings.subject_index / "events" / "tenant_id=acme"
    published = zones.write_parquet(pa.table({"x": [1]}), part / "events.acme.b1.parquet")
    old_temps = [zones.temp_path(published), zones.temp_path(index_dir / "events.acme.b1.parquet"),
                 zones.temp_path(settings.exports / "acme" / "r1.zip")]
    for temp in old_temps:
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(b"partial")
        _age(temp, 2 * HOUR)
    fresh = zones.temp_path(published)
    fresh.write_bytes(b"being written")
    dead_batch = settings.staging / "events.acme.b0"
    zones.write_parquet(pa.table({"x": [1]}), dead_batch / "events" / "x.parquet")
    for p in (*dead_batch.rglob("*"), dead_batch):
        _age(p, 2 * HOUR)
    live_batch = settings.staging / "events.acme.b2"
    zones.write_parquet(pa.table({"x": [1]}), live_batch / "events" / "x.parquet")
    old_landing = settings.landing / "events" / "tenant=acme" / f".{published.name}.tmp-{'a' * 32}"
    old_landing.parent.mkdir(parents=True)
    old_landing.write_bytes(b"an upload in progress: not ours")
    _age(old_landing, 2 * HOUR)

    removed = settings.sweep_leftovers()

    assert sorted(removed) == sorted([*old_temps, dead_batch])
    assert all(not t.exists() for t in old_temps) and not dead_batch.exists()
    assert fresh.exists() and published.exists() and live_batch.exists() and old_landing.exists()


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process visible in /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path("/proc", str(pid), "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ingest_workers_die_with_a_killed_parent(settings: Settings, master_key_env: None) -> None:
    from pseudozone.sample import generate

    generate(settings, events=300_000, tenants=2, seed=5, batch_rows=50_000)
    run = _cli(settings, "ingest", "--workers", "2")
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        # the resource tracker, the forkserver and both workers (the forkserver's children)
        while time.monotonic() < deadline and run.poll() is None and len(workers) < 4:
            workers = _descendants(run.pid)
            time.sleep(0.2)
        time.sleep(1)  # the workers are inside their first batch
        workers |= _descendants(run.pid)
        assert run.poll() is None, "ingest finished before it could be killed: give it more data"
        assert len(workers) >= 4, workers
        os.kill(run.pid, 9)
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)]
    finally:
        for pid in (run.pid, *workers):  # by pid only, and only what this test started
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        if run.stderr is not None:
            run.stderr.close()


@pytest.mark.parametrize(("where", "error", "words"), [
    # Arrow's own I/O error: no errno, the system's sentence inside its message
    ("transform", OSError("IOError: error writing 'x' to 'zones/events': No space left on device"),
     "no space left on the device"),
    ("publish", OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    ("publish", OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
    ("transform", sqlite3.OperationalError("database or disk is full"),
     "state database: no space left on the device"),
])
def test_a_full_disk_is_named_as_such_and_nothing_is_marked_done(
        settings: Settings, master_key_env: None, monkeypatch: pytest.MonkeyPatch,
        where: str, error: Exception, words: str) -> None:
    planted.plant(settings.landing)

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    with monkeypatch.context() as patched, pytest.raises(PseudozoneError) as caught:
        patched.setattr(ingest, "_plan_batch" if where == "transform" else "_write_plan", fail)
        ingest.ingest_pending(settings)
    message = str(caught.value)
    assert words in message and f"during {where}" in message and "nothing was marked done" in message
    assert "zones/events" not in message  # the rest of the library's text is never echoed
    # not the batch's fault: never counted toward quarantining it as a poison batch
    results = ingest.ingest_pending(settings)
    assert results and {r.status for r in results} == {"done"}
