"""Batch ledger: makes ingestion exactly-once per batch.

A batch is ``processing`` from its first attempt until its files are published
(then ``done``) or it is rejected (then ``quarantined``).  A ``processing``
batch is simply redone: every write is deterministic and atomic.  A
quarantined batch id is tried again when a file of that name lands again (a
corrected delivery).  The landing file's size and mtime are kept so that
discovery notices, with one ``stat`` per file, a done batch whose file changed.

``attempts`` counts the tries of the current delivery; it starts again at 1 when other
bytes land under the batch id (or after a quarantine).  While a batch is ``processing``,
``reason_code`` holds how its last try failed (``failed:<step>:<error type>``, never a
message): a batch that failed the same way on ``POISON_AFTER_ATTEMPTS`` tries in a row is
a poison batch, quarantined so that it stops blocking the batches after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pseudozone.state import now

if TYPE_CHECKING:
    from pseudozone.state import StateConn

Fingerprint = tuple[int, int]  # (size, mtime_ns) of the landing file
POISON_AFTER_ATTEMPTS = 3  # the first try and the DAG's two retries


@dataclass(frozen=True)
class Entry:
    status: str
    sha256: str | None
    fingerprint: Fingerprint | None


def get(conn: StateConn, batch_id: str) -> Entry | None:
    row = conn.execute("SELECT status, sha256, size, mtime_ns FROM batches WHERE batch_id = ?",
                       (batch_id,)).fetchone()
    if row is None:
        return None
    fingerprint = None if row[2] is None else (int(row[2]), int(row[3]))
    return Entry(status=str(row[0]), sha256=row[1], fingerprint=fingerprint)


def done_fingerprints(conn: StateConn) -> dict[str, Fingerprint | None]:
    rows = conn.execute("SELECT batch_id, size, mtime_ns FROM batches WHERE status = 'done'")
    return {r[0]: (None if r[1] is None else (int(r[1]), int(r[2]))) for r in rows}


def begin(conn: StateConn, *, batch_id: str, dataset: str, tenant_id: str,
          source: str, sha256: str, fingerprint: Fingerprint) -> None:
    conn.execute(
        "INSERT INTO batches (batch_id, dataset, tenant_id, source, sha256, size, mtime_ns, status,"
        " attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 'processing', 1)"
        " ON CONFLICT(batch_id) DO UPDATE SET"
        " attempts = CASE WHEN batches.status = 'quarantined'"
        " OR batches.sha256 IS DISTINCT FROM excluded.sha256 THEN 1 ELSE batches.attempts + 1 END,"
        " reason_code = CASE WHEN batches.status = 'quarantined'"
        " OR batches.sha256 IS DISTINCT FROM excluded.sha256 THEN NULL ELSE batches.reason_code END,"
        " sha256 = excluded.sha256, size = excluded.size, mtime_ns = excluded.mtime_ns,"
        " status = 'processing'",
        (batch_id, dataset, tenant_id, source, sha256, *fingerprint))


def refresh_fingerprint(conn: StateConn, batch_id: str, fingerprint: Fingerprint) -> None:
    """The same content was written again (new mtime): remember the new stat."""
    conn.execute("UPDATE batches SET size = ?, mtime_ns = ? WHERE batch_id = ?", (*fingerprint, batch_id))


def refresh_content(conn: StateConn, batch_id: str, sha256: str, fingerprint: Fingerprint) -> None:
    """The landing file was rewritten under the batch (an erasure took rows out while it was
    being ingested): the ledger records the file that is ingested."""
    conn.execute("UPDATE batches SET sha256 = ?, size = ?, mtime_ns = ? WHERE batch_id = ?",
                 (sha256, *fingerprint, batch_id))


def failed(conn: StateConn, batch_id: str, failure: str) -> int:
    """Record that this try of a ``processing`` batch failed with ``failure``.

    ``failure`` names the step and the error type, never a message.  Returns how many tries
    in a row failed this way: the count starts again at 1 when the failure differs from the
    last one recorded.
    """
    row = conn.execute("SELECT attempts, reason_code FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
    if row is None:
        return 1
    attempts = int(row[0]) if row[1] == failure else 1
    conn.execute("UPDATE batches SET attempts = ?, reason_code = ? WHERE batch_id = ?",
                 (attempts, failure, batch_id))
    return attempts


def finish(conn: StateConn, batch_id: str, *, status: str, counts: dict[str, int],
           reason_code: str | None = None) -> None:
    conn.execute(
        "UPDATE batches SET status = ?, rows_in = ?, rows_event = ?, rows_pii = ?, subjects = ?,"
        " files = ?, reason_code = ?, finished_at = ? WHERE batch_id = ?",
        (status, counts.get("rows_in"), counts.get("rows_event"), counts.get("rows_pii"),
         counts.get("subjects"), counts.get("files"), reason_code, now(), batch_id))


def summary(conn: StateConn) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT dataset, status, COUNT(*), COALESCE(SUM(rows_in), 0), COALESCE(SUM(rows_event), 0),"
        " COALESCE(SUM(rows_pii), 0) FROM batches GROUP BY dataset, status ORDER BY dataset, status")
    keys = ("dataset", "status", "batches", "rows_in", "rows_event", "rows_pii")
    return [dict(zip(keys, r, strict=True)) for r in rows]
