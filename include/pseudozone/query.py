"""Analyst access: DuckDB over the event zone only.

One view per dataset (``events``, ``profiles``, ``server_logs``, ...) reads the
Hive-partitioned Parquet as it is, skipping names that start with ``.`` or ``_`` as
pyarrow and Spark do (a writer's temp file or a stray upload is never read).  The
connection is locked to the event zone: DuckDB's external access is limited to that
directory, so a query cannot read the PII or restricted zones, and no extension is
downloaded.

Each purpose (``contracts.PURPOSES``) has a schema of the same views scoped to it:
``marketing.events`` holds only the rows of subjects who consented to marketing and did not
object, ``analytics.events`` every row but those of subjects who objected to analytics;
logged-out rows follow their cookie's linked subjects (``pseudozone.lake.consent``,
docs/adr/0013-consent-and-objection.md).  A share with a third party is written from its
purpose's views only (``share``).

Zones on object storage (``PSEUDOZONE_ZONES=s3://…``): DuckDB reads no URL here (its S3
extension is never downloaded, and external access stays off), so each view scans a
pyarrow dataset of the event zone's prefix instead, through the same filesystem as
the rest of pseudozone, with the same partition columns and the same skipped names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from pseudozone import zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.lake import consent
from pseudozone.lake.subjects import COOKIE_COLUMN

# DuckDB's glob of published files: '*.parquet' alone matches '.x.parquet' and '_x.parquet'
PUBLISHED = "[!._]*.parquet"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def datasets(settings: Settings) -> list[str]:
    root = settings.event_zone
    if not root.exists():
        return []
    if zones.is_remote(root):
        return sorted(d.name for d in root.iterdir()
                      if d.name.isidentifier() and zones.parquet_files(d))
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and d.name.isidentifier() and any(d.rglob(PUBLISHED)))


def _remote_dataset(root: Any) -> Any:
    """A pyarrow dataset of one event-zone dataset on object storage: Hive partitions
    (``tenant_id`` text, ``date`` a date, as DuckDB reads them locally), the columns of all
    its files by name (files written before a contract gained a column lack it)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    files = zones.parquet_files(root)
    paths = [f.path for f in files]
    partitioning = ds.partitioning(pa.schema([("tenant_id", pa.string()), ("date", pa.date32())]),
                                   flavor="hive")
    found = ds.dataset(paths, filesystem=root.fs, format="parquet", partitioning=partitioning,
                       partition_base_dir=root.path)
    columns = pa.unify_schemas([f.physical_schema for f in found.get_fragments()])
    keys = sorted(partitioning.schema, key=lambda f: f.name)  # after the columns, by name, as DuckDB has them
    schema = pa.schema([*(f for f in columns if f.name not in partitioning.schema.names), *keys])
    return ds.dataset(paths, schema=schema, filesystem=root.fs, format="parquet", partitioning=partitioning,
                      partition_base_dir=root.path)


def connect(settings: Settings) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(config={"autoinstall_known_extensions": False,
                                  "autoload_known_extensions": False})
    names = datasets(settings)
    remote = zones.is_remote(settings.event_zone)
    for name in names:
        if remote:
            conn.register(f"pz_scan_{name}", _remote_dataset(settings.event_zone / name))
            conn.execute(f"CREATE VIEW {name} AS SELECT * FROM pz_scan_{name}")  # noqa: S608
            continue
        glob = str(settings.event_zone / name / "**" / PUBLISHED)
        conn.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_quote(glob)}, "  # noqa: S608
            "hive_partitioning = true, union_by_name = true)")
    for scope in consent.scopes(settings):
        _purpose_views(conn, scope, names)
    # no file of any kind is DuckDB's to read on object storage (it scans the datasets above)
    allowed = "" if remote else _quote(str(settings.event_zone) + "/")
    conn.execute(f"SET allowed_directories = [{allowed}]")
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")
    return conn


def _purpose_views(conn: duckdb.DuckDBPyConnection, scope: consent.Scope, names: list[str]) -> None:
    """Schema ``scope.purpose``: each dataset's view with only the rows the purpose may use."""
    purpose = scope.purpose
    subjects, cookies = f"pz_{purpose}_subjects", f"pz_{purpose}_cookies"
    conn.register(subjects, scope.subjects)
    conn.register(cookies, scope.cookies)
    conn.execute(f"CREATE SCHEMA {purpose}")
    for name in names:
        columns = {c[0] for c in conn.execute(f"DESCRIBE main.{name}").fetchall()}
        listed = (f"EXISTS (SELECT 1 FROM {subjects} s WHERE s.tenant_id = d.tenant_id"  # noqa: S608
                  f" AND s.{SUBJECT_COLUMN} = d.{SUBJECT_COLUMN})")
        cookie_listed = (f"d.{SUBJECT_COLUMN} IS NULL AND EXISTS (SELECT 1 FROM {cookies} c"  # noqa: S608
                         f" WHERE c.tenant_id = d.tenant_id AND c.{COOKIE_COLUMN} = d.{COOKIE_COLUMN})")
        has_cookie = COOKIE_COLUMN in columns
        if SUBJECT_COLUMN not in columns or "tenant_id" not in columns:
            where = "false" if scope.allows else "true"  # no subject: no consent, no objection
        elif scope.allows:
            where = f"({listed})" + (f" OR ({cookie_listed})" if has_cookie else "")
        else:
            where = f"NOT ({listed})" + (f" AND NOT ({cookie_listed})" if has_cookie else "")
        # names: the purposes' constants and dataset names that are identifiers (``datasets``)
        conn.execute(f"CREATE VIEW {purpose}.{name} AS SELECT d.* FROM main.{name} d WHERE {where}")  # noqa: S608


def share(settings: Settings, purpose: str, dataset: str, out: Path, *, tenant: str | None = None) -> int:
    """Write ``dataset`` as ``purpose`` may use it (one tenant's, when given) to a Parquet file."""
    import pyarrow.parquet as pq

    consent.check_purpose(purpose)
    if dataset not in datasets(settings):
        raise ValueError(f"no published dataset {dataset!r}; expected one of {datasets(settings)}")
    conn = connect(settings)
    try:
        sql = f"SELECT * FROM {purpose}.{dataset}"  # noqa: S608 - both names checked above
        rel = conn.sql(sql + " WHERE tenant_id = ?", params=[tenant]) if tenant else conn.sql(sql)
        table = rel.to_arrow_table()
    finally:
        conn.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return int(table.num_rows)


def run(settings: Settings, sql: str) -> tuple[list[str], list[tuple[object, ...]]]:
    conn = connect(settings)
    try:
        rel = conn.sql(sql)
        if rel is None:
            return [], []
        return list(rel.columns), rel.fetchall()
    finally:
        conn.close()
