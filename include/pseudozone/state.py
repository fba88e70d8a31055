"""The state database: ledger, key vault, key checks, identity links, rectifications, consent,
and (``pseudozone.rights.store``) the request ledger, tenants, holds, restrictions and audit log.

One database on one SQLAlchemy URL (``PSEUDOZONE_STATE_DB_URL``): a SQLite file under the
data root by default (``state/pseudozone.db``, WAL mode), PostgreSQL in production.  Every
writing transaction is serialized: ``BEGIN IMMEDIATE`` on SQLite, one transaction-level
advisory lock on PostgreSQL; so a check and the change it allows (a ledger entry, a key's
destruction and its audit entry) never interleave with another worker's.  Readers take no
lock.  The SQL here is written once for both: ``?`` parameters (turned into the driver's
style by ``StateConn``), ``ON CONFLICT``, and timestamps passed in (``now()``), never a
dialect's function.  Roots from before the single database are moved with
``pseudozone state migrate`` (``pseudozone.state_migrate``, docs/adr/0018-state-database.md).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from pseudozone.config import Settings
from pseudozone.errors import ConfigError, PseudozoneError

STATE_DB_URL_ENV = "PSEUDOZONE_STATE_DB_URL"
# the request ledger's own URL before the single state database: refused, with the way out
LEGACY_REQUESTS_DB_URL_ENV = "PSEUDOZONE_REQUESTS_DB_URL"
LEGACY_REQUESTS_DB = "requests.db"

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
-- writers' leases (pseudozone.lake.leases): a name held by one holder until it is released or
-- its expiry (milliseconds since the epoch) passes; a dead worker's lease expires
CREATE TABLE IF NOT EXISTS leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL
);
-- each tenant's subject-set epoch: a rights run that changes who may appear where bumps it when
-- it is planned, and an ingest planned under an older epoch plans again before it publishes
CREATE TABLE IF NOT EXISTS subject_epochs (
    tenant_id   TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL
);
-- the random id of this data root, naming its KEK seeds in the key directory (one row)
CREATE TABLE IF NOT EXISTS kek_root (root_id TEXT NOT NULL);
-- one row per KEK rotation: recorded (with its new seed) when it starts, finished_at when the
-- old seeds are destroyed; a row without finished_at is a rotation a crash left for the next call
CREATE TABLE IF NOT EXISTS kek_rotations (
    tenant_id   TEXT NOT NULL,
    version     INTEGER NOT NULL,
    rewrapped   INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    PRIMARY KEY (tenant_id, version)
);
"""

# the state tables' names (the rights store's are in its own metadata)
TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))

# the schema's two SQLite-only spellings, as PostgreSQL writes them
_SQLITE_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_PG_NOW = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
# every writer of a PostgreSQL state database holds this transaction-level advisory lock
# (a constant of the project's own: b"pzstate" as an integer)
_PG_WRITE_LOCK = int.from_bytes(b"pzstate", "big")


class StateDbError(ConfigError):
    """The state database's URL is wrong, or state is left where the URL no longer points."""


def now() -> str:
    """This instant in UTC, as the state tables keep it (``2026-12-03T18:04:05.123Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def default_url(settings: Settings) -> str:
    return f"sqlite:///{settings.state_db}"


def db_url(settings: Settings) -> str:
    """The state database's URL: the settings', else ``PSEUDOZONE_STATE_DB_URL``, else the SQLite
    file under the root."""
    url = settings.state_db_url or os.environ.get(STATE_DB_URL_ENV, "").strip()
    if not url:
        if os.environ.get(LEGACY_REQUESTS_DB_URL_ENV, "").strip():
            raise StateDbError(
                f"${LEGACY_REQUESTS_DB_URL_ENV} is no longer read: the request ledger and the rest of the"
                f" state are one database now. Set ${STATE_DB_URL_ENV} to the database that is to hold all"
                " of it, then run `pseudozone state migrate` once to move the ledger and the local state"
                " there")
        return default_url(settings)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StateDbError(f"${STATE_DB_URL_ENV} is not a database URL (dialect+driver://...)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StateDbError(f"${STATE_DB_URL_ENV}: the state database is SQLite or PostgreSQL, not"
                           f" {parsed.get_backend_name()!r}")
    return url


def shown(url: str) -> str:
    """A URL fit for a message: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def sqlite_file(settings: Settings) -> Path | None:
    """The state database's file when it is SQLite, else None."""
    url = make_url(db_url(settings))
    if url.get_backend_name() != "sqlite":
        return None
    return Path(url.database) if url.database and url.database != ":memory:" else None


def exists(settings: Settings) -> bool:
    """Whether there is a state database to read (a SQLite one is not made by asking)."""
    path = sqlite_file(settings)
    return path is None or path.exists()


def _pg_sql(sql: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (a literal ``%`` doubled); quoted text is left alone."""
    out, quoted = [], False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
        if ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def _pg_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # the schema's flags are INTEGER


class _NoRows:
    rowcount = 0

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class StateConn:
    """A state transaction: ``execute`` and ``executemany`` take SQL with ``?`` parameters on
    either database; ``sa`` is the SQLAlchemy connection (the rights store's tables use it)."""

    def __init__(self, conn: Connection, settings: Settings) -> None:
        self.sa = conn
        self.settings = settings
        self.dialect = conn.dialect.name

    @property
    def postgresql(self) -> bool:
        return self.dialect == "postgresql"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgresql:
            return self.sa.exec_driver_sql(_pg_sql(sql), tuple(_pg_value(v) for v in params))
        return self.sa.exec_driver_sql(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        rows = list(rows)
        if not rows:
            return _NoRows()
        if self.postgresql:
            return self.sa.exec_driver_sql(_pg_sql(sql), [tuple(_pg_value(v) for v in r) for r in rows])
        return self.sa.exec_driver_sql(sql, [tuple(r) for r in rows])


def _pg_schema() -> list[str]:
    text = "\n".join(line for line in SCHEMA.splitlines() if not line.lstrip().startswith("--"))
    # SQLite's INTEGER is 64 bits (sizes, nanosecond times), PostgreSQL's 32
    text = text.replace(_SQLITE_NOW, _PG_NOW).replace(" BLOB", " BYTEA").replace(" INTEGER", " BIGINT")
    return [s.strip() for s in text.split(";") if s.strip()]


@cache
def _engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        # one connection per unit of work (as the file may be replaced: a restored backup)
        # an error's text never shows a statement's parameters (pseudonyms, wrapped keys)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _setup(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy's BEGIN below rules
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")
            # what a change removes (an erased subject's key, its pseudonym) is overwritten in the file
            dbapi_conn.execute("PRAGMA secure_delete=ON")
            dbapi_conn.executescript(SCHEMA)

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # writers queue up at BEGIN, so every check and the change it allows serialize
            write = conn.get_execution_options().get("pz_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
        return engine
    engine = create_engine(url, pool_pre_ping=True, hide_parameters=True)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")
        for statement in _pg_schema():
            conn.exec_driver_sql(statement)
    return engine


_CHECKED: set[tuple[Path, str]] = set()


def _unmigrated(settings: Settings, url: str) -> str | None:
    """State this root keeps where ``url`` does not point (from before the single database)."""
    legacy = settings.state / LEGACY_REQUESTS_DB
    if legacy.exists():
        return f"the request ledger {legacy}"
    if url != default_url(settings) and settings.state_db.exists():
        return f"the local state database {settings.state_db}"
    return None


def engine(settings: Settings) -> Engine:
    """The state database's engine (a SQLite file and its directory are made when missing).

    State this root still keeps elsewhere (a request ledger of its own, a local file while the
    URL names another database) is refused: ``pseudozone state migrate`` moves it first.
    """
    url = db_url(settings)
    if (settings.root, url) not in _CHECKED:
        left = _unmigrated(settings, url)
        if left is not None:
            raise StateDbError(f"{left} is not in the state database {shown(url)}: run `pseudozone state"
                               " migrate` once to move it there (docs/adr/0018-state-database.md)")
        _CHECKED.add((settings.root, url))
    if sqlite_file(settings) is not None:
        settings.state.mkdir(parents=True, exist_ok=True)
    return _engine(url)


_OPEN = threading.local()  # this thread's open writing transaction per database URL


def _open(url: object) -> Connection | None:
    found: dict[object, Connection] = getattr(_OPEN, "by_url", {})
    return found.get(url)


@contextmanager
def write(settings: Settings) -> Iterator[Connection]:
    """One writing transaction on the state database: serialized with every other writer,
    committed on success, rolled back on error.

    Opened while the same thread holds one already (the master key's check recorded while an
    audit entry is written), it joins that transaction as a savepoint: a second connection
    would wait for the first one's lock, that is for itself.  Its changes commit with the
    outer transaction, and an error inside it undoes only its own.
    """
    eng = engine(settings)
    outer = _open(eng.url)
    if outer is not None:
        with outer.begin_nested():
            yield outer
        return
    with eng.connect() as conn:
        conn.execution_options(pz_write=True)
        found: dict[object, Connection] = _OPEN.__dict__.setdefault("by_url", {})
        found[eng.url] = conn
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})")
                yield conn
        finally:
            found.pop(eng.url, None)


@contextmanager
def connect(settings: Settings) -> Iterator[StateConn]:
    """A writing state transaction (``write``) for the SQL of the state tables."""
    with write(settings) as conn:
        yield StateConn(conn, settings)


@contextmanager
def read(settings: Settings) -> Iterator[StateConn | None]:
    """A read-only look at the state (no lock, nothing made); None when there is no state yet.
    Inside this thread's writing transaction it reads that one (and sees its changes)."""
    if not exists(settings):
        yield None
        return
    eng = engine(settings)
    outer = _open(eng.url)
    if outer is not None:
        yield StateConn(outer, settings)
        return
    with eng.connect() as conn:
        yield StateConn(conn, settings)
        conn.rollback()


def on(conn: Connection, settings: Settings) -> StateConn:
    """The state tables inside an open transaction of the rights store (one database, one commit)."""
    return StateConn(conn, settings)


# -- pseudonym versions (docs/adr/0015-pseudonym-rotation.md) -----------------------------------


class TenantRotating(PseudozoneError):
    """A writer met a tenant whose pseudonyms are being rotated: its work waits until the end."""


def pseudonym_versions(settings: Settings) -> dict[str, int]:
    """Each rotated tenant's pseudonym version; read only, nothing when the state is new."""
    with read(settings) as conn:
        if conn is None:
            return {}
        rows = conn.execute("SELECT tenant_id, version FROM pseudonym_versions").fetchall()
    return {str(t): int(v) for t, v in rows}


def rotating(conn: StateConn) -> dict[str, tuple[int, int]]:
    """(version, target) of each tenant whose pseudonym rotation has not finished."""
    rows = conn.execute("SELECT tenant_id, version, target FROM pseudonym_versions WHERE target IS NOT NULL")
    return {str(t): (int(v), int(g)) for t, v, g in rows.fetchall()}


def version_in(conn: StateConn, tenant: str, default: int) -> int:
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
    """Checkpoint a SQLite state database's write-ahead log and empty it: no old page image (an
    erased subject's pseudonym before it was sealed) stays in the log file.  PostgreSQL keeps
    no such file of ours (its own WAL and vacuum are the operator's: docs/adr/0018-state-database.md)."""
    if sqlite_file(settings) is None or not exists(settings):
        return
    raw = engine(settings).raw_connection()  # outside a transaction: a checkpoint needs none open
    try:
        raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()
