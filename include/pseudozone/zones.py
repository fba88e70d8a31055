"""Storage protocol (DESIGN.md; docs/adr/0001-storage-protocol.md).

Every write is a whole file with a deterministic name, written under a
temporary name in the same directory and renamed into place with
``os.replace``.  Readers never see half a file; a re-run writes the same names.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# zstd level 1: as fast to write as snappy here, and pseudonyms (hex) shrink by half.
# store_schema=False: dictionary-encoded columns read back as plain strings, and the
# files carry no pyarrow-only metadata; every engine reads them the same way.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "store_schema": False}


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(directories: set[Path]) -> None:
    """Make renames into these directories durable (one fsync per directory)."""
    for directory in sorted(directories):
        _fsync_dir(directory)


def write_parquet(table: pa.Table, path: Path, *, sync_dir: bool = True, **options: Any) -> Path:
    """Write ``table`` to ``path`` atomically (temp file, fsync, rename).

    ``options`` override ``PARQUET_OPTIONS`` (pyarrow.parquet.write_table keywords).
    ``sync_dir=False`` leaves the directory fsync to the caller (``fsync_dirs``), for
    writes that are staged and renamed again.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp, **{**PARQUET_OPTIONS, **options})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    return path


def write_bytes(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: Path) -> Path:
    return write_bytes((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), path)


def parquet_files(root: Path) -> list[Path]:
    """Published Parquet files under ``root`` (temp files excluded), sorted."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))
