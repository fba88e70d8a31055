"""Batch ledger: makes ingestion exactly-once per batch.

A batch is ``processing`` from its first attempt until its files are published
(then ``done``) or it is rejected (then ``quarantined``).  A ``processing``
batch is simply redone: every write is deterministic and atomic.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def status(conn: sqlite3.Connection, batch_id: str) -> str | None:
    row = conn.execute("SELECT status FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
    return None if row is None else str(row[0])


def finished_ids(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT batch_id FROM batches WHERE status IN ('done', 'quarantined')")
    return {r[0] for r in rows}


def begin(conn: sqlite3.Connection, *, batch_id: str, dataset: str, tenant_id: str,
          source: str, sha256: str | None) -> None:
    conn.execute(
        "INSERT INTO batches (batch_id, dataset, tenant_id, source, sha256, status, attempts)"
        " VALUES (?, ?, ?, ?, ?, 'processing', 1)"
        " ON CONFLICT(batch_id) DO UPDATE SET attempts = attempts + 1, sha256 = excluded.sha256,"
        " status = 'processing'",
        (batch_id, dataset, tenant_id, source, sha256))


def finish(conn: sqlite3.Connection, batch_id: str, *, status: str, counts: dict[str, int],
           reason_code: str | None = None) -> None:
    conn.execute(
        "UPDATE batches SET status = ?, rows_in = ?, rows_event = ?, rows_pii = ?, subjects = ?,"
        " files = ?, reason_code = ?, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
        " WHERE batch_id = ?",
        (status, counts.get("rows_in"), counts.get("rows_event"), counts.get("rows_pii"),
         counts.get("subjects"), counts.get("files"), reason_code, batch_id))


def summary(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT dataset, status, COUNT(*), COALESCE(SUM(rows_in), 0), COALESCE(SUM(rows_event), 0),"
        " COALESCE(SUM(rows_pii), 0) FROM batches GROUP BY dataset, status ORDER BY dataset, status")
    keys = ("dataset", "status", "batches", "rows_in", "rows_event", "rows_pii")
    return [dict(zip(keys, r, strict=True)) for r in rows]
