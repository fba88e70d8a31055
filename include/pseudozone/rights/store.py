"""The rights-request store: request ledger, tenants, legal holds, restrictions, audit log.

SQLAlchemy Core, in the state database (``pseudozone.state``: one URL, a SQLite file under
the data root by default, PostgreSQL in production).
Raw identifiers and rectified values are kept only encrypted (``payload_enc``)
and only until the request completes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
)
from sqlalchemy.engine import Connection

from pseudozone import state
from pseudozone.config import Settings

metadata = MetaData()

tenants = Table(
    "tenants", metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

requests = Table(
    "rights_requests", metadata,
    Column("request_id", String(36), primary_key=True),
    Column("tenant_id", String(64), nullable=False, index=True),
    Column("subject_id", String(80), index=True),
    Column("type", String(16), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("source", String(16), nullable=False),
    Column("payload_enc", LargeBinary),          # AES-GCM, until the request completes
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("accepted_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("run_id", String(250)),
    Column("reason", Text),                      # why rejected or failed (no PII)
    Column("outcome", Text),                     # JSON: what was done and retained (no PII)
    # an export's one-time archive key, AES-GCM-wrapped under the tenant's export key, while
    # the archive is kept; and when the REST door handed it to the tenant (once)
    Column("export_key_enc", LargeBinary),
    Column("export_key_handed_at", DateTime(timezone=True)),
)

legal_holds = Table(
    "legal_holds", metadata,
    Column("hold_id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False),
    Column("dataset", String(64)),               # null: every dataset
    Column("subject_id", String(80)),            # null: every subject
    Column("reason", Text, nullable=False),     # AES-GCM of the free text ("aesgcm:<base64>")
    Column("reason_code", String(32)),           # what tenants see (HOLD_REASON_CODES)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True)),
)

# columns added after a table was first created: (table, column); added in place when missing,
# on SQLite and PostgreSQL alike, with the type the table above gives them
_ADDED_COLUMNS = (("legal_holds", "reason_code"), ("audit_log", "scheme"),
                  ("rights_requests", "export_key_enc"), ("rights_requests", "export_key_handed_at"))

restrictions = Table(
    "restrictions", metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("subject_id", String(80), primary_key=True),
    Column("request_id", String(36), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

# cookies whose logged-out rows follow a restriction: frozen when the restriction is planned
# (every subject the cookie was seen with restricted or erased), released when an
# unrestriction completes (docs/adr/0008-identity-links.md)
restricted_cookies = Table(
    "restricted_cookies", metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("anonymous_pid", String(80), primary_key=True),
    Column("request_id", String(36), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

# objections to a purpose (GDPR art. 21), from an 'object' request until an 'unobject' one;
# the purpose-scoped views leave the subject out (docs/adr/0013-consent-and-objection.md)
objections = Table(
    "objections", metadata,
    Column("tenant_id", String(64), primary_key=True),
    Column("subject_id", String(80), primary_key=True),
    Column("purpose", String(32), primary_key=True),
    Column("request_id", String(36), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("request_id", String(36)),
    Column("tenant_id", String(64)),
    Column("subject_id", String(80)),
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("scheme", String(16)),                # how ``hash`` was made; null: plain SHA-256 (legacy)
)

# the key of ``Connection.info`` under which ``transaction`` names its data root (``audit.append``
# keys its entries with that root's audit key)
SETTINGS_INFO = "pseudozone.settings"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@cache
def _schema(engine: Engine) -> Engine:
    """The store's tables on the state database's engine, made once per engine."""
    metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """A database made by an earlier version gets the columns added since (nothing else changes)."""
    for table, column in _ADDED_COLUMNS:
        if column not in {c["name"] for c in inspect(engine).get_columns(table)}:
            ddl = metadata.tables[table].c[column].type.compile(dialect=engine.dialect)
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")


def engine_for(settings: Settings) -> Engine:
    """The state database's engine (``pseudozone.state``), with the store's tables."""
    return _schema(state.engine(settings))


@contextmanager
def transaction(settings: Settings) -> Iterator[Connection]:
    """One writing transaction of the state database (serialized with every other writer, so
    the audit chain stays linear); ``state.on(conn, settings)`` joins the state tables to it."""
    engine_for(settings)
    with state.write(settings) as conn:
        outer = conn.info.get(SETTINGS_INFO)  # set when this joins a transaction already open
        conn.info[SETTINGS_INFO] = settings
        try:
            yield conn
        finally:
            if outer is None:
                conn.info.pop(SETTINGS_INFO, None)  # the pooled connection outlives this transaction
            else:
                conn.info[SETTINGS_INFO] = outer
