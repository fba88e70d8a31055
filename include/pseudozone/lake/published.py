"""What a tenant's zones already hold of a dataset's unique key (re-delivery detection).

A contract's ``unique_key`` names the column that identifies a row (``event_id``).  At
ingest, a row whose key the event or restricted zone already holds for that tenant is a
re-delivery: it is dropped and counted, never published twice.  A re-delivered row keeps
its timestamp, so only the date partitions the batch writes to are read, and of them
only the key column (docs/adr/0010-linkage.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from pseudozone import zones
from pseudozone.config import Settings
from pseudozone.lake import layout

REMOTE_READ_THREADS = 16


def key_values(settings: Settings, dataset: str, tenant: str, column: str, days: Iterable[str]) -> pa.Array:
    """The distinct values of ``column`` in the tenant's event- and restricted-zone files of
    ``dataset`` on ``days`` (ISO dates), as a string array."""
    paths = [path for zone in layout.PARTITIONED for day in sorted(set(days))
             for path in zones.parquet_files(layout.partition_dir(layout.zone_root(settings, zone), dataset,
                                                                  tenant, day))]

    def read(path: UPath) -> pa.Array:
        return zones.read_table(path, columns=[column])[column].combine_chunks()

    # on object storage each read is a few requests' latency: many at once (local reads are fast)
    threads = REMOTE_READ_THREADS if settings.remote_zones and len(paths) > 1 else 1
    with ThreadPoolExecutor(threads, thread_name_prefix="pseudozone-keys") as pool:
        found = list(pool.map(read, paths))
    if not found:
        return pa.array([], pa.string())
    values = pa.chunked_array([a.cast(pa.string()) for a in found], pa.string())
    return pc.unique(values.combine_chunks())


def _plain(keys: pa.Array) -> pa.Array:
    return (keys.cast(keys.type.value_type) if pa.types.is_dictionary(keys.type) else keys).cast(pa.string())


def overlaps(keys: pa.Array, other: pa.Array) -> bool:
    """Whether any of ``keys`` is one of ``other``."""
    return bool(pc.any(pc.is_in(_plain(keys), value_set=_plain(other))).as_py())


def repeated(keys: pa.Array, published: pa.Array) -> pa.Array:
    """A boolean per row of ``keys``: true where the key is in ``published`` or an earlier row
    of ``keys`` has it (the first row of a key repeated within the batch is kept)."""
    plain = _plain(keys)
    seen = pc.fill_null(pc.is_in(plain, value_set=published), False).to_numpy(zero_copy_only=False)
    indices = np.asarray(pc.dictionary_encode(plain).indices.fill_null(-1))
    first = np.zeros(len(indices), dtype=bool)
    _, at = np.unique(indices, return_index=True)
    first[at] = True
    # rows without a key (null) are never repeats of one another
    first |= indices < 0
    return pa.array(seen | ~first)
