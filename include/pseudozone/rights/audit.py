"""Append-only, hash-chained audit log.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's own
canonical JSON, so changing, removing or reordering any entry breaks every hash
after it.  Entries name requests, tenants, pseudonyms, files and counts, never a
raw identifier or a PII value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from pseudozone.config import Settings
from pseudozone.rights import store

GENESIS = "0" * 64


def _entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + "\n" + canonical).encode()).hexdigest()


def _body(seq: int, at: str, actor: str, action: str, request_id: str | None, tenant_id: str | None,
          subject_id: str | None, details: str) -> dict[str, Any]:
    return {"seq": seq, "at": at, "actor": actor, "action": action, "request_id": request_id,
            "tenant_id": tenant_id, "subject_id": subject_id, "details": details}


def append(conn: Connection, action: str, *, actor: str = "pseudozone", request_id: str | None = None,
           tenant_id: str | None = None, subject_id: str | None = None,
           details: dict[str, Any] | None = None) -> int:
    """Append one entry inside the caller's transaction; returns its sequence number."""
    last = conn.execute(select(store.audit_log.c.seq, store.audit_log.c.hash)
                        .order_by(store.audit_log.c.seq.desc()).limit(1)).first()
    seq, prev_hash = (1, GENESIS) if last is None else (int(last.seq) + 1, str(last.hash))
    at = store.utcnow().isoformat(timespec="microseconds")
    detail_text = json.dumps(details or {}, sort_keys=True, separators=(",", ":"))
    body = _body(seq, at, actor, action, request_id, tenant_id, subject_id, detail_text)
    conn.execute(store.audit_log.insert().values(
        seq=seq, at=datetime.fromisoformat(at), actor=actor, action=action, request_id=request_id,
        tenant_id=tenant_id, subject_id=subject_id, details=detail_text, prev_hash=prev_hash,
        hash=_entry_hash(prev_hash, body)))
    return seq


def entries(settings: Settings, *, tenant_id: str | None = None, action: str | None = None,
            request_id: str | None = None, subject_id: str | None = None, since: datetime | None = None,
            limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries matching every filter given (``action`` may end in ``*``: a prefix), oldest
    first; with ``limit``, the newest ``limit`` of them."""
    log = store.audit_log
    query = select(log)
    for column, value in ((log.c.tenant_id, tenant_id), (log.c.request_id, request_id),
                          (log.c.subject_id, subject_id)):
        if value is not None:
            query = query.where(column == value)
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
    return [{"seq": r.seq, "at": (store.as_utc(r.at) or r.at).isoformat(), "actor": r.actor,
             "action": r.action, "request_id": r.request_id, "tenant_id": r.tenant_id,
             "subject_id": r.subject_id, "details": _shown(r.action, json.loads(r.details))}
            for r in reversed(rows)]


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


def verify(settings: Settings) -> Verification:
    """Walk the whole chain; report the first entry whose link or hash is wrong."""
    prev = GENESIS
    expected_seq = 1
    with store.transaction(settings) as conn:
        count = conn.execute(select(func.count()).select_from(store.audit_log)).scalar_one()
        rows = conn.execute(select(store.audit_log).order_by(store.audit_log.c.seq))
        for row in rows:
            if row.seq != expected_seq:
                return Verification(False, count, expected_seq, "an entry is missing")
            if row.prev_hash != prev:
                return Verification(False, count, row.seq, "link to the previous entry is broken")
            at = store.as_utc(row.at)
            assert at is not None
            body = _body(row.seq, at.isoformat(timespec="microseconds"), row.actor, row.action,
                         row.request_id, row.tenant_id, row.subject_id, row.details)
            if _entry_hash(prev, body) != row.hash:
                return Verification(False, count, row.seq, "entry content does not match its hash")
            prev = row.hash
            expected_seq += 1
    return Verification(True, count)
