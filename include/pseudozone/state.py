"""The state database: ledger, key vault, key checks, identity links, rectifications, consent.

One small SQLite file under the data root, in WAL mode, opened per unit of work.  Parallel mapped
tasks write to it concurrently, so every connection waits on locks instead of
failing (``busy_timeout``), and every multi-row change is one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id     TEXT PRIMARY KEY,
    dataset      TEXT NOT NULL,
    tenant_id    TEXT NOT NULL,
    source       TEXT NOT NULL,
    sha256       TEXT,
    size         INTEGER,
    mtime_ns     INTEGER,
    status       TEXT NOT NULL CHECK (status IN ('processing', 'done', 'quarantined')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    rows_in      INTEGER,
    rows_event   INTEGER,
    rows_pii     INTEGER,
    subjects     INTEGER,
    files        INTEGER,
    reason_code  TEXT,
    started_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at  TEXT
);
CREATE TABLE IF NOT EXISTS subject_keys (
    tenant_id    TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    wrapped_dek  BLOB,
    kek_version  INTEGER NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    destroyed_at TEXT,
    PRIMARY KEY (tenant_id, subject_id)
);
-- a keyed fingerprint of each master key version used on this root (never the key):
-- a missing or different key is refused instead of silently replaced
CREATE TABLE IF NOT EXISTS key_checks (
    version      INTEGER PRIMARY KEY,
    check_value  TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- the root secret every key derives from (HKDF), wrapped (AES-256-GCM) under the current master
-- key, whose key_checks version is master_version; one row. A root from before it adopts its
-- master key's bytes when first opened (origin 'adopted'); `keys init` makes a random one
-- (docs/adr/0002-key-hierarchy.md, "Root secret")
CREATE TABLE IF NOT EXISTS root_secret (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    master_version INTEGER NOT NULL,
    wrapped        BLOB NOT NULL,
    origin         TEXT NOT NULL CHECK (origin IN ('adopted', 'random')),
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    rotated_at     TEXT
);
-- which cookie pseudonym (anonymous_pid) was seen in the same row as which subject, keyed
-- pseudonyms only (never a raw id); first/last seen are the rows' partition dates
-- (docs/adr/0008-identity-links.md)
CREATE TABLE IF NOT EXISTS identity_links (
    tenant_id     TEXT NOT NULL,
    subject_id    TEXT NOT NULL,
    anonymous_pid TEXT NOT NULL,
    first_seen    TEXT NOT NULL,
    last_seen     TEXT NOT NULL,
    PRIMARY KEY (tenant_id, subject_id, anonymous_pid)
);
CREATE INDEX IF NOT EXISTS identity_links_cookie ON identity_links (tenant_id, anonymous_pid);
-- rectified values that later deliveries of the old ones must not undo: the value under the
-- subject's data key, keyed fingerprints of the values it replaced (pseudozone.rectifications)
CREATE TABLE IF NOT EXISTS rectifications (
    tenant_id    TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    field        TEXT NOT NULL,
    value_enc    BLOB NOT NULL,
    superseded   TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    rectified_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, dataset, subject_id, field)
);
-- each subject's latest delivered consent per purpose, from a contract's consent column
-- (the batch that delivered it last wins; pseudozone.lake.consent)
CREATE TABLE IF NOT EXISTS consent (
    tenant_id    TEXT NOT NULL,
    subject_id   TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    granted      INTEGER NOT NULL CHECK (granted IN (0, 1)),
    batch_id     TEXT NOT NULL,
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, subject_id, purpose)
);
-- each rotated tenant's pseudonym version; target is set while a rotation to it has not
-- finished (pseudozone.rotation, docs/adr/0015-pseudonym-rotation.md)
CREATE TABLE IF NOT EXISTS pseudonym_versions (
    tenant_id    TEXT PRIMARY KEY,
    version      INTEGER NOT NULL,
    target       INTEGER,
    started_at   TEXT,
    finished_at  TEXT
);
"""


@contextmanager
def connect(settings: Settings) -> Iterator[sqlite3.Connection]:
    """A connection that commits on success and rolls back on error."""
    settings.state.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.state_db, timeout=60, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA synchronous=NORMAL")
        # what a change removes (an erased subject's key, its pseudonym) is overwritten in the file
        conn.execute("PRAGMA secure_delete=ON")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


# -- pseudonym versions (docs/adr/0015-pseudonym-rotation.md) -----------------------------------


class TenantRotating(PseudozoneError):
    """A writer met a tenant whose pseudonyms are being rotated: its work waits until the end."""


def pseudonym_versions(settings: Settings) -> dict[str, int]:
    """Each rotated tenant's pseudonym version; read only, nothing when the state is new."""
    if not settings.state_db.exists():
        return {}
    conn = sqlite3.connect(f"file:{settings.state_db}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        rows = conn.execute("SELECT tenant_id, version FROM pseudonym_versions").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        conn.close()
    return {str(t): int(v) for t, v in rows}


def rotating(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """(version, target) of each tenant whose pseudonym rotation has not finished."""
    rows = conn.execute("SELECT tenant_id, version, target FROM pseudonym_versions WHERE target IS NOT NULL")
    return {str(t): (int(v), int(g)) for t, v, g in rows.fetchall()}


def version_in(conn: sqlite3.Connection, tenant: str, default: int) -> int:
    """The tenant's pseudonym version, inside a state transaction; raises ``TenantRotating``
    while a rotation of the tenant has not finished."""
    row = conn.execute("SELECT version, target FROM pseudonym_versions WHERE tenant_id = ?",
                       (tenant,)).fetchone()
    if row is None:
        return default
    if row[1] is not None:
        raise TenantRotating(f"tenant {tenant}: its pseudonyms are being rotated to version {row[1]};"
                             " its batches and requests wait until `pseudozone keys rotate-pseudonyms`"
                             " has finished (a killed rotation is resumed by running it again)")
    return int(row[0])


def truncate_wal(settings: Settings) -> None:
    """Checkpoint the state database's write-ahead log and empty it: no old page image (an
    erased subject's pseudonym before it was sealed) stays in the log file."""
    if settings.state_db.exists():
        conn = sqlite3.connect(settings.state_db, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
