"""Storage protocol (docs/adr/0001-storage-protocol.md, docs/adr/0017-object-storage.md).

Every write is a whole file with a deterministic name, written under a
temporary name in the same directory and renamed into place with
``os.replace``.  Readers never see half a file; a re-run writes the same names.

Zones on object storage (``PSEUDOZONE_ZONES=s3://…``, docs/adr/0017-object-storage.md)
have no rename: a file is written whole in one PUT (``fs.pipe_file``) or uploaded from
the local staging directory in one upload (``publish``); the object appears whole or not
at all.  Modes, fsync and temp names do not apply there.  A partition rewrite that
replaces several files at once (compaction, a trim, a rotation) cannot swap a directory
there: it leaves a unit record ``_unit-<kind><hash>.json`` in the partition, and
``parquet_files`` honours it: the unit's outputs are not listed until the record says
``committed``, its inputs no longer once it does (``lake.compact``, ADR 0017).  Every function below takes
a local ``Path`` or a ``UPath`` of the zones (``Settings.zones``), and readers of zone
files use ``read_table``/``read_metadata``/``read_schema``/``parquet_file`` here, which
pass the path's filesystem to pyarrow.

Temporary names (``temp_path``) start with ``.tmp-`` and end with ``.part``: no reader
looks at them (DuckDB's ``*.parquet`` globs need the suffix; pyarrow, Spark and Trino
skip names that start with ``.`` or ``_``).  A writer renames its temp file seconds after
its last write, so one untouched for ``STALE_TEMP_SECONDS`` belongs to a killed writer:
``sweep_temp_files`` removes it (``Settings.ensure`` does, once per process).  Should a
stopped writer come back after that, its rename fails and its task is retried; nothing
is half-published either way.

Modes (need-to-know on disk, ADR 0001): a file is written owner-only (0600) and gets its
directory's mode without the execute bits just before its rename (0700 -> 0600,
0750 -> 0640); a new directory takes its parent's mode (setgid included).
``Settings.ensure`` gives each zone root its mode, so the event zone is 0750/0640 and
everything else under the zones and state 0700/0600.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

# a zone path (Settings.zones and below) or a local one
AnyPath: TypeAlias = Path | UPath
ZP = TypeVar("ZP", Path, UPath)  # what a writer is given, it returns

# zstd level 1: as fast to write as snappy here, and pseudonyms (hex) shrink by half.
# store_schema=False: dictionary-encoded columns read back as plain strings, and the
# files carry no pyarrow-only metadata; every engine reads them the same way.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "store_schema": False}


TEMP_PREFIX = ".tmp-"
TEMP_SUFFIX = ".part"
# a temp file untouched this long is a killed writer's (see the module docstring)
STALE_TEMP_SECONDS = 3600
# the names of temp files before issue 12 (.<name>.tmp-<uuid>), swept as well
_LEGACY_TEMP = re.compile(r"^\..+\.tmp-[0-9a-f]{32}\Z")


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``: hidden, never ``*.parquet``; the writer's pid is in it
    (for people reading a directory listing; staleness goes by age, since pids are per host)."""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}-{path.name}{TEMP_SUFFIX}")



def is_temp(name: str) -> bool:
    """Whether a file name is a temp name of this module (now or before issue 12)."""
    return (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)) or bool(_LEGACY_TEMP.match(name))


def sweep_temp_files(roots: Iterable[Path], older_than: float) -> list[Path]:
    """Remove temp files under ``roots`` last modified before ``older_than`` (epoch seconds).

    Symlinks are neither followed nor removed.  Returns the removed paths.
    """
    removed: list[Path] = []
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if not is_temp(name):
                    continue
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                    if st.st_mtime < older_than and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:
                    continue  # renamed or removed by its writer meanwhile
    return removed


# need-to-know on disk: analysts' group reads the event zone; nobody else reads the rest
EVENT_DIR_MODE = 0o750
EVENT_FILE_MODE = 0o640
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
ZONES_ROOT_MODE = 0o710  # the analysts' group passes through to the event zone
_SETGID = 0o2000


def file_mode(directory: Path) -> int:
    """The mode of a file written into ``directory``: the directory's, without execute bits."""
    return directory.stat().st_mode & 0o666


def is_remote(path: AnyPath) -> bool:
    """Whether ``path`` is on object storage (a ``UPath`` that is no local ``Path``)."""
    return not isinstance(path, Path)


def make_dirs(directory: ZP) -> ZP:
    """``mkdir -p`` where each new directory gets its parent's mode and setgid bit (not the umask's);
    object storage has no directories (nothing to do)."""
    if not isinstance(directory, Path):
        return directory
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    mode = current.stat().st_mode & (0o777 | _SETGID)
    for new in reversed(missing):
        try:
            new.mkdir(mode=0o700)
        except FileExistsError:
            if not new.is_dir():
                raise
            mode = new.stat().st_mode & (0o777 | _SETGID)
            continue
        os.chmod(new, mode)
    return directory


def set_mode(path: AnyPath, mode: int) -> None:
    """chmod to ``mode``, keeping a directory's setgid bit (the deployment's group inheritance);
    nothing on object storage (no modes)."""
    if not isinstance(path, Path):
        return
    current = path.lstat().st_mode
    keep = current & _SETGID if path.is_dir() else 0
    if current & (0o7777) != mode | keep:
        os.chmod(path, mode | keep)


def _create_private(path: Path) -> None:
    """Create ``path`` empty, owner-only, failing if it exists; writers then open it again."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(directories: Iterable[AnyPath]) -> None:
    """Make renames into these directories durable (one fsync per directory; object storage
    has nothing to sync: an object is durable when its PUT returns)."""
    for directory in sorted({d for d in directories if isinstance(d, Path)}):
        _fsync_dir(directory)


def _write_table(table: pa.Table, where: Any, footer: dict[str, str] | None, options: dict[str, Any]) -> None:
    if footer:
        opts = {**PARQUET_OPTIONS, **options}
        row_group_size = opts.pop("row_group_size", None)
        with pq.ParquetWriter(where, table.schema, **opts) as writer:
            writer.write_table(table, row_group_size=row_group_size)
            writer.add_key_value_metadata(footer)
    else:
        pq.write_table(table, where, **{**PARQUET_OPTIONS, **options})


def write_parquet(table: pa.Table, path: ZP, *, sync_dir: bool = True,
                  footer: dict[str, str] | None = None, **options: Any) -> ZP:
    """Write ``table`` to ``path`` atomically (temp file, fsync, rename; on object storage one PUT).

    ``options`` override ``PARQUET_OPTIONS`` (pyarrow.parquet.write_table keywords).
    ``footer`` is key-value metadata for the file's footer (``store_schema=False`` drops the
    table's schema metadata).  ``sync_dir=False`` leaves the directory fsync to the caller
    (``fsync_dirs``), for writes that are staged and renamed again.
    """
    if not isinstance(path, Path):
        sink = pa.BufferOutputStream()
        _write_table(table, sink, footer, options)
        path.fs.pipe_file(path.path, sink.getvalue().to_pybytes())
        return path
    make_dirs(path.parent)
    tmp = temp_path(path)
    try:
        _create_private(tmp)  # a killed writer's temp file is readable by nobody else
        _write_table(table, tmp, footer, options)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), file_mode(path.parent))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    return path


def publish(staged: Path, final: AnyPath) -> None:
    """Rename a staged file into place (atomic) with the mode of its final directory; on object
    storage, upload it in one request (the object appears whole) and remove the staged copy."""
    if not isinstance(final, Path):
        final.fs.put_file(os.fspath(staged), final.path)
        staged.unlink()
        return
    make_dirs(final.parent)
    os.chmod(staged, file_mode(final.parent))
    os.replace(staged, final)


def write_bytes(data: bytes, path: ZP) -> ZP:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename; on object storage one PUT)."""
    if not isinstance(path, Path):
        path.fs.pipe_file(path.path, data)
        return path
    make_dirs(path.parent)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), file_mode(path.parent))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: ZP) -> ZP:
    return write_bytes((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), path)


def _remote_files(root: UPath) -> list[UPath]:
    """Every object under ``root`` (a prefix), as paths below it, sorted."""
    base = root.path.rstrip("/")
    try:
        keys = root.fs.find(base)
    except FileNotFoundError:
        return []
    return [root.joinpath(*posixpath.relpath(k, base).split("/")) for k in sorted(keys)
            if k.startswith(base + "/")]


UNIT_PREFIX = "_unit-"  # a partition rewrite's record on object storage (lake.compact)
COMMITTED = ("committed", "checked")  # unit states in which its outputs are the partition's files
_LIST_ATTEMPTS = 5


def _hidden(units: list[UPath]) -> tuple[set[str], set[str]] | None:
    """(keys hidden, keys that must be listed) by these unit records; None when one vanished
    between the listing and its read (the unit finished: list again)."""
    hidden: set[str] = set()
    needed: set[str] = set()
    for record in units:
        try:
            unit = json.loads(record.read_bytes())
        except FileNotFoundError:
            return None
        base = record.path.rsplit("/", 1)[0] + "/"
        done = unit.get("state") in COMMITTED
        hidden |= {base + n for n in (unit["inputs"] if done else unit["outputs"])}
        if done:
            needed |= {base + n for n in unit["outputs"]}
    return hidden, needed


def _remote_parquet(root: UPath) -> list[UPath]:
    for _ in range(_LIST_ATTEMPTS):
        found = [p for p in _remote_files(root)
                 if not any(part.startswith(".") for part in p.relative_to(root).parts)]
        units = [p for p in found if p.name.startswith(UNIT_PREFIX) and p.name.endswith(".json")]
        files = [p for p in found if p.name.endswith(".parquet") and not p.name.startswith(("_", "."))]
        if not units:
            return files
        rule = _hidden(units)
        keys = {p.path for p in files}
        # a unit committed after the listing may have outputs the listing missed: list again
        if rule is not None and rule[1] <= keys:
            return [p for p in files if p.path not in rule[0]]
    raise OSError(f"the listing of {root} kept changing under partition rewrites; try again")


def parquet_files(root: AnyPath) -> list[UPath]:
    """Published Parquet files under ``root`` (temp files and hidden directories excluded), sorted;
    on object storage, as the unit records in the partitions say (module docstring)."""
    if not isinstance(root, Path):
        return _remote_parquet(root)
    if not root.exists():
        return []
    return sorted(UPath(p) for p in root.rglob("*.parquet") if not p.name.startswith("."))


# -- reading zone files (one read policy: the path's own filesystem) --------------------------


def _where(path: AnyPath) -> tuple[str | Path, Any]:
    return (path, None) if isinstance(path, Path) else (path.path, path.fs)


def read_table(path: AnyPath, **options: Any) -> pa.Table:
    """``pyarrow.parquet.read_table`` of a zone file, local or on object storage."""
    where, fs = _where(path)
    return pq.read_table(where, filesystem=fs, **options)


def read_metadata(path: AnyPath) -> pq.FileMetaData:
    where, fs = _where(path)
    return pq.read_metadata(where, filesystem=fs)


def read_schema(path: AnyPath) -> pa.Schema:
    where, fs = _where(path)
    return pq.read_schema(where, filesystem=fs)


def parquet_file(path: AnyPath) -> pq.ParquetFile:
    """A ``ParquetFile`` of a zone file (use it as a context manager: it holds the file open)."""
    where, fs = _where(path)
    return pq.ParquetFile(where, filesystem=fs)


def remove(path: AnyPath) -> bool:
    """Delete one file if it is there; whether it was."""
    if isinstance(path, Path):
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
    try:
        path.fs.rm_file(path.path)
    except FileNotFoundError:
        return False
    return True


def modified(path: AnyPath, *, changed: bool = False) -> float:
    """When a file was last modified (epoch seconds): a local file's own mtime (never a link's
    target's), with ``changed`` the later of its mtime and ctime (a file moved in by rename
    keeps its old mtime); an object's last-modified time.  FileNotFoundError when it is gone."""
    if isinstance(path, Path):
        st = path.lstat()
        return max(st.st_mtime, st.st_ctime) if changed else st.st_mtime
    return float(path.stat().st_mtime)


def remove_tree(path: AnyPath) -> None:
    """Delete a directory (a prefix on object storage) and everything under it, if it is there."""
    if isinstance(path, Path):
        if path.is_dir():
            shutil.rmtree(path)
        return
    try:
        path.fs.rm(path.path.rstrip("/"), recursive=True)
    except FileNotFoundError:
        return
