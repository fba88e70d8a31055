"""Dataset contracts: one YAML file per dataset classifies every column.

The contract is the allow-list of a dataset.  A batch with a column the
contract does not know, without a required column, or with a value that does
not fit a column's type is rejected whole (see ``pseudozone.ingest``).

A ``keep`` or ``identifier`` string column may declare a ``format`` (see
``FormatSpec``): an allow-list its every value must fit, checked at ingest; a value
that does not fit rejects the batch.  In the event zone a formatted ``keep`` column
is validated by its format instead of being scanned for PII forms.

A ``keep`` string column marked ``linkable: true`` is an id the source system shares
with the outside (an event id, a request id, a session id): the event zone holds its
keyed per-tenant pseudonym instead of the value, so that it cannot be joined to the
tenant's own copy of the data, while columns of one name still join across the
tenant's datasets.  A ``timestamp`` column keeps the ``precision`` its contract names
(``second`` unless told): the event zone holds the value truncated to it.  Ids inside a
``free_text`` column are replaced by keyed tokens unless it says ``tokenize_ids: false``
(``pseudozone.linkage``).  A contract's
``unique_key`` names a column whose value identifies a row: rows whose key a tenant's
earlier batch already published are dropped at ingest and counted
(docs/adr/0010-linkage.md).

Adding a dataset means adding ``<dataset>.yaml`` here, or in the directory
named by ``PSEUDOZONE_CONTRACTS_DIR``.
"""

from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pseudozone.errors import ContractError

CONTRACTS_DIR_ENV = "PSEUDOZONE_CONTRACTS_DIR"
PACKAGE_DIR = Path(__file__).resolve().parent

CLASSES = ("identifier", "pii", "quasi", "free_text", "keep", "drop")
TYPES = ("string", "int64", "float64", "bool", "timestamp", "date")
GENERALIZERS = ("ip_prefix", "year", "prefix", "significant")
TENANT_COLUMN = "tenant_id"
SUBJECT_COLUMN = "subject_id"
# the purposes data is used for, and what each rests on (docs/adr/0013-consent-and-objection.md):
# 'consent': only subjects whose latest delivered consent column says yes, and who did not object;
# 'objection': every subject but those who objected (GDPR art. 21; an opt-out)
PURPOSES = {"marketing": "consent", "analytics": "objection", "third_party": "objection"}
COOKIE_COLUMN = "anonymous_pid"  # the event-zone column of the cookie pseudonym (docs/adr/0008)
DATE_PARTITION = "date"
FORMAT_CLASSES = ("keep", "identifier")
NAMED_FORMATS = ("uuid", "hex", "ulid", "integer")
FORMAT_KINDS = (*NAMED_FORMATS, "enum", "regex")
MAX_REPEAT = 1000  # RE2's largest repetition count
# a timestamp column's precision in the event zone, coarsest last (docs/adr/0010-linkage.md)
PRECISIONS = ("microsecond", "millisecond", "second", "minute", "hour", "day")
DEFAULT_PRECISION = "second"
LINK_PURPOSE = "link:"

_HEX = "[0-9a-fA-F]"
_NAMED_RE = {
    "uuid": f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}",
    # Crockford base32 (no I, L, O, U), either case; a 128-bit ULID starts with 0-7
    "ulid": "[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}",
    "integer": "-?[0-9]+",
}
_PUNCTUATION = frozenset(string.punctuation.replace("_", "") + " ")
_LENGTH_KEYS = ("length", "min_length", "max_length")
_FORMAT_KEYS = ("name", "enum", "regex", "prefix", *_LENGTH_KEYS)


def re2_escape(text: str) -> str:
    """``text`` as an RE2 literal: ASCII punctuation and the space backslash-escaped."""
    return "".join("\\" + ch if ch in _PUNCTUATION else ch for ch in text)


@dataclass(frozen=True)
class FormatSpec:
    """What every non-null value of a column must look like (an allow-list).

    ``kind`` is one of ``FORMAT_KINDS``; ``prefix`` (named kinds only) is a literal the
    value starts with; ``min_length``/``max_length`` bound a ``hex``; ``values`` are an
    ``enum``'s; ``pattern`` is a ``regex``'s, matched against the whole value.
    """

    kind: str
    prefix: str = ""
    min_length: int | None = None
    max_length: int | None = None
    values: tuple[str, ...] = ()
    pattern: str | None = None

    @property
    def regex(self) -> str:
        """One anchored RE2 pattern the whole value must match."""
        if self.kind == "enum":
            body = "|".join(re2_escape(v) for v in self.values)
        elif self.kind == "regex":
            body = str(self.pattern)
        elif self.kind == "hex":
            lo = self.min_length or 1
            hi = "" if self.max_length is None else str(self.max_length)
            body = _HEX + ("+" if (lo, hi) == (1, "") else f"{{{lo}}}" if hi == str(lo)
                           else f"{{{lo},{hi}}}")
        else:
            body = _NAMED_RE[self.kind]
        if self.prefix:
            body = re2_escape(self.prefix) + "(?:" + body + ")"
        return "^(?:" + body + ")$"

    @property
    def label(self) -> str:
        """A short name for messages and reasons (never a value, never the pattern)."""
        if self.kind == "enum":
            return f"enum of {len(self.values)}"
        options = []
        if self.prefix:
            options.append(f"prefix {self.prefix!r}")
        if self.min_length is not None and self.min_length == self.max_length:
            options.append(f"length {self.min_length}")
        else:
            if self.min_length is not None:
                options.append(f"min_length {self.min_length}")
            if self.max_length is not None:
                options.append(f"max_length {self.max_length}")
        return self.kind + (f" ({', '.join(options)})" if options else "")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    cls: str
    type: str
    nullable: bool = True
    required: bool = True
    subject: bool = False
    output: str | None = None
    generalize: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    format: FormatSpec | None = None
    # keep columns: the event zone holds the value's keyed pseudonym (purpose ``link_purpose``)
    linkable: bool = False
    # timestamp columns: the event zone holds the value truncated to this unit
    precision: str | None = None
    # free_text columns: id-shaped tokens replaced by keyed tokens (pseudozone.linkage)
    tokenize_ids: bool = True
    # bool keep columns: the subject's consent to this purpose (pseudozone.lake.consent)
    consent: str | None = None

    @property
    def pseudonymized(self) -> bool:
        """Whether the event zone holds this column's keyed pseudonym rather than its value."""
        return self.cls == "identifier" or self.linkable

    @property
    def link_purpose(self) -> str:
        """The keyed-pseudonym purpose of a linkable column: one per column name, so that
        same-named columns of a tenant's datasets still join."""
        return LINK_PURPOSE + self.name

    @property
    def format_regex(self) -> str | None:
        """The anchored RE2 pattern every non-null value must match, if the column has a format."""
        return self.format.regex if self.format is not None else None

    @property
    def event_name(self) -> str | None:
        """The column's name in the event zone, or None if it never goes there."""
        if self.cls in ("pii", "drop") or self.name == TENANT_COLUMN:
            return None
        if self.cls == "identifier" and self.subject:
            return SUBJECT_COLUMN
        return self.output or self.name


@dataclass(frozen=True)
class Contract:
    dataset: str
    version: int
    partition_date_from: str
    columns: tuple[ColumnSpec, ...]
    source: str
    subject_buckets: int = 1
    # event-zone partitions older than this many days are deleted nightly (None: kept)
    retention_days: int | None = None
    # event-zone columns a re-identification attack would use (None: the quasi columns)
    declared_quasi_identifiers: tuple[str, ...] | None = None
    # the column whose value identifies a row: a re-delivered row is dropped at ingest
    unique_key: str | None = None

    @property
    def suite_version(self) -> str:
        """``<dataset>:v<version>:<digest>``: names the expectation suites built from this
        contract; the digest changes with any column rule, even at the same version."""
        digest = hashlib.sha256(repr(self).encode()).hexdigest()[:12]
        return f"{self.dataset}:v{self.version}:{digest}"

    @property
    def unique_key_column(self) -> ColumnSpec | None:
        return None if self.unique_key is None else self.column(self.unique_key)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def of_class(self, cls: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.cls == cls]

    @property
    def subject(self) -> ColumnSpec:
        return next(c for c in self.columns if c.subject)

    @property
    def has_pii(self) -> bool:
        return bool(self.of_class("pii"))

    @property
    def event_columns(self) -> list[str]:
        """Allow-list of the event zone's file columns (Hive partitions excluded)."""
        return [n for c in self.columns if (n := c.event_name) is not None]


def _fail(source: str, message: str) -> ContractError:
    return ContractError(f"contract {source}: {message}")


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPEAT


def _compiles(pattern: str) -> bool:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        # a one-row input: Arrow compiles the pattern only when there is something to match
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _format(source: str, name: str, cls: str, typ: str, raw: Any) -> FormatSpec:
    """Parse a column's ``format:`` (a name, or a mapping with one of name/enum/regex)."""
    def fail(message: str) -> ContractError:
        return _fail(source, f"column {name!r}: {message}")

    if cls not in FORMAT_CLASSES:
        raise fail(f"format is only for {' and '.join(FORMAT_CLASSES)} columns, not {cls}")
    if typ != "string":
        raise fail(f"format needs type string, not {typ}")
    spec = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, dict):
        raise fail("format must be a name or a mapping (name:, enum: or regex:)")
    unknown = sorted(str(k) for k in spec if k not in _FORMAT_KEYS)
    if unknown:
        raise fail(f"format has unknown option(s) {unknown}; expected some of {_FORMAT_KEYS}")
    given = [k for k in ("name", "enum", "regex") if k in spec]
    if len(given) != 1:
        raise fail("format needs exactly one of name:, enum: or regex:")
    kind = given[0]
    prefix = spec.get("prefix", "")
    lengths = {k: spec[k] for k in _LENGTH_KEYS if k in spec}
    if kind == "enum":
        values = spec["enum"]
        if (not isinstance(values, list) or not values
                or not all(isinstance(v, str) and v for v in values)):
            raise fail("format enum must be a non-empty list of non-empty strings (quote values"
                       " YAML reads as numbers or booleans)")
        if len(set(values)) != len(values):
            raise fail("format enum lists a value twice")
        if "prefix" in spec or lengths:
            raise fail("format enum takes no prefix or length options")
        return FormatSpec(kind="enum", values=tuple(values))
    if kind == "regex":
        pattern = spec["regex"]
        if not isinstance(pattern, str) or not pattern:
            raise fail("format regex must be a non-empty string")
        if "prefix" in spec or lengths:
            raise fail("format regex takes no prefix or length options (write them into the pattern)")
        # on its own too: 'a)|(.*' compiles only once wrapped, and would then match anything
        if not (_compiles(pattern) and _compiles("^(?:" + pattern + ")$")):
            raise fail("format regex is not a valid RE2 pattern")
        return FormatSpec(kind="regex", pattern=pattern)
    named = spec["name"]
    if named not in NAMED_FORMATS:
        raise fail(f"format {named!r} is not one of {FORMAT_KINDS}")
    if not isinstance(prefix, str):
        raise fail("format prefix must be a string")
    if "prefix" in spec and not prefix:
        raise fail("format prefix must not be empty")
    if lengths and named != "hex":
        raise fail(f"format {named} takes no length options (only hex does)")
    if not all(_positive(v) for v in lengths.values()):
        raise fail(f"format lengths must be whole numbers from 1 to {MAX_REPEAT}")
    if "length" in lengths and len(lengths) > 1:
        raise fail("format takes length or min_length/max_length, not both")
    lo = lengths.get("length", lengths.get("min_length"))
    hi = lengths.get("length", lengths.get("max_length"))
    if lo is not None and hi is not None and lo > hi:
        raise fail("format min_length is larger than max_length")
    return FormatSpec(kind=named, prefix=prefix, min_length=lo, max_length=hi)


def _column(source: str, name: str, raw: Any) -> ColumnSpec:
    if not isinstance(raw, dict):
        raise _fail(source, f"column {name!r} must be a mapping")
    known = {"class", "type", "nullable", "required", "subject", "output", "generalize", "format",
             "linkable", "precision", "tokenize_ids", "consent"}
    cls = raw.get("class")
    typ = raw.get("type")
    if cls not in CLASSES:
        raise _fail(source, f"column {name!r} has class {cls!r}; expected one of {CLASSES}")
    if typ not in TYPES:
        raise _fail(source, f"column {name!r} has type {typ!r}; expected one of {TYPES}")
    gen = raw.get("generalize")
    if cls == "quasi":
        if gen not in GENERALIZERS:
            raise _fail(source, f"quasi column {name!r} needs generalize: one of {GENERALIZERS}")
    elif gen is not None:
        raise _fail(source, f"column {name!r}: generalize is only for class quasi")
    if cls in ("identifier", "free_text", "pii") and typ != "string":
        raise _fail(source, f"{cls} column {name!r} must have type string")
    params = {k: v for k, v in raw.items() if k not in known}
    fmt = _format(source, name, cls, typ, raw["format"]) if "format" in raw else None
    misplaced = sorted(k for k in ("prefix", *_LENGTH_KEYS) if k in params)
    if fmt is not None and misplaced:
        raise _fail(source, f"column {name!r}: {misplaced} belong inside format:"
                            " (format: {name: hex, length: 16})")
    if gen == "prefix" and not (isinstance(params.get("length"), int) and params["length"] > 0):
        raise _fail(source, f"column {name!r}: generalize prefix needs a positive integer length")
    if gen == "significant":
        digits = params.get("digits")
        if typ not in ("int64", "float64"):
            raise _fail(source, f"column {name!r}: generalize significant needs type int64 or float64")
        if not (isinstance(digits, int) and not isinstance(digits, bool) and 1 <= digits <= 15):
            raise _fail(source, f"column {name!r}: generalize significant needs digits from 1 to 15")
    linkable = raw.get("linkable", False)
    if not isinstance(linkable, bool):
        raise _fail(source, f"column {name!r}: linkable must be true or false")
    if linkable and (cls != "keep" or typ != "string"):
        raise _fail(source, f"column {name!r}: linkable is only for keep columns of type string")
    tokenize_ids = raw.get("tokenize_ids", cls == "free_text")
    if not isinstance(tokenize_ids, bool) or ("tokenize_ids" in raw and cls != "free_text"):
        raise _fail(source, f"column {name!r}: tokenize_ids is true or false, for free_text columns only")
    precision = raw.get("precision")
    if precision is not None and typ != "timestamp":
        raise _fail(source, f"column {name!r}: precision is only for timestamp columns")
    if typ == "timestamp":
        precision = DEFAULT_PRECISION if precision is None else precision
        if precision not in PRECISIONS:
            raise _fail(source, f"column {name!r} has precision {precision!r}; expected one of {PRECISIONS}")
    consent = raw.get("consent")
    if consent is not None:
        if cls != "keep" or typ != "bool":
            raise _fail(source, f"column {name!r}: consent is only for keep columns of type bool")
        if PURPOSES.get(consent) != "consent":
            raise _fail(source, f"column {name!r}: consent names a purpose that rests on consent; expected"
                                f" one of {sorted(p for p, basis in PURPOSES.items() if basis == 'consent')}")
    return ColumnSpec(
        name=name, cls=cls, type=typ,
        nullable=bool(raw.get("nullable", True)), required=bool(raw.get("required", True)),
        subject=bool(raw.get("subject", False)), output=raw.get("output"),
        generalize=gen, params=params, format=fmt, linkable=linkable, precision=precision,
        tokenize_ids=tokenize_ids, consent=consent,
    )


def parse_contract(text: str, source: str) -> Contract:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(source, f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise _fail(source, "top level must be a mapping")
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not dataset.isidentifier():
        raise _fail(source, "dataset must be a plain identifier")
    cols_raw = raw.get("columns")
    if not isinstance(cols_raw, dict) or not cols_raw:
        raise _fail(source, "columns must be a non-empty mapping")
    columns = tuple(_column(source, str(n), spec) for n, spec in cols_raw.items())
    names = [c.name for c in columns]
    if TENANT_COLUMN not in names:
        raise _fail(source, f"every dataset needs a {TENANT_COLUMN!r} column")
    subjects = [c for c in columns if c.subject]
    if len(subjects) != 1 or subjects[0].cls != "identifier":
        raise _fail(source, "exactly one identifier column must be marked subject: true")
    part = raw.get("partition_date_from")
    by_name = {c.name: c for c in columns}
    if part not in by_name or by_name[part].type not in ("timestamp", "date"):
        raise _fail(source, "partition_date_from must name a timestamp or date column")
    if by_name[part].nullable:
        raise _fail(source, f"partition column {part!r} must be nullable: false")
    outs = [c.event_name for c in columns if c.event_name]
    if len(outs) != len(set(outs)) or DATE_PARTITION in outs or TENANT_COLUMN in outs:
        raise _fail(source, "event-zone column names collide (check output: names)")
    buckets = raw.get("subject_buckets", 1)
    if not isinstance(buckets, int) or not 1 <= buckets <= 64:
        raise _fail(source, "subject_buckets must be an integer from 1 to 64")
    retention = raw.get("retention_days")
    if retention is not None and (not isinstance(retention, int) or isinstance(retention, bool)
                                  or retention < 1):
        raise _fail(source, "retention_days must be a whole number of days, 1 or more")
    qis = raw.get("quasi_identifiers")
    if qis is not None:
        if not isinstance(qis, list) or not all(isinstance(q, str) and q for q in qis) \
                or len(set(qis)) != len(qis):
            raise _fail(source, "quasi_identifiers must be a list of distinct column names")
        unknown = sorted(set(qis) - set(outs))
        if unknown:
            raise _fail(source, f"quasi_identifiers {unknown} are not event-zone columns")
    unique_key = raw.get("unique_key")
    if unique_key is not None:
        key_spec = by_name.get(unique_key) if isinstance(unique_key, str) else None
        if key_spec is None or key_spec.event_name is None or key_spec.nullable:
            raise _fail(source, "unique_key must name a column that is kept in the event zone"
                                " and nullable: false")
    return Contract(dataset=dataset, version=int(raw.get("version", 1)),
                    partition_date_from=part, columns=columns, source=source, subject_buckets=buckets,
                    retention_days=retention,
                    declared_quasi_identifiers=tuple(qis) if qis is not None else None,
                    unique_key=unique_key)


def _search_dirs() -> list[Path]:
    dirs = [PACKAGE_DIR]
    extra = os.environ.get(CONTRACTS_DIR_ENV)
    if extra:
        dirs.insert(0, Path(extra))
    return dirs


@cache
def _load_file(path: Path) -> Contract:
    contract = parse_contract(path.read_text(encoding="utf-8"), path.name)
    if contract.dataset != path.stem:
        raise _fail(path.name, f"dataset {contract.dataset!r} must match the file name")
    return contract


def available() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in reversed(_search_dirs()):
        for path in sorted(directory.glob("*.yaml")):
            found[path.stem] = path
    return found


def pii_datasets() -> list[str]:
    """The datasets with PII columns: the subject's profile, kept encrypted in the PII zone, and
    what a rectification corrects and an erasure's key destruction covers."""
    return sorted(d for d in available() if load(d).has_pii)


def load(dataset: str) -> Contract:
    path = available().get(dataset)
    if path is None:
        raise ContractError(f"no contract for dataset {dataset!r}")
    return _load_file(path)
