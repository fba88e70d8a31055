"""Dataset contracts: one YAML file per dataset classifies every column.

The contract is the allow-list of a dataset.  A batch with a column the
contract does not know, without a required column, or with a value that does
not fit a column's type is rejected whole (see ``pseudozone.ingest``).

Adding a dataset means adding ``<dataset>.yaml`` here, or in the directory
named by ``PSEUDOZONE_CONTRACTS_DIR``.
"""

from __future__ import annotations

import os
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
GENERALIZERS = ("ip_prefix", "year", "prefix")
TENANT_COLUMN = "tenant_id"
SUBJECT_COLUMN = "subject_id"
DATE_PARTITION = "date"


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


def _column(source: str, name: str, raw: Any) -> ColumnSpec:
    if not isinstance(raw, dict):
        raise _fail(source, f"column {name!r} must be a mapping")
    known = {"class", "type", "nullable", "required", "subject", "output", "generalize"}
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
    if gen == "prefix" and not (isinstance(params.get("length"), int) and params["length"] > 0):
        raise _fail(source, f"column {name!r}: generalize prefix needs a positive integer length")
    return ColumnSpec(
        name=name, cls=cls, type=typ,
        nullable=bool(raw.get("nullable", True)), required=bool(raw.get("required", True)),
        subject=bool(raw.get("subject", False)), output=raw.get("output"),
        generalize=gen, params=params,
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
    return Contract(dataset=dataset, version=int(raw.get("version", 1)),
                    partition_date_from=part, columns=columns, source=source, subject_buckets=buckets,
                    retention_days=retention,
                    declared_quasi_identifiers=tuple(qis) if qis is not None else None)


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


def load(dataset: str) -> Contract:
    path = available().get(dataset)
    if path is None:
        raise ContractError(f"no contract for dataset {dataset!r}")
    return _load_file(path)
