"""Append-only, keyed hash chain of audit entries, its head anchored outside the table.

Each entry's hash is HMAC-SHA256, under the data root's audit key (HKDF of the master
key, ``KeyRing.audit_key``; never stored), over the previous entry's hash and the entry's
own canonical JSON: changing, removing or reordering any entry breaks every hash after
it, and nobody without the master key can compute a chain that verifies again. Entries
written before the chain was keyed carry plain SHA-256 (``scheme`` null) and still
verify, but only as the chain's first entries: an unkeyed entry after a keyed one, or
after the checkpoint, is refused.

The head (entry count and last hash) is anchored outside the table: in the nightly
compliance report and in a checkpoint file (``state/audit_checkpoint.json``, 0600,
MAC'd under the audit key) that every successful verification by the nightly run or
``pseudozone audit verify`` moves forward. A chain shorter than its checkpoint, or whose
entry at the checkpoint carries another hash, was truncated (or rewritten).

Entries name requests, tenants, pseudonyms, files and counts, never a raw identifier or a
PII value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError
from pseudozone.keys import SEALED_PREFIX, KeyRing
from pseudozone.rights import store

GENESIS = "0" * 64
KEYED = "hmac-sha256"  # ``scheme`` of a keyed entry; null is the legacy plain SHA-256
CHECKPOINT_NAME = "audit_checkpoint.json"
_CHECKPOINT_FORMAT = 1
_CHECKPOINT_FIELDS = ("format", "entries", "hash", "written_at")
_HEX64 = frozenset("0123456789abcdef")


def _entry_hash(prev_hash: str, body: dict[str, Any], key: bytes | None) -> str:
    """HMAC-SHA256 under ``key``; plain SHA-256 (the legacy scheme) when ``key`` is None."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    message = (prev_hash + "\n" + canonical).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _ring(conn: Connection, keyring: KeyRing | None) -> KeyRing:
    if keyring is not None:
        return keyring
    settings = conn.info.get(store.SETTINGS_INFO)
    if not isinstance(settings, Settings):
        raise PseudozoneError("an audit entry is appended only inside store.transaction(settings), which"
                              " names the data root whose audit key keys the chain")
    return KeyRing.load(settings)


def _body(seq: int, at: str, actor: str, action: str, request_id: str | None, tenant_id: str | None,
          subject_id: str | None, details: str) -> dict[str, Any]:
    return {"seq": seq, "at": at, "actor": actor, "action": action, "request_id": request_id,
            "tenant_id": tenant_id, "subject_id": subject_id, "details": details}


def append(conn: Connection, action: str, *, actor: str = "pseudozone", request_id: str | None = None,
           tenant_id: str | None = None, subject_id: str | None = None,
           details: dict[str, Any] | None = None, keyring: KeyRing | None = None) -> int:
    """Append one keyed entry inside the caller's ``store.transaction``; returns its sequence number.

    The audit key comes from ``keyring``, else from the transaction's data root (``KeyRing.load``:
    a master key that is not the root's is refused before anything is written).
    """
    ring = _ring(conn, keyring)
    key = ring.audit_key()
    # the subject is kept sealed (KeyRing.seal): the log outlives an erasure and must not hold a
    # pseudonym that analysts' data joins to (docs/adr/0015-pseudonym-rotation.md)
    if subject_id is not None and tenant_id is not None and _is_pseudonym(subject_id):
        subject_id = ring.seal(tenant_id, subject_id)
    last = conn.execute(select(store.audit_log.c.seq, store.audit_log.c.hash)
                        .order_by(store.audit_log.c.seq.desc()).limit(1)).first()
    seq, prev_hash = (1, GENESIS) if last is None else (int(last.seq) + 1, str(last.hash))
    at = store.utcnow().isoformat(timespec="microseconds")
    detail_text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"))
    body = _body(seq, at, actor, action, request_id, tenant_id, subject_id, detail_text)
    conn.execute(store.audit_log.insert().values(
        seq=seq, at=datetime.fromisoformat(at), actor=actor, action=action, request_id=request_id,
        tenant_id=tenant_id, subject_id=subject_id, details=detail_text, prev_hash=prev_hash,
        hash=_entry_hash(prev_hash, body, key), scheme=KEYED))
    return seq


def entries(settings: Settings, *, tenant_id: str | None = None, action: str | None = None,
            request_id: str | None = None, subject_id: str | None = None, since: datetime | None = None,
            limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries matching every filter given (``action`` may end in ``*``: a prefix), oldest
    first; with ``limit``, the newest ``limit`` of them."""
    log = store.audit_log
    query = select(log)
    for column, value in ((log.c.tenant_id, tenant_id), (log.c.request_id, request_id)):
        if value is not None:
            query = query.where(column == value)
    ring: KeyRing | None = None
    if subject_id is not None:
        # entries keep the subject sealed under its tenant's key (older entries: as it was)
        ring = KeyRing.load(settings)
        with store.engine_for(settings).connect() as conn:
            tenants = [tenant_id] if tenant_id is not None else [
                t for (t,) in conn.execute(select(log.c.tenant_id).distinct()).all() if t is not None]
        forms = {subject_id} | {ring.seal(t, subject_id) for t in tenants
                                if not subject_id.startswith(SEALED_PREFIX) and _is_pseudonym(subject_id)}
        query = query.where(log.c.subject_id.in_(sorted(forms)))
    if action is not None:
        query = query.where(log.c.action.like(action[:-1].replace("%", r"\%").replace("_", r"\_") + "%",
                                              escape="\\")
                            if action.endswith("*") else log.c.action == action)
    if since is not None:
        query = query.where(log.c.at >= since)
    query = query.order_by(log.c.seq.desc())
    if limit is not None:
        query = query.limit(limit)
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(query).all()
    if ring is None and any(r.subject_id and r.subject_id.startswith(SEALED_PREFIX) for r in rows):
        ring = KeyRing.load(settings)

    def shown_subject(tenant: str | None, subject: str | None) -> str | None:
        if subject is None or tenant is None or ring is None:
            return subject
        return ring.unseal(tenant, subject)

    return [{"seq": r.seq, "at": (store.as_utc(r.at) or r.at).isoformat(), "actor": r.actor,
             "action": r.action, "request_id": r.request_id, "tenant_id": r.tenant_id,
             "subject_id": shown_subject(r.tenant_id, r.subject_id),
             "details": _shown(r.action, json.loads(r.details))}
            for r in reversed(rows)]


def _is_pseudonym(value: str) -> bool:
    head, sep, digest = value.partition(":")
    return bool(sep) and head[:1] == "v" and head[1:].isdigit() and len(digest) == 64


def _shown(action: str, details: dict[str, Any]) -> dict[str, Any]:
    """An entry's details as shown: a hold's free-text reason, which entries written before hold
    reasons were encrypted still hold (the chain forbids rewriting them), is withheld."""
    if action.startswith("hold.") and "reason" in details:
        return {**{k: v for k, v in details.items() if k != "reason"}, "reason": "[withheld]"}
    return details


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    head_hash: str | None = None           # the last entry's stored hash (None: no entry)
    checkpoint_entries: int | None = None  # the entry count of the checkpoint checked against
    checkpoint_updated: bool = False       # this verification moved the checkpoint to its head


@dataclass(frozen=True)
class Checkpoint:
    entries: int
    hash: str


def checkpoint_path(settings: Settings) -> Path:
    return settings.state / CHECKPOINT_NAME


def _mac(key: bytes, fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, b"pseudozone/audit-checkpoint\n" + canonical.encode(), hashlib.sha256).hexdigest()


class _BadCheckpoint(Exception):
    """The checkpoint file is not one this root's audit key wrote."""


def _read_checkpoint(settings: Settings, key: bytes) -> Checkpoint | None:
    """The checkpoint file, None when there is none; raises ``_BadCheckpoint`` when it is not one
    this root's audit key wrote (damaged, edited, or from another root)."""
    path = checkpoint_path(settings)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _BadCheckpoint from None
    if not isinstance(data, dict) or set(data) != {*_CHECKPOINT_FIELDS, "mac"}:
        raise _BadCheckpoint
    fields = {k: data[k] for k in _CHECKPOINT_FIELDS}
    mac = data["mac"]
    if not isinstance(mac, str) or not hmac.compare_digest(mac.encode(), _mac(key, fields).encode()):
        raise _BadCheckpoint
    entries, head = fields["entries"], fields["hash"]
    if (fields["format"] != _CHECKPOINT_FORMAT or not isinstance(entries, int) or isinstance(entries, bool)
            or entries < 1 or not isinstance(head, str) or len(head) != 64 or not set(head) <= _HEX64):
        raise _BadCheckpoint
    return Checkpoint(entries, head)


def _write_checkpoint(settings: Settings, key: bytes, entries: int, head: str) -> None:
    """Atomically (temp file, fsync, rename, directory fsync), owner-only (0600)."""
    # zones loads Arrow: not at import, the REST plugin imports this in every Airflow process
    from pseudozone import zones

    fields = {"format": _CHECKPOINT_FORMAT, "entries": entries, "hash": head,
              "written_at": store.utcnow().isoformat(timespec="seconds")}
    data = (json.dumps({**fields, "mac": _mac(key, fields)}, indent=2, sort_keys=True) + "\n").encode()
    path = checkpoint_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zones.temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, zones.PRIVATE_FILE_MODE)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), zones.PRIVATE_FILE_MODE)  # whatever the umask
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    zones.fsync_dirs({path.parent})


def verify(settings: Settings, *, keyring: KeyRing | None = None,
           update_checkpoint: bool = False) -> Verification:
    """Walk the whole chain and check it against its checkpoint; report the first entry whose
    link, hash or scheme is wrong, or the truncation.

    With ``update_checkpoint``, a chain that verifies becomes the new checkpoint (the nightly
    run and ``pseudozone audit verify`` do this). The master key is loaded (``KeyRing.load``)
    only when a keyed entry, a checkpoint or its update needs the audit key.
    """
    ring = keyring
    key: bytes | None = None

    def audit_key() -> bytes:
        nonlocal ring, key
        if key is None:
            ring = ring or KeyRing.load(settings)
            key = ring.audit_key()
        return key

    prev = GENESIS
    expected_seq = 1
    keyed_seen = False
    checkpoint: Checkpoint | None = None
    with store.transaction(settings) as conn:
        count = conn.execute(select(func.count()).select_from(store.audit_log)).scalar_one()
        if checkpoint_path(settings).exists():
            try:
                checkpoint = _read_checkpoint(settings, audit_key())
            except _BadCheckpoint:
                return Verification(False, count, None, f"the checkpoint file state/{CHECKPOINT_NAME} is"
                                    " damaged or was not written with this data root's audit key")
        ck = None if checkpoint is None else checkpoint.entries

        def broken(seq: int | None, problem: str) -> Verification:
            return Verification(False, count, seq, problem, None, ck)

        rows = conn.execute(select(store.audit_log).order_by(store.audit_log.c.seq))
        for row in rows:
            if row.seq != expected_seq:
                return broken(expected_seq, "an entry is missing")
            if row.prev_hash != prev:
                return broken(row.seq, "link to the previous entry is broken")
            if row.scheme == KEYED:
                entry_key: bytes | None = audit_key()
                keyed_seen = True
            elif row.scheme is not None:
                return broken(row.seq, "the entry names an unknown hash scheme")
            elif keyed_seen:
                return broken(row.seq, "the entry is not keyed but follows a keyed entry: the chain was"
                                       " recomputed without the audit key")
            elif ck is not None and row.seq > ck:
                return broken(row.seq, "the entry is not keyed but comes after the checkpoint: the chain"
                                       " was recomputed without the audit key")
            else:
                entry_key = None
            at = store.as_utc(row.at)
            assert at is not None
            body = _body(row.seq, at.isoformat(timespec="microseconds"), row.actor, row.action,
                         row.request_id, row.tenant_id, row.subject_id, row.details)
            if _entry_hash(prev, body, entry_key) != row.hash:
                return broken(row.seq, "entry content does not match its hash")
            if checkpoint is not None and row.seq == checkpoint.entries and row.hash != checkpoint.hash:
                return broken(row.seq, "the entry at the checkpoint does not carry the checkpoint's hash:"
                                       " the chain was truncated and appended to, or rewritten")
            prev = row.hash
            expected_seq += 1
        last = expected_seq - 1
        if checkpoint is not None and last < checkpoint.entries:
            return broken(last + 1, f"the chain was truncated: it ends at entry {last}, its checkpoint"
                                    f" recorded {checkpoint.entries} entries")
        head = None if last == 0 else prev
        updated = False
        if update_checkpoint and head is not None and (checkpoint is None or checkpoint.entries != last
                                                       or checkpoint.hash != head):
            # inside the transaction: no append can land between the walk and the file
            _write_checkpoint(settings, audit_key(), last, head)
            updated = True
    return Verification(True, count, None, None, head, ck, updated)
