"""The landing zone: discover batches, read them against their contract, quarantine.

Layout: ``landing/<dataset>/tenant=<tenant_id>/<batch>.{parquet,csv,jsonl}``.
Files whose names start with ``.`` or ``_`` are in-flight uploads and ignored.
Reading never lets a library error message through (pyarrow quotes the value
it failed to parse); it raises ``ContractViolation`` naming columns instead.
Columns whose contract gives a ``format`` are checked after casting: a value that
does not fit rejects the batch (``format_mismatch``, with counts and row positions).
Landing files are kept for ``PSEUDOZONE_LANDING_RETENTION_DAYS`` after ingestion and
quarantined ones for ``PSEUDOZONE_QUARANTINE_RETENTION_DAYS`` (the nightly run deletes
them; docs/adr/0011-landing-retention.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from upath import UPath

from pseudozone import contracts, zones
from pseudozone.config import TENANT_RE, Settings
from pseudozone.contracts import TENANT_COLUMN, Contract
from pseudozone.errors import ConfigError, ContractError, ContractViolation
from pseudozone.lake import layout

MAX_ROWS_REPORTED = 20  # row and column positions listed in a reason
log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
SETTLE_ENV = "PSEUDOZONE_LANDING_SETTLE_SECONDS"
DEFAULT_SETTLE_SECONDS = 0.0

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


@dataclass(frozen=True)
class BatchRef:
    """A landing file to ingest.  Only ids and paths: safe for XCom and logs."""

    batch_id: str
    dataset: str
    tenant_id: str
    path: str  # relative to the landing zone

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BatchRef:
        return cls(**{k: str(raw[k]) for k in ("batch_id", "dataset", "tenant_id", "path")})


class ColumnViolation(ContractViolation):
    """A violation found in a landing file's column names (its header line or its keys).

    A name the contract does not know may be data (a CSV without a header line makes
    its first row the names; a JSON key can be an email), so the reason gives how many
    and where (0-based positions in the file's column order, the first
    ``MAX_ROWS_REPORTED``), never the name.  ``columns`` only ever holds contract names.
    """

    def __init__(self, code: str, detail: str, *, count: int, positions: list[int],
                 columns: list[str] | None = None, rows_at: list[int] | None = None) -> None:
        super().__init__(code, detail, columns=columns, rows_at=rows_at)
        self.count = count
        self.positions = positions[:MAX_ROWS_REPORTED]

    def to_reason(self) -> dict[str, Any]:
        return {**super().to_reason(), "count": self.count, "positions": self.positions}


def batch_id_for(dataset: str, tenant: str, filename: str) -> str:
    stem = Path(filename).stem
    return _UNSAFE.sub("_", f"{dataset}.{tenant}.{stem}")


def _tenant_of(dirname: str) -> str | None:
    if not dirname.startswith("tenant="):
        return None
    tenant = dirname.removeprefix("tenant=")
    return tenant if TENANT_RE.match(tenant) else None


def fingerprint(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of the landing entry itself: a symbolic link is not followed."""
    st = path.lstat()
    return st.st_size, st.st_mtime_ns


def _real_inside(landing: Path, path: Path) -> bool:
    """Whether ``path`` is where it says it is: no component of it under ``landing`` is a
    symbolic link, so it resolves inside the landing zone."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(landing))
    if rel == os.curdir:
        return True
    if rel.startswith(os.pardir):
        return False
    return os.path.realpath(path) == os.path.join(os.path.realpath(landing), rel)


def discover(settings: Settings, done: dict[str, tuple[int, int] | None] | None = None, *,
             settle: float | None = None) -> list[BatchRef]:
    """Every landing file not yet ingested, in a stable order.

    ``done`` maps finished batch ids to their landing file's (size, mtime_ns); a
    finished batch whose file no longer matches is listed again, so that
    ``process_batch`` can tell an identical rewrite from a changed delivery.

    Only complete files are listed: in a tenant folder that holds a ``_SUCCESS`` marker,
    the files no newer than the marker; elsewhere, files whose mtime and ctime are at least
    ``settle`` seconds old (default ``PSEUDOZONE_LANDING_SETTLE_SECONDS``).

    A dataset or tenant folder that is a symbolic link is skipped with a warning and never
    read.  A file that is a symbolic link is listed (whatever it points to, even nothing):
    reading it is refused (``symlink``), so it is quarantined with a reason.
    """
    done = done or {}
    refs: list[BatchRef] = []
    if not settings.landing.exists():
        return refs
    landing = settings.landing

    def folders(parent: Path) -> list[Path]:
        out = []
        for entry in sorted(parent.iterdir()):
            if entry.name[:1] in "._":
                continue
            if entry.is_symlink() or (entry.is_dir() and not _real_inside(landing, entry)):
                log.warning("landing folder %s is a symbolic link (or resolves outside the landing"
                            " zone): skipped, nothing under it is read", entry.relative_to(landing))
                continue
            if entry.is_dir():
                out.append(entry)
        return out

    settle_ns = int((settle_seconds() if settle is None else settle) * 1e9)
    now = time.time_ns()
    waiting = 0
    for dataset_dir in folders(landing):
        for tenant_dir in folders(dataset_dir):
            tenant = _tenant_of(tenant_dir.name) or _UNSAFE.sub("_", tenant_dir.name)
            marker = _marker_time(tenant_dir)
            for f in sorted(tenant_dir.iterdir()):
                if f.name[:1] in "._" or not (f.is_symlink() or f.is_file()):
                    continue
                if not _complete(f, marker, settle_ns, now):
                    waiting += 1
                    continue
                ref = BatchRef(batch_id=batch_id_for(dataset_dir.name, tenant, f.name),
                               dataset=dataset_dir.name, tenant_id=tenant,
                               path=str(f.relative_to(landing)))
                if ref.batch_id not in done or done[ref.batch_id] != fingerprint(f):
                    refs.append(ref)
    if waiting:
        log.info("%d landing file(s) not complete yet (changed in the last %g s, or newer than their"
                 " folder's %s marker): left for a later run", waiting, settle_ns / 1e9, SUCCESS_MARKER)
    return refs


def settle_seconds() -> float:
    """``PSEUDOZONE_LANDING_SETTLE_SECONDS``: how long a landing file must go unchanged to count as landed."""
    raw = os.environ.get(SETTLE_ENV, "").strip()
    if not raw:
        return DEFAULT_SETTLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{SETTLE_ENV} must be a number of seconds, 0 or more")
    return value


LANDING_RETENTION_ENV = "PSEUDOZONE_LANDING_RETENTION_DAYS"
DEFAULT_LANDING_RETENTION_DAYS = 7
QUARANTINE_RETENTION_ENV = "PSEUDOZONE_QUARANTINE_RETENTION_DAYS"
DEFAULT_QUARANTINE_RETENTION_DAYS = 30


def _days(env: str, default: int) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ConfigError(f"{env} must be a whole number of days, 0 or more")
    return int(raw)


def landing_retention_days() -> int:
    """``PSEUDOZONE_LANDING_RETENTION_DAYS`` (default 7): how long a landing file stays after its
    batch was ingested (0: it goes at the next nightly run)."""
    return _days(LANDING_RETENTION_ENV, DEFAULT_LANDING_RETENTION_DAYS)


def quarantine_retention_days() -> int:
    """``PSEUDOZONE_QUARANTINE_RETENTION_DAYS`` (default 30): how long a quarantined landing file
    (or inbox request) is kept after it was quarantined (0: it goes at the next nightly run)."""
    return _days(QUARANTINE_RETENTION_ENV, DEFAULT_QUARANTINE_RETENTION_DAYS)


def landing_file(settings: Settings, path: Path) -> bool:
    """Whether ``path`` is a landing file pseudozone may read or delete: a regular file (a link is
    not followed), not an in-flight upload, in a folder that resolves inside the landing zone."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return (stat.S_ISREG(st.st_mode) and path.name[:1] not in "._"
            and _real_inside(settings.landing, path.parent))


def landed_files(settings: Settings, tenant: str) -> list[tuple[str, Path]]:
    """(dataset, path) of every landing file of ``tenant`` (``<dataset>/tenant=<tenant>/``), pending
    or ingested, sorted; in-flight uploads, links and folders that are links are left out."""
    if not settings.landing.is_dir() or not TENANT_RE.match(tenant):
        return []
    out: list[tuple[str, Path]] = []
    for dataset_dir in sorted(settings.landing.iterdir()):
        tenant_dir = dataset_dir / f"tenant={tenant}"
        if dataset_dir.name[:1] in "._" or not tenant_dir.is_dir():
            continue
        out += [(dataset_dir.name, f) for f in sorted(tenant_dir.iterdir()) if landing_file(settings, f)]
    return out


def delete_landed(settings: Settings, path: Path) -> bool:
    """Delete a landing file (never through a link, never outside the landing zone); whether it was."""
    if not landing_file(settings, path):
        return False
    path.unlink()
    zones.fsync_dirs({path.parent})
    return True


def _marker_time(folder: Path) -> int | None:
    """The mtime of the folder's ``_SUCCESS`` marker (a regular file, never a link), if any."""
    try:
        st = (folder / SUCCESS_MARKER).lstat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns if stat.S_ISREG(st.st_mode) else None


def _complete(path: Path, marker_ns: int | None, settle_ns: int, now_ns: int) -> bool:
    """Whether a landing file is complete: no newer than its folder's ``_SUCCESS`` marker when
    the folder has one; otherwise unchanged (mtime and ctime) for ``settle_ns``."""
    st = path.lstat()
    if marker_ns is not None:
        return st.st_mtime_ns <= marker_ns
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) >= settle_ns


def sha256_of(path: Path) -> str:
    """The landing file's digest; of a symbolic link (never followed), the digest of its target's name."""
    digest = hashlib.sha256()
    try:
        fh = _open_landed(path)
    except ContractViolation:
        digest.update(b"not a regular file\0" + os.fsencode(os.readlink(path) if path.is_symlink() else ""))
        return digest.hexdigest()
    with fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_landed(path: Path | UPath) -> BinaryIO:
    """Open a landing file for reading without following a symbolic link (``symlink``) and
    only if it is a regular file (a FIFO or a device is ``not_a_regular_file``); a quarantined
    file on object storage is opened as an object."""
    if not isinstance(path, Path):
        fh: BinaryIO = path.open("rb")
        return fh
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if path.is_symlink():
            raise ContractViolation("symlink", "the landing file is a symbolic link; it was not"
                                    " followed nor read (deliver the file itself)") from None
        raise exc from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ContractViolation("not_a_regular_file", "the landing entry is not a regular file;"
                                " it was not read")
    return os.fdopen(fd, "rb")


def _read_raw(path: Path, fmt: str, contract: Contract) -> pa.Table:
    try:
        with _open_landed(path) as fh:
            if fmt == "parquet":
                # ParquetFile, not read_table: the dataset reader refuses a schema with a
                # repeated name, which ``conform`` reports as duplicate_columns instead
                return pq.ParquetFile(fh).read()
            if fmt == "csv":
                convert = pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in contract.names},
                    strings_can_be_null=True, null_values=[""])
                return pacsv.read_csv(fh, convert_options=convert)
            return pajson.read_json(fh)
    except pa.ArrowInvalid as exc:
        twice = _JSON_KEY_TWICE.search(str(exc)) if fmt == "jsonl" else None
        if twice is not None:
            # the key is in the message; only the row number is kept
            raise ColumnViolation("duplicate_columns", "a JSON object names the same key twice",
                                  count=1, positions=[], rows_at=[int(twice.group(1))]) from None
        raise _unreadable(fmt, exc) from None
    except (pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError) as exc:
        raise _unreadable(fmt, exc) from None


_JSON_KEY_TWICE = re.compile(r"was specified twice in row (\d+)")


def _unreadable(fmt: str, exc: Exception) -> ContractViolation:
    return ContractViolation("unreadable", f"the {fmt} file could not be parsed ({type(exc).__name__})")


def _to_timestamp(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    target = ARROW_TYPES["timestamp"]
    if pa.types.is_timestamp(arr.type):
        if arr.type.tz is None:
            return pc.assume_timezone(arr.cast(pa.timestamp("us")), "UTC")
        return arr.cast(target)
    if pa.types.is_date(arr.type):
        return pc.assume_timezone(arr.cast(pa.timestamp("us")), "UTC")
    try:
        return arr.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # some or all texts lack a zone offset: the platform's exports are UTC
    text = pc.utf8_trim_whitespace(arr)
    has_offset = pc.fill_null(pc.match_substring_regex(text, r"(?:Z|[+-]\d{2}:?\d{2})$"), False)
    null_text = pa.scalar(None, pa.string())
    aware = pc.if_else(has_offset, text, null_text).cast(target)
    naive = pc.assume_timezone(pc.if_else(has_offset, null_text, text).cast(pa.timestamp("us")), "UTC")
    return pc.coalesce(aware, naive)


def _cast(arr: pa.ChunkedArray, type_name: str) -> pa.ChunkedArray:
    if type_name == "timestamp":
        return _to_timestamp(arr)
    target = ARROW_TYPES[type_name]
    if arr.type == target:
        return arr
    if type_name == "string" and pa.types.is_large_string(arr.type):
        return arr.cast(target)
    if type_name == "string" and not (pa.types.is_integer(arr.type) or pa.types.is_string(arr.type)
                                      or pa.types.is_null(arr.type)):
        # a float, struct or list where text was promised is a type error, not a cast
        raise pa.ArrowInvalid("type")
    if type_name == "bool" and pa.types.is_string(arr.type):
        arr = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    if type_name in ("int64", "float64") and pa.types.is_string(arr.type):
        arr = pc.utf8_trim_whitespace(arr)
    return arr.cast(target)


def _normalize_identifier(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    trimmed = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)



def _check_formats(columns: dict[str, pa.ChunkedArray], contract: Contract) -> None:
    """Every non-null value of a column with a ``format`` must fit it, or the batch is rejected.

    The reason names the columns, their formats, counts and the first row positions;
    never a value.
    """
    details: list[dict[str, Any]] = []
    any_misfit: pa.Array | None = None
    total = 0
    for spec in contract.columns:
        pattern = spec.format_regex
        if pattern is None or spec.format is None:
            continue
        col = columns[spec.name]
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        misfit = pc.invert(pc.fill_null(pc.match_substring_regex(arr, pattern), True))
        count = int(pc.sum(misfit).as_py() or 0)
        if not count:
            continue
        total += count
        any_misfit = misfit if any_misfit is None else pc.or_(any_misfit, misfit)
        first = pc.indices_nonzero(misfit)[:MAX_ROWS_REPORTED].to_pylist()
        details.append({"column": spec.name, "format": spec.format.label, "rows": count,
                        "rows_at": first})
    if any_misfit is None:
        return
    rows_at = pc.indices_nonzero(any_misfit)[:MAX_ROWS_REPORTED].to_pylist()
    raise ContractViolation("format_mismatch", f"{total} value(s) do not fit their contract format",
                            columns=[d["column"] for d in details],
                            rows=int(pc.sum(any_misfit).as_py() or 0), rows_at=rows_at, details=details)


def _check_names(names: list[str], contract: Contract, fmt: str | None) -> None:
    """Reject a header that names no contract column, repeats a name, or names unknown columns.

    Unknown names are treated as data: reasons carry counts and positions only.
    """
    known = set(contract.names)
    if fmt == "csv" and names and not known.intersection(names):
        raise ColumnViolation(
            "missing_header", f"none of the {len(names)} column name(s) is in the {contract.dataset}"
            " contract: the file has no header line (a CSV's first line must name its columns)"
            " or is not of this dataset", count=len(names), positions=list(range(len(names))))
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    repeated = [i for i, name in enumerate(names) if seen[name] > 1]
    if repeated:
        twice = {names[i] for i in repeated}
        raise ColumnViolation(
            "duplicate_columns", f"{len(twice)} column name(s) appear more than once",
            count=len(twice), positions=repeated, columns=sorted(twice & known))
    unknown = [i for i, name in enumerate(names) if name not in known]
    if unknown:
        raise ColumnViolation(
            "unknown_columns", f"{len(unknown)} column(s) not in the {contract.dataset} contract"
            " (names not shown: they may be data)", count=len(unknown), positions=unknown)


def conform(table: pa.Table, contract: Contract, tenant: str, *, fmt: str | None = None) -> pa.Table:
    """Check ``table`` against ``contract`` and return it typed, in contract order.

    ``fmt`` is the landing file's format: a CSV whose first line names no contract
    column is reported as ``missing_header``.
    """
    _check_names(table.column_names, contract, fmt)
    present = set(table.column_names)
    missing = sorted(c.name for c in contract.columns if c.required and c.name not in present)
    if missing:
        raise ContractViolation("missing_columns", f"{len(missing)} required column(s) absent",
                                columns=missing)
    out: dict[str, pa.ChunkedArray] = {}
    wrong: list[str] = []
    for spec in contract.columns:
        if spec.name not in present:
            out[spec.name] = pa.chunked_array([pa.nulls(table.num_rows, ARROW_TYPES[spec.type])])
            continue
        try:
            col = _cast(table[spec.name], spec.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            wrong.append(spec.name)
            continue
        if spec.cls == "identifier":
            col = _normalize_identifier(col)
        out[spec.name] = col
    if wrong:
        raise ContractViolation("wrong_type", f"{len(wrong)} column(s) do not fit their contract type",
                                columns=wrong)
    nulls = [s.name for s in contract.columns if not s.nullable and out[s.name].null_count]
    if nulls:
        rows = max(out[n].null_count for n in nulls)
        raise ContractViolation("null_values", "required value(s) missing", columns=nulls, rows=rows)
    mismatched = int(pc.sum(pc.not_equal(out[TENANT_COLUMN], tenant)).as_py() or 0)
    if mismatched:
        raise ContractViolation("tenant_mismatch",
                                "rows whose tenant_id differs from the landing folder's tenant",
                                columns=[TENANT_COLUMN], rows=mismatched)
    # identifiers are checked as normalized above (trimmed; blank is null)
    _check_formats(out, contract)
    return pa.table(out)


def read_batch(settings: Settings, ref: BatchRef) -> tuple[pa.Table, Contract]:
    """Read and conform a landing file, or raise ``ContractViolation``."""
    if _tenant_of(Path(ref.path).parent.name) is None:
        raise ContractViolation("bad_tenant_folder",
                                "landing folder must be named tenant=<id> (letters, digits, _.-)")
    try:
        contract = contracts.load(ref.dataset)
    except ContractError:
        raise ContractViolation("unknown_dataset",
                                f"no contract for dataset {ref.dataset!r}") from None
    path = settings.landing / ref.path
    if not _real_inside(settings.landing, path.parent):
        raise ContractViolation("outside_landing", "the landing file's folder is a symbolic link or"
                                " resolves outside the landing zone; the file was not read")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ContractViolation("unsupported_format",
                                f"file type {path.suffix!r} is not one of {sorted(FORMATS)}")
    return conform(_read_raw(path, fmt, contract), contract, ref.tenant_id, fmt=fmt), contract


def quarantine(settings: Settings, ref: BatchRef, reason: dict[str, Any]) -> UPath:
    """Move the landing file into quarantine beside a machine-readable reason.

    A symbolic link is moved as a link on a local quarantine; a quarantine on object storage
    holds no links, so the link is removed and its reason says so (its target was never ours)."""
    src = settings.landing / ref.path
    target_dir = zones.make_dirs(layout.quarantine_dir(settings, ref.dataset, ref.tenant_id))
    target = target_dir / src.name
    n = 1
    while target.exists():
        target = target_dir / f"{src.stem}.{n}{src.suffix}"
        n += 1
    link_removed = zones.is_remote(target) and src.is_symlink()
    zones.write_json({"batch_id": ref.batch_id, "dataset": ref.dataset, "tenant_id": ref.tenant_id,
                      "source": ref.path, **reason, **({"link_removed": True} if link_removed else {})},
                     layout.reason_file(target))
    # a link is moved as a link (never followed); a file under a folder that resolves
    # elsewhere is not ours to move
    if os.path.lexists(src) and _real_inside(settings.landing, src.parent):
        if link_removed:
            src.unlink()
        elif src.is_symlink() and isinstance(target, Path):
            os.replace(src, target)  # chmod would follow it
        else:
            zones.publish(src, target)  # the quarantine's mode (0600) at once, not at the next run
    return target
