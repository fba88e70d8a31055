"""Analyst access: DuckDB over the event zone only.

One view per dataset (``events``, ``profiles``, ``server_logs``, ...) reads the
Hive-partitioned Parquet as it is, skipping names that start with ``.`` or ``_`` as
pyarrow and Spark do (a writer's temp file or a stray upload is never read).  The
connection is locked to the event zone: DuckDB's external access is limited to that
directory, so a query cannot read the PII or restricted zones, and no extension is
downloaded.
"""

from __future__ import annotations

import duckdb

from pseudozone.config import Settings

# DuckDB's glob of published files: '*.parquet' alone matches '.x.parquet' and '_x.parquet'
PUBLISHED = "[!._]*.parquet"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def datasets(settings: Settings) -> list[str]:
    root = settings.event_zone
    if not root.exists():
        return []
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name.isidentifier() and any(d.rglob(PUBLISHED)))


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(config={"autoinstall_known_extensions": False,
                                  "autoload_known_extensions": False})
    for name in datasets(settings):
        glob = str(settings.event_zone / name / "**" / PUBLISHED)
        conn.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_quote(glob)}, "  # noqa: S608
            "hive_partitioning = true, union_by_name = true)")
    conn.execute(f"SET allowed_directories = [{_quote(str(settings.event_zone) + '/')}]")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")
    return conn


def run(settings: Settings, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:
    conn = connect(settings)
    try:
        rel = conn.sql(sql)
        if rel is None:
            return [], []
        return list(rel.columns), rel.fetchall()
    finally:
        conn.close()
