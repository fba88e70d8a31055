"""Erasure of a subject from the landing zone and the quarantine (docs/adr/0011-landing-retention.md).

The zones hold a subject pseudonymized; the raw files it came from hold it in the
clear.  When an erasure completes, every landing file of the tenant (ingested or
still pending) and every quarantined file is searched for the subject, by the raw
user id the request carried and by the searchable values (email, name, phone, street;
``pseudozone.pii.tenant.searchable``) that the subject's own landing rows hold:

- an ingested landing file (its batch ``done`` in the ledger, same SHA-256) is deleted:
  the ledger keeps ingestion exactly-once, so the same file landing again is skipped;
- a pending landing file (not ingested yet, or changed since) is rewritten without the
  subject's rows (Parquet, CSV, JSON lines), keeping its mode and mtime; an unparseable
  one that mentions the subject is deleted (ingest would have quarantined it);
- a quarantined landing file and an unreadable inbox request that mention the subject
  are deleted with their reason file.

A row is the subject's when its subject column is the user id, when any of its cells
names the user id or one of the subject's email addresses (as a whole word, any case),
or when it has no subject of its own and a cell names one of the subject's other values.
Every file deleted or rewritten is audited (dataset, batch id, counts; never a value).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from upath import UPath

from pseudozone import contracts, ledger, state, zones
from pseudozone.config import Settings
from pseudozone.errors import ContractError, ContractViolation
from pseudozone.keys import KeyRing
from pseudozone.lake import layout
from pseudozone.landing import (
    FORMATS,
    _open_landed,
    batch_id_for,
    delete_landed,
    fingerprint,
    landed_files,
    sha256_of,
)
from pseudozone.pii.tenant import searchable
from pseudozone.rights import audit, store
from pseudozone.zones import AnyPath

DEFAULT_SUBJECT_COLUMN = "user_id"
MIN_VALUE_LENGTH = 5  # shorter values are not searched for in other rows' text
_BLOCK = 1 << 20
_WORD = "A-Za-z0-9_"


def _re2_escape(text: str) -> str:
    return "".join("\\" + ch if ch.isascii() and not ch.isalnum() and ch not in " _" else ch for ch in text)


@dataclass
class Needles:
    """What identifies one subject in raw files: its user id and searchable values."""

    user_id: str
    strong: set[str] = field(default_factory=set)  # the user id and email addresses
    weak: set[str] = field(default_factory=set)  # names, phones, streets

    def __post_init__(self) -> None:
        self.strong.add(self.user_id)

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_VALUE_LENGTH:
            return
        (self.strong if "@" in value else self.weak).add(value)

    def _alternatives(self, values: Iterable[str], escape: Any) -> str:
        return "|".join(escape(v) for v in sorted(values, key=lambda v: (-len(v), v)))

    def re2(self, weak: bool) -> str | None:
        values = self.weak if weak else self.strong
        if not values:
            return None
        return f"(?i)(?:^|[^{_WORD}])(?:{self._alternatives(values, _re2_escape)})(?:[^{_WORD}]|$)"

    def python(self, weak: bool) -> re.Pattern[str] | None:
        values = self.weak if weak else self.strong
        if not values:
            return None
        return re.compile(f"(?i)(?<![{_WORD}])(?:{self._alternatives(values, re.escape)})(?![{_WORD}])")

    def bytes_pattern(self) -> re.Pattern[bytes]:
        alternatives = b"|".join(re.escape(v.encode()) for v in sorted(self.strong | self.weak,
                                                                          key=lambda v: (-len(v), v)))
        return re.compile(rb"(?i)(?<![A-Za-z0-9_])(?:" + alternatives + rb")(?![A-Za-z0-9_])")

    @property
    def longest(self) -> int:
        return max(len(v.encode()) for v in self.strong | self.weak)


# -- reading raw files --------------------------------------------------------------------------


class _Unparseable(Exception):
    """The file could not be read as its format (no message: it may quote a value)."""


@dataclass
class _Parsed:
    """A raw file and, per row, whether it is the subject's."""

    fmt: str
    mask: list[bool]
    table: pa.Table | None = None  # parquet
    header: list[str] | None = None  # csv
    rows: list[list[str]] | None = None  # csv
    lines: list[bytes] | None = None  # jsonl, each with its line ending
    values: set[str] = field(default_factory=set)  # the subject's searchable values found

    @property
    def hits(self) -> int:
        return sum(self.mask)


def _subject_column(dataset: str) -> tuple[str, list[str]]:
    """The dataset's subject column and its searchable value columns (a dataset without a
    contract: ``user_id`` and none)."""
    try:
        contract = contracts.load(dataset)
    except ContractError:
        return DEFAULT_SUBJECT_COLUMN, []
    return contract.subject.name, [c.name for c in contract.columns if searchable(c) and not c.subject]


def _read_bytes(path: AnyPath) -> bytes:
    try:
        with _open_landed(path) as fh:
            return fh.read()
    except ContractViolation:
        raise _Unparseable from None


def _text_cells(table: pa.Table) -> list[pa.Array]:
    out = []
    for col in table.columns:
        arr = col.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            out.append(arr.cast(pa.string()))
        elif (pa.types.is_nested(arr.type) or pa.types.is_binary(arr.type)
              or pa.types.is_large_binary(arr.type)):
            out.append(pa.array([None if v is None else json.dumps(v, default=_text, ensure_ascii=False)
                                 for v in arr.to_pylist()], pa.string()))
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _subject_matches(col: pa.Array, user_id: str) -> tuple[pa.Array, pa.Array] | None:
    """(rows whose subject is ``user_id``, rows without a subject) of a subject column; None
    when it holds no text."""
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return None
    trimmed = pc.utf8_trim_whitespace(col.cast(pa.string()))
    return pc.fill_null(pc.equal(trimmed, user_id), False), pc.fill_null(pc.equal(trimmed, ""), True)


def _has_own_rows(path: AnyPath, dataset: str, needles: Needles) -> bool:
    """Whether a Parquet file has a row whose subject column is the user id, read from that
    column alone: enough to delete an ingested file without searching its text.  False when
    that cannot tell (another format, no such column, unreadable): the full search decides."""
    if FORMATS.get(path.suffix.lower()) != "parquet":
        return False
    subject, _ = _subject_column(dataset)
    try:
        with _open_landed(path) as fh:
            parquet = pq.ParquetFile(fh)
            if subject not in parquet.schema_arrow.names:
                return False
            found = _subject_matches(parquet.read(columns=[subject])[subject].combine_chunks(),
                                     needles.user_id)
    except (ContractViolation, pa.ArrowException, OSError):
        return False
    return found is not None and bool(pc.any(found[0]).as_py())


def _own_values(path: AnyPath, dataset: str, needles: Needles) -> set[str]:
    """The searchable values of the subject's own rows; a Parquet file reads just the subject
    and value columns, other formats are parsed whole.  ``_Unparseable`` when unreadable."""
    subject, columns = _subject_column(dataset)
    if FORMATS.get(path.suffix.lower()) != "parquet":
        return _parse(path, dataset, needles).values
    try:
        with _open_landed(path) as fh:
            parquet = pq.ParquetFile(fh)
            names = set(parquet.schema_arrow.names)
            if subject not in names:
                return set()
            table = parquet.read(columns=[subject, *(c for c in columns if c in names)])
    except (ContractViolation, pa.ArrowException, OSError):
        raise _Unparseable from None
    found = _subject_matches(table[subject].combine_chunks(), needles.user_id)
    if found is None:
        return set()
    own_rows = table.filter(found[0])
    return {v for name in columns if name in own_rows.column_names
            for v in own_rows[name].to_pylist() if isinstance(v, str)}


def _parse_parquet(path: AnyPath, needles: Needles, subject: str, columns: list[str]) -> _Parsed:
    try:
        with _open_landed(path) as fh:
            table = pq.ParquetFile(fh).read()
    except (ContractViolation, pa.ArrowException, OSError):
        raise _Unparseable from None
    n = table.num_rows
    if not n:
        return _Parsed("parquet", [], table=table)
    own = pa.array([False] * n, pa.bool_())
    no_subject = pa.array([True] * n, pa.bool_())
    if subject in table.column_names:
        found = _subject_matches(table[subject].combine_chunks(), needles.user_id)
        if found is not None:
            own, no_subject = found
    cells = _text_cells(table)
    mask = own
    for weak, pattern in ((False, needles.re2(False)), (True, needles.re2(True))):
        if pattern is None:
            continue
        for arr in cells:
            hit = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
            mask = pc.or_(mask, pc.and_(no_subject, hit) if weak else hit)
    values: set[str] = set()
    if columns:
        own_rows = table.filter(own)
        for name in columns:
            if name in own_rows.column_names:
                values |= {v for v in own_rows[name].to_pylist() if isinstance(v, str)}
    return _Parsed("parquet", mask.to_pylist(), table=table, values=values)


def _row_mask(cells: list[str], own: bool, has_subject: bool, strong: re.Pattern[str] | None,
              weak: re.Pattern[str] | None) -> bool:
    if own:
        return True
    text = "\x1f".join(cells)
    if strong is not None and strong.search(text):
        return True
    return not has_subject and weak is not None and bool(weak.search(text))


def _parse_csv(path: AnyPath, needles: Needles, subject: str, columns: list[str]) -> _Parsed:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except (UnicodeDecodeError, csv.Error):
        raise _Unparseable from None
    if not rows:
        return _Parsed("csv", [], header=[], rows=[])
    header, body = rows[0], rows[1:]
    at = header.index(subject) if subject in header else None
    value_at = [header.index(c) for c in columns if c in header]
    strong, weak = needles.python(False), needles.python(True)
    mask: list[bool] = []
    values: set[str] = set()
    for row in body:
        mine = at is not None and at < len(row) and row[at].strip() == needles.user_id
        has_subject = at is not None and at < len(row) and bool(row[at].strip())
        mask.append(_row_mask(row, mine, has_subject, strong, weak))
        if mine:
            values |= {row[i] for i in value_at if i < len(row)}
    if strong is not None and strong.search("\x1f".join(header)):
        raise _Unparseable  # the header line itself names the subject: not a file to keep
    return _Parsed("csv", mask, header=header, rows=body, values=values)


def _parse_jsonl(path: AnyPath, needles: Needles, subject: str, columns: list[str]) -> _Parsed:
    data = _read_bytes(path)
    lines = data.splitlines(keepends=True)
    strong, weak = needles.python(False), needles.python(True)
    mask: list[bool] = []
    values: set[str] = set()
    for line in lines:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unparseable from None
        if not text.strip():
            mask.append(False)
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            raise _Unparseable from None
        if not isinstance(obj, dict):
            raise _Unparseable
        raw = obj.get(subject)
        mine = isinstance(raw, str) and raw.strip() == needles.user_id
        has_subject = isinstance(raw, str | int) and bool(str(raw).strip())
        # the line as written and as decoded (a \\u escape hides nothing)
        mask.append(_row_mask([text, json.dumps(obj, ensure_ascii=False)], mine, has_subject, strong, weak))
        if mine:
            values |= {obj[c] for c in columns if isinstance(obj.get(c), str)}
    return _Parsed("jsonl", mask, lines=lines, values=values)


def _parse(path: AnyPath, dataset: str, needles: Needles) -> _Parsed:
    """The file read in its format, with the rows of the subject; ``_Unparseable`` otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    subject, columns = _subject_column(dataset)
    if fmt == "parquet":
        return _parse_parquet(path, needles, subject, columns)
    if fmt == "csv":
        return _parse_csv(path, needles, subject, columns)
    if fmt == "jsonl":
        return _parse_jsonl(path, needles, subject, columns)
    raise _Unparseable


def _mentions(path: AnyPath, pattern: re.Pattern[bytes], overlap: int) -> bool:
    """Whether the file's bytes name the subject (read in blocks; a link is never followed)."""
    try:
        fh = _open_landed(path)
    except (ContractViolation, OSError):
        return False
    tail = b""
    with fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            chunk = tail + block
            if pattern.search(chunk):
                return True
            tail = chunk[-(overlap + 2):]
    return False


def _without(parsed: _Parsed) -> bytes | pa.Table:
    keep = [not m for m in parsed.mask]
    if parsed.fmt == "parquet":
        assert parsed.table is not None
        return parsed.table.filter(pa.array(keep, pa.bool_()))
    if parsed.fmt == "csv":
        assert parsed.header is not None and parsed.rows is not None
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(parsed.header)
        writer.writerows(r for r, k in zip(parsed.rows, keep, strict=True) if k)
        return buf.getvalue().encode("utf-8")
    assert parsed.lines is not None
    return b"".join(line for line, k in zip(parsed.lines, keep, strict=True) if k)


def _rewrite(path: Path, content: bytes | pa.Table) -> None:
    """Replace a pending landing file atomically, with its mode and mtime (a ``_SUCCESS`` marker
    still covers it; the ledger has no entry for it yet)."""
    st = path.lstat()
    tmp = zones.temp_path(path)
    try:
        if isinstance(content, pa.Table):
            pq.write_table(content, tmp)
        else:
            tmp.write_bytes(content)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, st.st_mode & 0o7777)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    zones.fsync_dirs({path.parent})


# -- the erasure ----------------------------------------------------------------------------


def _ingested(settings: Settings, dataset: str, tenant: str, path: Path) -> bool:
    """Whether the landing file is a batch the ledger has as done, with the same content."""
    batch_id = batch_id_for(dataset, tenant, path.name)
    if not state.exists(settings):
        return False
    with state.connect(settings) as conn:
        entry = ledger.get(conn, batch_id)
    if entry is None or entry.status != "done":
        return False
    return entry.fingerprint == fingerprint(path) or sha256_of(path) == entry.sha256


def _inside(root: Path, path: Path) -> bool:
    real_root = os.path.realpath(root)
    return os.path.commonpath([real_root, os.path.realpath(path.parent)]) == real_root


def erase_subject(settings: Settings, *, tenant: str, user_id: str, request_id: str, subject_id: str,
                  keyring: KeyRing | None = None) -> dict[str, int]:
    """Delete or rewrite every landing and quarantined file that holds the subject; audited.

    Returns counts for the request's outcome (``landing_files_deleted``,
    ``landing_files_rewritten``, ``landing_rows_removed``, ``quarantine_files_deleted``).
    """
    needles = Needles(user_id.strip())
    landed = landed_files(settings, tenant)
    quarantined = [(d, p) for d, _, p in layout.quarantined_files(settings, tenant)]
    # the subject's own rows (in the datasets with PII columns) name its values: found first,
    # then every file is searched for all of them
    searched: list[tuple[str, AnyPath]] = [*landed, *quarantined]
    for dataset, path in searched:
        if not _subject_column(dataset)[1]:
            continue
        try:
            values = _own_values(path, dataset, needles)
        except _Unparseable:
            continue
        for value in values:
            needles.add(value)
    pattern, overlap = needles.bytes_pattern(), needles.longest
    counts = {"landing_files_deleted": 0, "landing_files_rewritten": 0, "landing_rows_removed": 0,
              "quarantine_files_deleted": 0}

    def entry(action: str, details: dict[str, Any]) -> None:
        with store.transaction(settings) as conn:
            audit.append(conn, action, request_id=request_id, tenant_id=tenant, subject_id=subject_id,
                         details=details, keyring=keyring)

    for dataset, path in landed:
        batch_id = batch_id_for(dataset, tenant, path.name)
        details: dict[str, Any] = {"dataset": dataset, "batch_id": batch_id, "where": "landing"}
        ingested = _ingested(settings, dataset, tenant, path)
        if ingested and _has_own_rows(path, dataset, needles):
            # deleted whole: its subject column says enough, its text need not be searched
            entry("landing.erased", {**details, "action": "deleted", "batch": "ingested"})
            if delete_landed(settings, path):
                counts["landing_files_deleted"] += 1
            continue
        try:
            rows: _Parsed | None = _parse(path, dataset, needles)
        except _Unparseable:
            rows = None
        if ingested:
            if (rows is not None and rows.hits) or _mentions(path, pattern, overlap):
                entry("landing.erased", {**details, "action": "deleted", "batch": "ingested"})
                if delete_landed(settings, path):
                    counts["landing_files_deleted"] += 1
            continue
        if rows is None:
            if _mentions(path, pattern, overlap):
                entry("landing.erased", {**details, "action": "deleted", "batch": "pending",
                                         "reason": "unparseable"})
                if delete_landed(settings, path):
                    counts["landing_files_deleted"] += 1
            continue
        if not rows.hits:
            continue
        if rows.hits == len(rows.mask):
            entry("landing.erased", {**details, "action": "deleted", "batch": "pending",
                                     "rows_removed": rows.hits})
            if delete_landed(settings, path):
                counts["landing_files_deleted"] += 1
                counts["landing_rows_removed"] += rows.hits
            continue
        entry("landing.erased", {**details, "action": "rewritten", "batch": "pending",
                                 "rows_removed": rows.hits, "rows_kept": len(rows.mask) - rows.hits})
        _rewrite(path, _without(rows))
        counts["landing_files_rewritten"] += 1
        counts["landing_rows_removed"] += rows.hits
    for dataset, path in quarantined:
        try:
            rows = _parse(path, dataset, needles)
        except _Unparseable:
            rows = None
        if not ((rows is not None and rows.hits) or _mentions(path, pattern, overlap)):
            continue
        if _delete_quarantined(settings, path, entry, {"dataset": dataset, "where": "quarantine"}):
            counts["quarantine_files_deleted"] += 1
    for path in layout.quarantined_requests(settings):
        if _mentions(path, pattern, overlap) and _delete_quarantined(
                settings, path, entry, {"dataset": None, "where": "request_quarantine"}):
            counts["quarantine_files_deleted"] += 1
    return counts


def reason_code(path: UPath) -> str | None:
    """The ``code`` of a quarantined file's reason (a code, never a value), if it has one."""
    reason = layout.reason_file(path)
    try:
        code = json.loads(reason.read_text(encoding="utf-8")).get("code")
    except (OSError, ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None


def delete_quarantined(settings: Settings, path: UPath) -> bool:
    """Delete a quarantined file and its reason (never through a link, never outside the quarantine)."""
    if not isinstance(path, Path):
        try:
            layout.relative(path, settings.quarantine)
        except ValueError:
            return False
        zones.remove(layout.reason_file(path))
        return zones.remove(path)
    if not _inside(Path(str(settings.quarantine)), path) or not os.path.lexists(path):
        return False
    path.unlink()
    layout.reason_file(path).unlink(missing_ok=True)
    zones.fsync_dirs({path.parent})
    return True


def _delete_quarantined(settings: Settings, path: UPath, entry: Any, details: dict[str, Any]) -> bool:
    entry("quarantine.erased", {**details, "file": path.name, "reason_code": reason_code(path),
                                "action": "deleted"})
    return delete_quarantined(settings, path)
