"""The subject index: which zone files hold which subject.

One Parquet file per landing batch (``layout.index_file``) with one row per
(subject, file): ``subject_id``, ``zone`` and ``path`` (relative to the zones root).
Ingest writes it before publishing a batch (``docs/adr/0001-storage-protocol.md``);
a rewrite first writes old ∪ new entries, then the files, then the final entries
(``docs/adr/0004-rights-processing.md``).  Rights processing, export, retention and
the nightly erasure check read and repair it here, and nowhere else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from pseudozone import contracts, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.lake import layout
from pseudozone.lake.subjects import COOKIE_COLUMN

SCHEMA = pa.schema([("subject_id", pa.string()), ("zone", pa.string()), ("path", pa.string())])
LOOKUP_COLUMNS = ("subject_id", "zone", "path", "dataset", "batch_id")

# pseudonyms stay dictionary-encoded: pyarrow's default 1 MiB dictionary page falls
# back to plain 67-byte strings at about 15k subjects per batch, and the index is
# read at every rights run and rewritten by every erasure
_OPTIONS: dict[str, Any] = {"dictionary_pagesize_limit": 64 << 20}


def write(settings: Settings, dataset: str, tenant: str, batch: str, index: pa.Table) -> None:
    """Write one batch's subject index (subject_id, zone, path), replacing the old one."""
    zones.write_parquet(index, layout.index_file(settings, dataset, tenant, batch), **_OPTIONS)


def read(settings: Settings, dataset: str, tenant: str, batch: str) -> pa.Table:
    """One batch's subject index (empty when the batch has none)."""
    path = layout.index_file(settings, dataset, tenant, batch)
    return zones.read_table(path) if path.exists() else SCHEMA.empty_table()


def from_placements(subjects: pa.Array, placements: list[tuple[str, str, pa.Array]]) -> pa.Table:
    """A new batch's index: one row per (subject, file), grouped by subject (runs compress well).

    ``subjects`` is the subject of each row of the batch; ``placements`` is (zone, path,
    row indices) per output file.  Works on the integer codes of the dictionary-encoded
    pseudonyms: a unique per file, one integer sort.
    """
    if not placements:
        return SCHEMA.empty_table()
    encoded = subjects if pa.types.is_dictionary(subjects.type) else pc.dictionary_encode(subjects)
    codes, values = encoded.indices, encoded.dictionary
    code_parts, file_parts = [], []
    for k, (_, _, rows) in enumerate(placements):
        distinct = pc.drop_null(pc.unique(pc.take(codes, rows)))
        code_parts.append(distinct)
        file_parts.append(pa.repeat(pa.scalar(k, pa.int32()), len(distinct)))
    pairs = pa.table({"c": pa.concat_arrays(code_parts), "f": pa.concat_arrays(file_parts)})
    pairs = pairs.take(pc.sort_indices(pairs, sort_keys=[("c", "ascending"), ("f", "ascending")]))
    zone_of = pa.array([z for z, _, _ in placements], pa.string())
    path_of = pa.array([p for _, p, _ in placements], pa.string())
    return pa.table({"subject_id": pc.take(values, pairs["c"]).cast(pa.string()),
                     "zone": pc.take(zone_of, pairs["f"]), "path": pc.take(path_of, pairs["f"])},
                    schema=SCHEMA)


def entries(outputs: dict[str, pa.Table | None]) -> list[pa.Table]:
    """Index rows of these zone files (path relative to the zones root → content)."""
    out = []
    for rel, table in sorted(outputs.items()):
        if table is None or table.num_rows == 0:
            continue
        distinct = pc.drop_null(pc.unique(table[SUBJECT_COLUMN]))
        zone = layout.zone_of(rel)
        out.append(pa.table({"subject_id": distinct.cast(pa.string()),
                             "zone": pa.repeat(zone, len(distinct)),
                             "path": pa.repeat(rel, len(distinct))}, schema=SCHEMA))
    return out


def without_files(index: pa.Table, rels: list[str]) -> pa.Table:
    """``index`` less its entries for these files."""
    return index.filter(pc.invert(pc.is_in(index["path"], value_set=pa.array(sorted(rels), pa.string()))))


def lookup(settings: Settings, tenant: str, subjects: set[str]) -> pa.Table:
    """(subject_id, zone, path, dataset, batch_id) for every indexed file holding ``subjects``."""
    parts = []
    wanted = pa.array(sorted(subjects), pa.string())
    for dataset, batch, f in layout.index_files(settings, tenant):
        table = zones.read_table(f)
        hit = table.filter(pc.is_in(table["subject_id"], value_set=wanted))
        if hit.num_rows:
            n = hit.num_rows
            parts.append(hit.append_column("dataset", pa.repeat(dataset, n))
                         .append_column("batch_id", pa.repeat(batch, n)))
    if not parts:
        return pa.table({c: pa.array([], pa.string()) for c in LOOKUP_COLUMNS})
    return pa.concat_tables(parts)


COOKIE_LOOKUP_COLUMNS = ("anonymous_pid", "zone", "path", "dataset", "batch_id")


def cookie_datasets() -> list[str]:
    """The datasets whose event-zone rows carry a cookie pseudonym."""
    return [d for d in sorted(contracts.available()) if COOKIE_COLUMN in contracts.load(d).event_columns]


def lookup_cookies(settings: Settings, tenant: str, cookies: Iterable[str],
                   zones_: Iterable[str] = layout.PARTITIONED) -> pa.Table:
    """(anonymous_pid, zone, path, dataset, batch_id) for every file holding a logged-out row
    (no subject) of ``cookies``.

    Such rows have no subject, so the subject index cannot list them: this scans the
    tenant's files of the cookie datasets, two columns each with the filter pushed into
    the reader, and only subject bucket 0 (ingest puts every row without a subject there,
    and rewrites keep a row in its file or its mirror) (``docs/adr/0008-identity-links.md``).
    """
    wanted = pa.array(sorted(set(cookies)), pa.string())
    empty = pa.table({c: pa.array([], pa.string()) for c in COOKIE_LOOKUP_COLUMNS})
    if not len(wanted):
        return empty
    files: list[tuple[str, UPath]] = []
    for zone in zones_:
        root = layout.zone_root(settings, zone)
        for dataset in cookie_datasets():
            for f in zones.parquet_files(layout.tenant_dir(root, dataset, tenant)):
                zf = layout.parse(f, settings.zones)
                if zf.bucket in (None, 0):
                    files.append((zf.rel, f))
    flt = pc.field(SUBJECT_COLUMN).is_null() & pc.field(COOKIE_COLUMN).isin(wanted)

    def scan(item: tuple[str, UPath]) -> pa.Table | None:
        rel, path = item
        try:
            hit = zones.read_table(path, columns=[COOKIE_COLUMN, SUBJECT_COLUMN], filters=flt)
        except FileNotFoundError:
            return None  # removed since it was listed
        if hit.num_rows == 0:
            return None
        found = pc.unique(hit[COOKIE_COLUMN].combine_chunks()).cast(pa.string())
        zf = layout.parse(rel)
        n = len(found)
        return pa.table({COOKIE_COLUMN: found, "zone": pa.repeat(zf.zone, n), "path": pa.repeat(rel, n),
                         "dataset": pa.repeat(zf.dataset, n), "batch_id": pa.repeat(zf.batch, n)})

    with ThreadPoolExecutor(2, thread_name_prefix="pseudozone-cookies") as pool:
        parts = [t for t in pool.map(scan, files) if t is not None]
    return pa.concat_tables(parts) if parts else empty


def reindex(settings: Settings, rel_paths: list[str]) -> None:
    """Rebuild the index entries of these zone files from their content (repair after a
    failure, or after retention deleted them)."""
    by_batch: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for rel in rel_paths:
        f = layout.parse(rel)
        by_batch[(f.dataset, f.tenant, f.batch)].append(rel)
    for (dataset, tenant, batch), rels in sorted(by_batch.items()):
        kept = without_files(read(settings, dataset, tenant, batch), rels)
        fresh = entries({rel: _read(settings.zones / rel) for rel in rels})
        write(settings, dataset, tenant, batch, pa.concat_tables([kept, *fresh]))


def _read(path: UPath) -> pa.Table | None:
    return zones.read_table(path, columns=[SUBJECT_COLUMN]) if path.exists() else None
