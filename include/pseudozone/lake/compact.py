"""Compaction: merge the small files of each event- and restricted-zone date partition.

A partition-day (``<zone>/<dataset>/tenant_id=<t>/date=<d>/``) holds one file per landing
batch, or per batch and subject bucket (``<batch>.bNN.parquet``).  ``compact`` rewrites
it as one file per subject bucket (``compact-<H>[.bNN].parquet``), or, when a bucket has
more than ``target_rows`` rows, as parts of at most that many rows
(``compact-<H>-pKK[.bNN].parquet``).  ``H`` hashes the zone paths of the inputs and the
target, so a rerun redoes the same work under the same names and bytes.  Rows are sorted
by ``subject_id``, then the dataset's time column (``partition_date_from``), in row
groups of ``ROW_GROUP_ROWS`` rows, so that row-group statistics prune a subject's lookups.

Commit order of one partition (the unit), ``docs/adr/0007-lake-layer.md``:

0. ``manifest``: ``zones/.compact/<H>/manifest.json`` records the unit, the inputs (name,
   size, mtime, inode) and the outputs;
1. ``indexed``: the outputs' subject-index entries are added (index file of the output's
   batch, ``compact-<H>[-pKK]``): an entry for a file not yet published is harmless;
2. ``staged``: the outputs are written (fsynced) into ``zones/.compact/<H>/part/``, a
   directory with the partition's mode and group;
3. ``exchanged``: the staged directory and the partition directory swap in one
   ``renameat2(RENAME_EXCHANGE)``: readers see the inputs before, the outputs after;
4. ``checked``: the old directory (now ``part/``) must hold the inputs unchanged; if a
   writer changed one meanwhile, the swap is undone and the unit rolled back; files that
   arrived meanwhile (a new batch) are moved into the partition;
5. ``unindexed``: the inputs' entries are removed from their batches' index files (an
   index file left empty is deleted);
6. ``removed``: the old directory is deleted; then the manifest (its directory) last.

A run finds the manifests a killed run left (``recover``, first thing in ``compact``):
a unit whose outputs are all in the partition is rolled forward (steps 4-6), any other
is rolled back (output index entries removed, work directory deleted) and redone from
scratch by the same run, under the same names.

``trim`` is the same unit with a filter: the nightly retention step rewrites a partition
past retention that a subject's legal hold keeps with only the held rows (``keep``), each
bucket's kept rows in one ``compact-<H>`` file (``H`` also says "trim", so never the name a
compaction of the same inputs gives), a bucket with none kept in no file.  Its work
directories are ``trim-<H>``: ``recover(prefix=TRIM_PREFIX)`` (the retention step's first
thing) finishes or undoes them, and compaction's recovery never touches them (nor
retention's a compaction's), so neither rolls back a unit the other is running.

Zones on object storage have no directory exchange (docs/adr/0017-object-storage.md).  There
a unit keeps its record in the partition itself, ``_unit-<kind><H>.json``, and the record's
state is the commit point that readers honour (``zones.parquet_files``): while it is
``staged`` the outputs are hidden, once it is ``committed`` the inputs are:

0. ``manifest``: the record (state ``staged``) with the inputs (name, size, ETag) and outputs;
1. ``indexed``: the outputs' index entries, as above;
2. ``staged``: the outputs are written into the partition (one PUT each; hidden by the record);
3. ``exchanged``: the record is written again with state ``committed``: the commit point;
4. ``checked``: every input must be as it was read, else the record goes back to ``staged``
   and the unit is rolled back (outputs deleted, their entries removed); then the state is
   ``checked``, so that a rerun does not take inputs it deleted for changed ones;
5. ``unindexed``, 6. ``removed``: the inputs' entries, the inputs, then the record.

``recover`` finds the records a killed run left: committed or checked ones are rolled forward,
staged ones rolled back.

``rewrite`` is the same unit with a transform that may move rows between subject buckets:
a pseudonym rotation (``pseudozone.rotation``) maps every pseudonym of a partition, so a row's
bucket (a function of its subject pseudonym) is computed again from the mapped rows.  Its
outputs carry the rewrite's Parquet metadata, its work directories are ``rotate-<H>``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from pseudozone import contracts, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.errors import PseudozoneError
from pseudozone.lake import index, layout, leases

log = logging.getLogger(__name__)

DEFAULT_TARGET_ROWS = 5_000_000  # one file per partition-day and bucket up to this many rows
ROW_GROUP_ROWS = 64 * 1024  # small enough that a subject's lookups skip most of a day
PREFIX = "compact-"
TRIM_PREFIX = "trim-"  # work directories of retention's trims (their outputs are compact-<H> files)
ROTATE_PREFIX = "rotate-"  # work directories of pseudonym rotations (outputs: compact-<H> files)
WORK_DIR = ".compact"  # under the zones root: not a zone, not swept as a staged batch
STEPS = ("manifest", "indexed", "staged", "exchanged", "checked", "unindexed", "removed")


class CompactionConflict(PseudozoneError):
    """A partition changed while it was compacted; the unit was rolled back (next run redoes it)."""


def _after(step: str, unit: str) -> None:
    """Called after each commit step; tests replace it to kill a run at a given step."""


# -- the unit of work ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    zone: str
    dataset: str
    tenant: str
    day: str

    def partition(self, settings: Settings) -> UPath:
        root = layout.zone_root(settings, self.zone)
        return layout.partition_dir(root, self.dataset, self.tenant, self.day)


def _local(path: UPath) -> Path:
    if not isinstance(path, Path):
        raise TypeError(f"{path} is not on a local file system")
    return path


def _work_root(settings: Settings) -> Path:
    return _local(settings.zones / WORK_DIR)


def _files(part: UPath) -> list[UPath]:
    """Published Parquet files of a partition directory (temp and hidden names excluded; on
    object storage as its unit records say)."""
    if not isinstance(part, Path):
        return zones.parquet_files(part)
    if not part.is_dir():
        return []
    return sorted(p for p in part.iterdir()
                  if p.is_file() and p.name.endswith(layout.SUFFIX) and not p.name.startswith((".", "_")))


def _stat(path: UPath) -> list[Any]:
    """What tells a changed input: size, mtime and inode; on object storage size and ETag."""
    if not isinstance(path, Path):
        info = path.fs.info(path.path)
        return [int(info["size"]), str(info.get("ETag") or info.get("etag") or info.get("LastModified"))]
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _rel(unit: Unit, name: str) -> str:
    """A file of the unit's partition, relative to the zones root (as the index stores it)."""
    return str(layout.partition_dir(PurePosixPath(unit.zone), unit.dataset, unit.tenant, unit.day) / name)


def _needs_compaction(unit: Unit, files: list[UPath], target_rows: int) -> bool:
    """Whether some bucket of the partition has a file that is not compacted, or more or fewer
    parts than its rows need at this target (a second run over a compacted lake does nothing)."""
    by_bucket: dict[int | None, list[UPath]] = defaultdict(list)
    for f in files:
        by_bucket[layout.parse(_rel(unit, f.name)).bucket].append(f)
    for group in by_bucket.values():
        if any(not f.name.startswith(PREFIX) for f in group):
            return True
        rows = sum(zones.read_metadata(f).num_rows for f in group)
        if len(group) != max(1, math.ceil(rows / target_rows)):
            return True
    return False


def _sort_keys(table: pa.Table, time_column: str) -> list[tuple[str, str]]:
    keys = [(SUBJECT_COLUMN, "ascending")] if SUBJECT_COLUMN in table.column_names else []
    if time_column in table.column_names:
        keys.append((time_column, "ascending"))
    return keys


Keep = Callable[[pa.Table], pa.Table]  # a file's rows -> those a trim keeps


@dataclass(frozen=True)
class Rewrite:
    """A transform of every row of a partition (a pseudonym rotation): ``rows`` maps one input
    file's rows, ``buckets`` gives each mapped row's subject bucket (None: the dataset has
    none), ``metadata`` goes into every output's Parquet footer, ``tag`` into the outputs' hash."""

    tag: str
    rows: Callable[[pa.Table], pa.Table]
    buckets: Callable[[pa.Table], pa.Array | None]
    metadata: dict[str, str]


def _by_rewritten_bucket(files: list[UPath], rewrite: Rewrite) -> dict[int | None, list[pa.Table]]:
    """The inputs' rows mapped by ``rewrite``, grouped by the bucket of each mapped row."""
    mapped = pa.concat_tables([rewrite.rows(zones.read_table(f)) for f in files],
                              promote_options="default").combine_chunks()
    buckets = rewrite.buckets(mapped)
    if buckets is None:
        return {None: [mapped]}
    out: dict[int | None, list[pa.Table]] = {}
    for b in sorted(pc.unique(buckets).to_pylist()):
        out[int(b)] = [mapped.filter(pc.equal(buckets, b))]
    return out


def _plan_outputs(unit: Unit, files: list[UPath], target_rows: int, digest: str,
                  keep: Keep | None = None, rewrite: Rewrite | None = None) -> dict[str, pa.Table]:
    """Output file name -> its rows: the inputs of each bucket merged (in input-name order),
    sorted by subject then time (stable), cut into parts of at most ``target_rows``; with
    ``keep``, only the rows it keeps of each input, and no file for a bucket left empty; with
    ``rewrite``, every row mapped and put in the bucket of its mapped subject."""
    contract = contracts.load(unit.dataset)
    by_bucket: dict[int | None, list[pa.Table]] = defaultdict(list)
    if rewrite is not None:
        by_bucket.update(_by_rewritten_bucket(files, rewrite))
    for f in files if rewrite is None else []:
        table = zones.read_table(f)
        by_bucket[layout.parse(_rel(unit, f.name)).bucket].append(table if keep is None else keep(table))
    out: dict[str, pa.Table] = {}
    for bucket, tables in sorted(by_bucket.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        merged = pa.concat_tables(tables, promote_options="default").combine_chunks()
        if keep is not None and merged.num_rows == 0:
            continue
        keys = _sort_keys(merged, contract.partition_date_from)
        if keys:
            merged = merged.take(pc.sort_indices(merged, sort_keys=keys))  # stable; nulls last
        parts = max(1, math.ceil(merged.num_rows / target_rows))
        size = math.ceil(merged.num_rows / parts) if merged.num_rows else 0
        for k in range(parts):
            batch = PREFIX + digest if parts == 1 else f"{PREFIX}{digest}-p{k:02d}"
            name = layout.event_file(unit.zone, unit.dataset, unit.tenant, unit.day, batch, bucket).name
            out[name] = merged.slice(k * size, size)
    return out


def _digest(unit: Unit, names: list[str], target_rows: int, *, trim: bool = False, tag: str = "") -> str:
    text = "\n".join([*(_rel(unit, n) for n in sorted(names)), f"target_rows={target_rows}",
                      *(["trim"] if trim else []), *([tag] if tag else [])])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# -- index ------------------------------------------------------------------------------------


def _index_update(settings: Settings, unit: Unit, drop: list[str],
                  add: dict[str, pa.Table] | None = None) -> None:
    """Per batch index file: less the entries of the ``drop`` files, plus those of the ``add``
    files (rel -> subject column); an index file left empty is deleted."""
    batches: dict[str, tuple[list[str], dict[str, pa.Table]]] = defaultdict(lambda: ([], {}))
    for rel in drop:
        batches[layout.parse(rel).batch][0].append(rel)
    for rel, table in (add or {}).items():
        batches[layout.parse(rel).batch][1][rel] = table
    for batch, (rels, fresh) in sorted(batches.items()):
        path = layout.index_file(settings, unit.dataset, unit.tenant, batch)
        old = index.read(settings, unit.dataset, unit.tenant, batch)
        kept = index.without_files(old, sorted({*rels, *fresh}))
        new = pa.concat_tables([kept, *index.entries(fresh)])
        if new.num_rows == 0:
            zones.remove(path)
        elif not (path.exists() and new.equals(old)):
            index.write(settings, unit.dataset, unit.tenant, batch, new)


# -- the atomic swap ---------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path, spare: Path) -> None:
    """Swap two directories atomically (Linux ``renameat2``); elsewhere three renames through
    ``spare`` that ``_finish_swap`` completes after a crash."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        fn = None
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(b))
    os.rename(b, spare)
    os.rename(a, b)
    os.rename(spare, a)


def _finish_swap(staged: Path, partition: Path, spare: Path) -> None:
    """Complete a three-rename swap a crash interrupted."""
    if spare.exists():
        if not partition.exists():
            os.rename(staged, partition)
        os.rename(spare, staged)


# -- one unit ---------------------------------------------------------------------------------


def _compact_unit(settings: Settings, unit: Unit, files: list[UPath], target_rows: int,
                  keep: Keep | None = None, rewrite: Rewrite | None = None) -> dict[str, Any]:
    names = [f.name for f in files]
    digest = _digest(unit, names, target_rows, trim=keep is not None, tag=rewrite.tag if rewrite else "")
    prefix = TRIM_PREFIX if keep is not None else ROTATE_PREFIX if rewrite is not None else PREFIX
    outputs = _plan_outputs(unit, files, target_rows, digest, keep, rewrite)
    if not outputs:
        # recovery takes a unit whose outputs are all in place for exchanged: never plan none
        raise PseudozoneError(f"{unit.zone} zone {unit.dataset} partition {unit.day} of tenant "
                              f"{unit.tenant}: no row to write (delete the partition instead)")
    manifest = {"zone": unit.zone, "dataset": unit.dataset, "tenant": unit.tenant, "day": unit.day,
                "target_rows": target_rows, "inputs": {f.name: _stat(f) for f in files},
                "outputs": sorted(outputs)}
    rows_in = sum(t.num_rows for t in outputs.values())
    if settings.remote_zones:
        _remote_unit(settings, unit, prefix + digest, manifest, outputs, rewrite)
        return {"files_in": len(files), "files_out": len(outputs), "rows": rows_in}
    part = _local(unit.partition(settings))
    work = _work_root(settings) / (prefix + digest)
    # 0. the manifest first: whatever follows, a rerun finds the unit
    zones.make_dirs(work)
    zones.set_mode(_work_root(settings), zones.PRIVATE_DIR_MODE)  # like zones/.staging: owner only
    zones.set_mode(work, zones.PRIVATE_DIR_MODE)
    zones.write_json(manifest, work / "manifest.json")
    _after("manifest", digest)
    # 1. the outputs' index entries before any output is visible
    _index_update(settings, unit, [], {_rel(unit, n): t.select([SUBJECT_COLUMN]) for n, t in outputs.items()})
    _after("indexed", digest)
    # 2. the new partition, staged beside the old one's future place, with its mode and group
    staged = work / "part"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir(mode=0o700)
    st = part.stat()
    with contextlib.suppress(PermissionError):  # the pipeline's user is in the analysts' group
        os.chown(staged, -1, st.st_gid)
    os.chmod(staged, st.st_mode & 0o7777)
    for name, table in sorted(outputs.items()):
        zones.write_parquet(table, staged / name, sync_dir=False, row_group_size=ROW_GROUP_ROWS,
                            footer=rewrite.metadata if rewrite is not None else None)
    zones.fsync_dirs({staged, work})
    _after("staged", digest)
    # 3. the commit point
    _exchange(staged, part, work / "swap")
    zones.fsync_dirs({part.parent, work})
    _after("exchanged", digest)
    _roll_forward(settings, unit, work, manifest, digest)
    return {"files_in": len(files), "files_out": len(outputs), "rows": rows_in}


def _roll_forward(settings: Settings, unit: Unit, work: Path, manifest: dict[str, Any], digest: str) -> None:
    """Steps 4-6 of an exchanged unit (also after a crash)."""
    part, old, inputs = _local(unit.partition(settings)), work / "part", manifest["inputs"]
    if old.is_dir():
        # 4. the old directory must hold the inputs as they were read
        changed = [n for n, stat in inputs.items()
                   if not (old / n).is_file() or _stat(old / n) != stat]
        if changed:
            _exchange(old, part, work / "swap")
            zones.fsync_dirs({part.parent, work})
            _roll_back(settings, unit, work, manifest)
            raise CompactionConflict(f"{unit.zone} zone {unit.dataset} partition {unit.day} of tenant "
                                     f"{unit.tenant}: {len(changed)} input file(s) changed while it was "
                                     f"compacted; rolled back, the next run redoes it")
        for extra in _files(UPath(old)):
            if extra.name not in inputs:  # published meanwhile (a new batch): keep it visible
                os.rename(_local(extra), part / extra.name)
        zones.fsync_dirs({part})
    _after("checked", digest)
    # 5. the inputs leave the index once no reader can see them
    _index_update(settings, unit, [_rel(unit, n) for n in inputs])
    _after("unindexed", digest)
    # 6. the old files, then the manifest
    if old.exists():
        shutil.rmtree(old)
    _after("removed", digest)
    shutil.rmtree(work)


def _roll_back(settings: Settings, unit: Unit, work: Path, manifest: dict[str, Any]) -> None:
    """Undo a unit that was not exchanged: its output index entries and its work directory."""
    _index_update(settings, unit, [_rel(unit, n) for n in manifest["outputs"]])
    shutil.rmtree(work)


# -- one unit on object storage (the record in the partition is the commit point) --------------


def _record(part: UPath, name: str) -> UPath:
    return part / f"{zones.UNIT_PREFIX}{name}.json"


def _remote_unit(settings: Settings, unit: Unit, name: str, manifest: dict[str, Any],
                 outputs: dict[str, pa.Table], rewrite: Rewrite | None) -> None:
    part = unit.partition(settings)
    record = _record(part, name)
    digest = name.split("-", 1)[1]
    # 0. the record first: from now on the outputs are hidden from every reader
    zones.write_json({**manifest, "state": "staged"}, record)
    _after("manifest", digest)
    # 1. the outputs' index entries before any output is visible
    _index_update(settings, unit, [], {_rel(unit, n): t.select([SUBJECT_COLUMN]) for n, t in outputs.items()})
    _after("indexed", digest)
    # 2. the outputs, in the partition (hidden while the record says staged)
    for out_name, table in sorted(outputs.items()):
        zones.write_parquet(table, part / out_name, row_group_size=ROW_GROUP_ROWS,
                            footer=rewrite.metadata if rewrite is not None else None)
    _after("staged", digest)
    # 3. the commit point: readers take the outputs and leave the inputs from here on
    zones.write_json({**manifest, "state": "committed"}, record)
    _after("exchanged", digest)
    _roll_forward_remote(settings, unit, record, {**manifest, "state": "committed"}, digest)


def _roll_forward_remote(settings: Settings, unit: Unit, record: UPath, manifest: dict[str, Any],
                         digest: str) -> None:
    """Steps 4-6 of a committed (or checked) unit on object storage, also after a crash."""
    part, inputs = unit.partition(settings), manifest["inputs"]
    if manifest["state"] == "committed":
        # 4. every input as it was read, else the unit is undone (a writer replaced one meanwhile)
        changed = []
        for n, stat in inputs.items():
            try:
                if _stat(part / n) != stat:
                    changed.append(n)
            except FileNotFoundError:
                changed.append(n)
        if changed:
            zones.write_json({**manifest, "state": "staged"}, record)  # the inputs are the files again
            _roll_back_remote(settings, unit, record, manifest)
            raise CompactionConflict(f"{unit.zone} zone {unit.dataset} partition {unit.day} of tenant "
                                     f"{unit.tenant}: {len(changed)} input file(s) changed while it was "
                                     f"compacted; rolled back, the next run redoes it")
        zones.write_json({**manifest, "state": "checked"}, record)
    _after("checked", digest)
    # 5. the inputs leave the index (no reader lists them any more)
    _index_update(settings, unit, [_rel(unit, n) for n in inputs if n not in manifest["outputs"]])
    _after("unindexed", digest)
    # 6. the inputs, then the record
    for n in sorted(inputs):
        if n not in manifest["outputs"]:
            zones.remove(part / n)
    _after("removed", digest)
    zones.remove(record)


def _roll_back_remote(settings: Settings, unit: Unit, record: UPath, manifest: dict[str, Any]) -> None:
    """Undo a unit whose record is not committed: its outputs, their index entries, the record."""
    part = unit.partition(settings)
    for n in manifest["outputs"]:
        if n not in manifest["inputs"]:
            zones.remove(part / n)
    _index_update(settings, unit, [_rel(unit, n) for n in manifest["outputs"] if n not in manifest["inputs"]])
    zones.remove(record)


def _recover_remote(settings: Settings, prefix: str, what: str) -> dict[str, int]:
    done = {"rolled_forward": 0, "rolled_back": 0}
    pattern = f"{zones.UNIT_PREFIX}{prefix}*.json"
    for zone in layout.PARTITIONED:
        root = layout.zone_root(settings, zone)
        base = root.path.rstrip("/")
        try:
            found = root.fs.glob(f"{base}/*/{layout.TENANT_KEY}=*/{layout.DATE_KEY}=*/{pattern}")
        except FileNotFoundError:
            continue
        for key in sorted(found):
            record = root.joinpath(*key[len(base) + 1:].split("/"))
            try:
                manifest = json.loads(record.read_bytes())
            except FileNotFoundError:
                continue  # finished meanwhile
            unit = Unit(manifest["zone"], manifest["dataset"], manifest["tenant"], manifest["day"])
            name = record.name[len(zones.UNIT_PREFIX):-len(".json")]
            if manifest.get("state") in zones.COMMITTED:
                log.info("%s of %s/%s/%s/%s: finishing a killed run", what, *manifest_parts(manifest))
                try:
                    _roll_forward_remote(settings, unit, record, manifest, name[len(prefix):])
                except CompactionConflict as exc:
                    log.warning("%s", exc)
                    done["rolled_back"] += 1
                    continue
                done["rolled_forward"] += 1
            else:
                log.info("%s of %s/%s/%s/%s: undoing a killed run", what, *manifest_parts(manifest))
                _roll_back_remote(settings, unit, record, manifest)
                done["rolled_back"] += 1
    return done


def recover(settings: Settings, *, prefix: str = PREFIX) -> dict[str, int]:
    """Finish (exchanged) or undo (not exchanged) the units a killed run left: compaction's,
    with ``prefix=TRIM_PREFIX`` retention's trims, with ``ROTATE_PREFIX`` a rotation's."""
    done = {"rolled_forward": 0, "rolled_back": 0}
    what = {PREFIX: "compaction", TRIM_PREFIX: "trim"}.get(prefix, "rotation")
    if settings.remote_zones:
        return _recover_remote(settings, prefix, what)
    root = _work_root(settings)
    if not root.is_dir():
        return done
    for work in sorted(root.iterdir()):
        manifest_file = work / "manifest.json"
        if not work.is_dir() or not work.name.startswith(prefix):
            continue
        if not manifest_file.exists():  # killed before the manifest was written: nothing else was
            shutil.rmtree(work)
            continue
        manifest = json.loads(manifest_file.read_text())
        unit = Unit(manifest["zone"], manifest["dataset"], manifest["tenant"], manifest["day"])
        part = _local(unit.partition(settings))
        _finish_swap(work / "part", part, work / "swap")
        if part.is_dir() and all((part / n).is_file() for n in manifest["outputs"]):
            log.info("%s of %s/%s/%s/%s: finishing a killed run", what, *manifest_parts(manifest))
            try:
                _roll_forward(settings, unit, work, manifest, work.name[len(prefix):])
            except CompactionConflict as exc:
                log.warning("%s", exc)
                done["rolled_back"] += 1
                continue
            done["rolled_forward"] += 1
        else:
            log.info("%s of %s/%s/%s/%s: undoing a killed run", what, *manifest_parts(manifest))
            _roll_back(settings, unit, work, manifest)
            done["rolled_back"] += 1
    return done


def manifest_parts(manifest: dict[str, Any]) -> tuple[str, str, str, str]:
    return manifest["zone"], manifest["dataset"], manifest["tenant"], manifest["day"]


def trim(settings: Settings, unit: Unit, keep: Keep, *,
         target_rows: int = DEFAULT_TARGET_ROWS) -> dict[str, Any]:
    """Rewrite one partition with only the rows ``keep`` returns of each of its files, under the
    commit order above (staged, indexed first, one exchange, inputs unindexed once invisible).

    ``keep`` must keep some row (a partition with none to keep is deleted, not trimmed).
    Raises ``CompactionConflict`` (rolled back) when a writer changed an input meanwhile.
    """
    return _compact_unit(settings, unit, _files(unit.partition(settings)), target_rows, keep)


def files(settings: Settings, unit: Unit) -> list[UPath]:
    """The published Parquet files of a unit's partition."""
    return _files(unit.partition(settings))


def rewrite_partition(settings: Settings, unit: Unit, rewrite: Rewrite, *,
                      target_rows: int = DEFAULT_TARGET_ROWS) -> dict[str, Any]:
    """Rewrite one partition with every row mapped by ``rewrite`` (re-bucketed), under the
    commit order above.  Raises ``CompactionConflict`` (rolled back) when a writer changed an
    input meanwhile."""
    return _compact_unit(settings, unit, _files(unit.partition(settings)), target_rows, rewrite=rewrite)


# -- the whole lake ---------------------------------------------------------------------------


def writers_active(settings: Settings, tenant: str) -> bool:
    """Whether an ingest (a batch the ledger has in 'processing') or a rights run (a request in
    progress) of ``tenant`` is under way, or was killed and not redone."""
    from sqlalchemy import select

    from pseudozone import state
    from pseudozone.rights import store

    if state.exists(settings):
        with state.connect(settings) as conn:
            if conn.execute("SELECT 1 FROM batches WHERE tenant_id = ? AND status = 'processing' LIMIT 1",
                            (tenant,)).fetchone():
                return True
    with store.engine_for(settings).connect() as conn:
        return conn.execute(select(store.requests.c.request_id).where(
            store.requests.c.tenant_id == tenant, store.requests.c.state == "in_progress").limit(1)).first() \
            is not None


def compact(settings: Settings, *, target_rows: int = DEFAULT_TARGET_ROWS, tenants: list[str] | None = None,
            datasets: list[str] | None = None,
            on_partition: Callable[[Unit], None] | None = None) -> dict[str, Any]:
    """Compact every event- and restricted-zone partition-day (of these tenants and datasets)
    that has more than one file per subject bucket, or files of another size than the target;
    ``on_partition`` is called with each partition-day once it is compacted (the CLI's progress)."""
    if target_rows < 1:
        raise ValueError("target_rows must be at least 1")
    settings.ensure()
    summary: dict[str, Any] = {"partitions": 0, "files_in": 0, "files_out": 0, "rows": 0,
                               "conflicts": 0, **recover(settings)}
    summary["tenants_busy"] = 0
    busy: dict[str, bool] = {}
    holder = leases.holder_id("compact:")
    with contextlib.ExitStack() as stack:
        _compact_all(settings, summary, busy, stack, holder, target_rows, tenants, datasets, on_partition)
    log.info("compaction: %s", summary)
    return summary


def _compact_all(settings: Settings, summary: dict[str, Any], busy: dict[str, bool],
                 stack: contextlib.ExitStack, holder: str, target_rows: int, tenants: list[str] | None,
                 datasets: list[str] | None, on_partition: Callable[[Unit], None] | None) -> None:
    for zone in layout.PARTITIONED:
        for dataset, tenant, tdir in layout.tenant_dirs(layout.zone_root(settings, zone)):
            if (tenants and tenant not in tenants) or (datasets and dataset not in datasets):
                continue
            if tenant not in busy:
                # one rewriter per tenant (lake.leases): a rights run that planned before a swap
                # and rewrote after it would bring its rows back; a killed ingest's rerun too
                busy[tenant] = not leases.hold_now(stack, settings, [f"rewrite:{tenant}"], holder) \
                    or writers_active(settings, tenant)
                if busy[tenant]:
                    log.warning("compaction: tenant %s skipped, an ingest or a rights run is in progress",
                                tenant)
                    summary["tenants_busy"] += 1
            if busy[tenant]:
                continue
            for partition in layout.date_partitions(tdir):
                unit = Unit(zone, dataset, tenant, partition.day)
                files = _files(partition.path)
                if not files or not _needs_compaction(unit, files, target_rows):
                    continue
                try:
                    done = _compact_unit(settings, unit, files, target_rows)
                except CompactionConflict as exc:
                    log.warning("%s", exc)
                    summary["conflicts"] += 1
                    continue
                summary["partitions"] += 1
                for key in ("files_in", "files_out", "rows"):
                    summary[key] += done[key]
                if on_partition:
                    on_partition(unit)
