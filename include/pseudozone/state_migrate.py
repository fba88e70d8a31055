"""``pseudozone state migrate``: move a data root's state into its one state database.

Before the single state database (docs/adr/0018-state-database.md) a root kept two: the
key vault, batch ledger and the rest in ``state/pseudozone.db``, and the request ledger,
holds, restrictions and audit log in ``state/requests.db`` or on the database named by
``PSEUDOZONE_REQUESTS_DB_URL``.  This copies every table of those sources into the state
database (``PSEUDOZONE_STATE_DB_URL``, else ``state/pseudozone.db``) in one transaction,
checks the row counts before it commits, then deletes the local SQLite files it copied
(they hold wrapped keys and pseudonyms: a copy left behind would escape later erasures).
A database named by URL is never dropped: the result says to drop it.

It refuses, and copies nothing, when the target already holds rows of a table it would
fill.  Run again after a success, it finds nothing to move.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

log = logging.getLogger(__name__)

_CHUNK = 5000


class MigrationError(PseudozoneError):
    """The state cannot be moved as asked; nothing was changed."""


@dataclass(frozen=True)
class Source:
    label: str          # what a message may show: a path, or a URL with its password hidden
    url: str
    local: Path | None  # a SQLite file deleted once copied


def _target_url(settings: Settings) -> str:
    url = settings.state_db_url or os.environ.get(state.STATE_DB_URL_ENV, "").strip()
    return url or state.default_url(settings)


def _same(url: str, other: str) -> bool:
    return make_url(url) == make_url(other)


def sources(settings: Settings, target: str) -> list[Source]:
    """What holds state this root's state database does not: the legacy request ledger (a file
    under ``state/`` or ``PSEUDOZONE_REQUESTS_DB_URL``), and the local state file when the state
    database is elsewhere."""
    found: list[Source] = []
    if not _same(target, state.default_url(settings)) and settings.state_db.exists():
        found.append(Source(str(settings.state_db), state.default_url(settings), settings.state_db))
    legacy = settings.state / state.LEGACY_REQUESTS_DB
    if legacy.exists():
        found.append(Source(str(legacy), f"sqlite:///{legacy}", legacy))
    legacy_url = os.environ.get(state.LEGACY_REQUESTS_DB_URL_ENV, "").strip()
    if legacy_url and not _same(legacy_url, target):
        found.append(Source(state.shown(legacy_url), legacy_url, None))
    return found


def _source_engine(source: Source) -> Engine:
    if source.local is not None:  # read only: the source is never changed
        return create_engine(f"sqlite:///file:{source.local}?mode=ro&uri=true", poolclass=NullPool)
    return create_engine(source.url, poolclass=NullPool)


def _count(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _as_utc(value: Any) -> Any:
    # SQLite keeps the store's times naive (they are UTC); PostgreSQL's timestamptz needs the zone
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _copy(src: Connection, dst: Connection, name: str, src_meta: MetaData, dst_meta: MetaData) -> int:
    source, target = src_meta.tables[name], dst_meta.tables[name]
    columns = [c.name for c in target.columns if c.name in source.c]
    copied = 0
    rows = src.execution_options(stream_results=True).execute(select(*(source.c[c] for c in columns)))
    while chunk := rows.fetchmany(_CHUNK):
        dst.execute(target.insert(),
                    [{c: _as_utc(v) for c, v in zip(columns, r, strict=True)} for r in chunk])
        copied += len(chunk)
    keys = list(target.primary_key.columns)
    if dst.dialect.name == "postgresql" and len(keys) == 1 and _is_int(keys[0]):
        # a serial key's sequence goes on after the copied ids (no sequence: nothing to do)
        column = keys[0].name
        dst.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), (SELECT max({column})"  # noqa: S608
            f" FROM {name})) WHERE pg_get_serial_sequence('{name}', '{column}') IS NOT NULL")
    return copied


def _is_int(column: Any) -> bool:
    try:
        return column.type.python_type is int
    except NotImplementedError:
        return False


def migrate(settings: Settings) -> dict[str, Any]:
    """Copy every source's tables into the state database, check, commit, delete local sources.

    Returns what was moved: per source, its label and the rows of each table (no value)."""
    from pseudozone.rights import audit, store

    target = _target_url(settings)
    found = sources(settings, target)
    if not found:
        return {"target": state.shown(target), "moved": [], "deleted": [], "drop_yourself": []}
    if make_url(target).get_backend_name() == "sqlite":
        Path(make_url(target).database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = store._schema(state._engine(target))  # not state.engine: its guard refuses this very root
    moved: list[dict[str, Any]] = []
    with engine.connect() as dst:
        dst.execution_options(pz_write=True)
        with dst.begin():
            if dst.dialect.name == "postgresql":
                dst.exec_driver_sql(f"SELECT pg_advisory_xact_lock({state._PG_WRITE_LOCK})")
            dst_meta = MetaData()
            dst_meta.reflect(bind=dst)
            filled: set[str] = set()
            for source in found:
                src_engine = _source_engine(source)
                try:
                    with src_engine.connect() as src:
                        src_meta = MetaData()
                        src_meta.reflect(bind=src)
                        counts: dict[str, int] = {}
                        for name in sorted(set(src_meta.tables) & set(dst_meta.tables)):
                            wanted = _count(src, src_meta.tables[name])
                            if not wanted:
                                continue
                            if name in filled or _count(dst, dst_meta.tables[name]):
                                raise MigrationError(
                                    f"the state database {state.shown(target)} already holds rows of table"
                                    f" {name!r} that {source.label} would add to; nothing was moved")
                            copied = _copy(src, dst, name, src_meta, dst_meta)
                            if copied != wanted or _count(dst, dst_meta.tables[name]) != wanted:
                                raise MigrationError(f"table {name!r} of {source.label}: {wanted} row(s)"
                                                     f" read, {copied} written; nothing was moved")
                            filled.add(name)
                            counts[name] = copied
                        left = sorted(n for n in set(src_meta.tables) - set(dst_meta.tables)
                                      if not n.startswith("sqlite_") and n != "alembic_version")
                        if left:
                            raise MigrationError(f"{source.label} has table(s) the state database does not"
                                                 f" know: {', '.join(left)}; nothing was moved")
                finally:
                    src_engine.dispose()
                moved.append({"source": source.label, "rows": counts})
    deleted, drop = [], []
    for source in found:
        if source.local is None:
            drop.append(source.label)
            continue
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{source.local}{suffix}").unlink(missing_ok=True)
        deleted.append(source.label)
    log.info("state moved into %s from %d source(s)", state.shown(target), len(found))
    result: dict[str, Any] = {"target": state.shown(target), "moved": moved, "deleted": deleted,
                              "drop_yourself": drop}
    try:
        with store.transaction(settings) as conn:
            audit.append(conn, "state.migrated", details={"moved": moved, "deleted": len(deleted),
                                                          "drop_yourself": len(drop)})
        result["audited"] = True
    except PseudozoneError as exc:  # the move stands; the entry waits for a master key
        log.warning("state moved, but not audited: %s", exc)
        result["audited"] = False
    return result
