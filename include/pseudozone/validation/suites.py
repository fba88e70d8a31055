"""Expectation suites per zone, built from the dataset contracts, and the validator that runs them.

Suites are built in code from a dataset's contract, so they change with it (the
contract's ``version`` is in every suite's name):

- **event zone**: the columns are exactly the contract's allow-list; pseudonym
  columns have the pseudonym format; generalized IP columns hold networks; no text
  column holds an email, phone number, IP address, Luhn-valid card number or IBAN
  (whole or inside JSON); no erased or restricted subject appears; at a gate, no raw
  value of the batch being published appears (keyed hashes, ``known``).
- **restricted zone**: the same, except that every subject must be one that is
  restricted.
- **PII zone**: the columns are ``subject_id`` and the contract's identifier and PII
  columns; every one of those is ciphertext; every subject holds a live data key.
- **export zone**: each archive's rows belong to the request's subject only.

``Validator.validate`` takes one or more tables of one zone and dataset (files of a
partition, or the outputs a gate is about to publish), validates them in one Great
Expectations run and returns a ``Report``: per failed expectation its type, column,
PII form, unexpected count, and which file and rows, never a value.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)

from pseudozone.contracts import COOKIE_COLUMN, SUBJECT_COLUMN, Contract
from pseudozone.lake import layout
from pseudozone.validation import detect
from pseudozone.validation.expectations import (
    ERROR_PREFIX,
    SAFE_RESULT_FORMAT,
    ExpectColumnValuesToBeCiphertext,
    ExpectColumnValuesToBeFreeOfKnownValues,
    ExpectColumnValuesToBeFreeOfPii,
    ExpectColumnValuesToBeInRegisteredSet,
    ExpectColumnValuesToMatchPattern,
    ExpectRowsToBelongToRegisteredOwners,
    context,
)

# values that can hold no email, phone, IP or name: uuids, 16-64 hex digits, ULIDs
PURE_ID_RE = (r"^(?:[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
              r"|[0-9A-Fa-f]{16,64}|[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26})$")
# ...except those that may be an IBAN all the same: its country code made of hex letters (AD, AE,
# BA, BE, DE), then its check digits.  Digits alone are not scanned: 1 in 35,000 random 16-hex
# session ids is all digits, Luhn-valid and in an issuer's range (docs/adr/0003, formats)
NOT_PURE_RE = r"(?i)^(?:AD|AE|BA|BE|DE)[0-9]{2}[0-9A-F]+$"
PSEUDONYM_RE = r"^v[0-9]+:[0-9a-f]{64}$"
NETWORK_RE = r"^(?:[0-9]{1,3}\.){3}0/24$|^[0-9a-f:]+/48$"
PSEUDONYM_NAME = "a pseudonym (v<version>:<64 hex digits>)"
# what the registered sets are, in words (Data Docs)
FORBIDDEN_SUBJECTS = "erased or restricted subjects"
FORBIDDEN_COOKIES = "cookies of erased or restricted subjects"
RESTRICTED_SUBJECTS = "restricted subjects"
RESTRICTED_COOKIES = "cookies frozen with a restriction"
MAX_ROWS_REPORTED = 20
ZONES = ("events", "restricted", "pii", "exports")
FREE_OF_PII = "expect_column_values_to_be_free_of_pii"


@dataclass
class Failure:
    expectation: str
    column: str | None
    kind: str | None
    unexpected_count: int | None
    rows: list[int] = field(default_factory=list)
    file: str | None = None

    def name(self) -> str:
        return f"{self.expectation}:{self.column}" + (f":{self.kind}" if self.kind else "")


@dataclass
class Report:
    zone: str
    dataset: str
    files: int
    rows: int
    success: bool
    evaluated: int
    failures: list[Failure]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failed_names(self) -> list[str]:
        return sorted({f.name() for f in self.failures})


# -- suites ---------------------------------------------------------------------------------


def _text_checks(contract: Contract, known_ref: str | None, regions: tuple[str, ...] = detect.DEFAULT_REGIONS,
                 evidence_ref: str | None = None) -> list[Any]:
    expected: list[Any] = []
    for spec in contract.columns:
        name = spec.event_name
        if name is None or spec.type != "string":
            continue
        if spec.pseudonymized:
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=PSEUDONYM_RE,
                                                             pattern_name=PSEUDONYM_NAME))
        elif spec.cls == "quasi" and spec.generalize == "ip_prefix":
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=NETWORK_RE,
                                                             pattern_name="a network (IPv4 /24 or IPv6 /48)"))
        elif spec.cls == "keep" and spec.format_regex is not None:
            # an allow-list proves the column; values it admits that are not pure ids (prefixed
            # ids, names of events) are still scanned and searched, pure ids (uuid, hex, ULID) not
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=spec.format_regex,
                                                             pattern_name="in the contract's format"))
            expected.append(ExpectColumnValuesToBeFreeOfPii(
                column=name, regions=list(regions), skip_pattern=PURE_ID_RE, scan_pattern=NOT_PURE_RE))
            if known_ref is not None:
                expected.append(ExpectColumnValuesToBeFreeOfKnownValues(
                    column=name, known_ref=known_ref, skip_pattern=PURE_ID_RE, scan_pattern=NOT_PURE_RE))
        elif spec.cls in ("free_text", "keep"):
            expected.append(ExpectColumnValuesToBeFreeOfPii(column=name, regions=list(regions),
                                                            evidence_ref=evidence_ref))
            if known_ref is not None:
                expected.append(ExpectColumnValuesToBeFreeOfKnownValues(column=name, known_ref=known_ref,
                                                                        evidence_ref=evidence_ref))
    return expected


def _has_cookie(columns: Sequence[str]) -> bool:
    return COOKIE_COLUMN in columns


def _absent(forbidden_ref: str, columns: Sequence[str], forbidden_cookies_ref: str | None,
            forbidden_name: str = FORBIDDEN_SUBJECTS) -> list[Any]:
    """No forbidden subject, and no row (logged-out or not) of a forbidden cookie."""
    expected: list[Any] = [ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=forbidden_ref,
                                                                 absent=True, set_name=forbidden_name)]
    if forbidden_cookies_ref is not None and _has_cookie(columns):
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=COOKIE_COLUMN,
                                                              set_ref=forbidden_cookies_ref, absent=True,
                                                              set_name=FORBIDDEN_COOKIES))
    return expected


def _owned(allowed_ref: str, columns: Sequence[str], cookies_ref: str | None) -> list[Any]:
    """Every row a restricted subject's, or (with a cookie column) a logged-out row of a
    restricted cookie (docs/adr/0008-identity-links.md)."""
    if cookies_ref is not None and _has_cookie(columns):
        return [ExpectRowsToBelongToRegisteredOwners(column_A=SUBJECT_COLUMN, column_B=COOKIE_COLUMN,
                                                     subject_ref=allowed_ref, cookie_ref=cookies_ref,
                                                     subject_set_name=RESTRICTED_SUBJECTS,
                                                     cookie_set_name=RESTRICTED_COOKIES)]
    return [gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN),
            ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=allowed_ref,
                                                  set_name=RESTRICTED_SUBJECTS)]


def event_suite(contract: Contract, *, forbidden_ref: str | None = None, known_ref: str | None = None,
                regions: tuple[str, ...] = detect.DEFAULT_REGIONS,
                evidence_ref: str | None = None, forbidden_cookies_ref: str | None = None) -> list[Any]:
    """Event zone: allow-list, formats, no PII forms, no forbidden subject or cookie, no known raw value.

    ``evidence_ref`` names the registered scan evidence (per column) the text checks may reuse.
    """
    expected: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=contract.event_columns,
                                                            exact_match=True)]
    expected += _text_checks(contract, known_ref, regions, evidence_ref)
    if forbidden_ref is not None:
        expected += _absent(forbidden_ref, contract.event_columns, forbidden_cookies_ref)
    return expected


def restricted_suite(contract: Contract, *, allowed_ref: str, known_ref: str | None = None,
                     regions: tuple[str, ...] = detect.DEFAULT_REGIONS,
                     evidence_ref: str | None = None, cookies_ref: str | None = None) -> list[Any]:
    """Restricted zone: as the event zone, and only restricted subjects (and their cookies)."""
    return [*event_suite(contract, known_ref=known_ref, regions=regions, evidence_ref=evidence_ref),
            *_owned(allowed_ref, contract.event_columns, cookies_ref)]


def pii_columns(contract: Contract) -> list[str]:
    return [SUBJECT_COLUMN] + [c.name for c in contract.columns if c.cls in ("identifier", "pii")]


def pii_suite(contract: Contract, *, live_ref: str | None = None, erased_ref: str | None = None) -> list[Any]:
    """PII zone: the expected columns, ciphertext only, no erased subject, (nightly) a live key each."""
    columns = pii_columns(contract)
    expected: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
                           gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN),
                           ExpectColumnValuesToMatchPattern(column=SUBJECT_COLUMN, pattern=PSEUDONYM_RE,
                                                            pattern_name=PSEUDONYM_NAME)]
    expected += [ExpectColumnValuesToBeCiphertext(column=c) for c in columns[1:]]
    if live_ref is not None:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=live_ref,
                                                              set_name="subjects with a live data key"))
    if erased_ref is not None:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=erased_ref,
                                                              absent=True, set_name="erased subjects"))
    return expected


def subjects_suite(columns: list[str], *, set_ref: str, absent: bool, not_null: bool,
                   cookies_ref: str | None = None, set_name: str | None = None) -> list[Any]:
    """Only the columns and which subjects: for rows a rewrite kept as they were published.

    ``cookies_ref``: with ``absent``, cookies none of whose rows may appear; otherwise the
    cookies whose logged-out rows may appear (without a subject) beside the allowed subjects.
    ``set_name`` says what an absent set is, in words (default: erased or restricted subjects).
    """
    expected: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)]
    if absent:
        expected += _absent(set_ref, columns, cookies_ref, set_name or FORBIDDEN_SUBJECTS)
        if not_null:
            expected.append(gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN))
    elif not_null:
        expected += _owned(set_ref, columns, cookies_ref)
    else:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=set_ref,
                                                              set_name=RESTRICTED_SUBJECTS))
    return expected


def export_suite(*, subject_ref: str) -> list[Any]:
    """Export archive: every row is the requesting subject's."""
    return [gxe.ExpectColumnToExist(column=SUBJECT_COLUMN),
            gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN),
            ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=subject_ref,
                                                  set_name="the request's subject (one pseudonym)")]


# -- running ----------------------------------------------------------------------------------


class Validator:
    """One Great Expectations context; suites are registered once per key and run many times."""

    def __init__(self, *, keep_results: bool = True) -> None:
        # keep_results=False (gates): each result is dropped from GX's in-memory store once
        # read, so a long-lived process does not accumulate them
        self.keep_results = keep_results
        self.context = context()
        self._source = self.context.data_sources.add_pandas(name="pseudozone")
        self._definitions: dict[str, Any] = {}
        self._names = itertools.count(1)

    def _definition(self, key: str, make: Callable[[], list[Any]]) -> Any:
        found = self._definitions.get(key)
        if found is None:
            # a name that is safe in a URL: Data Docs link every suite by it ('#' broke each link)
            name = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', key)}.{next(self._names)}"
            asset = self._source.add_dataframe_asset(name=name)
            batch = asset.add_batch_definition_whole_dataframe(f"batch.{name}")
            suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=make()))
            found = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=suite))
            self._definitions[key] = found
        return found

    def validate(self, tables: Sequence[tuple[str, pa.Table]], *, zone: str, dataset: str, key: str,
                 expectations: Callable[[], list[Any]]) -> Report:
        """Validate ``(name, table)`` pairs of one zone and dataset together.

        ``key`` names the suite (the same key must always mean the same expectations);
        tables whose schemas differ are validated in separate runs.
        """
        by_schema: dict[pa.Schema, list[tuple[str, pa.Table]]] = defaultdict(list)
        for name, table in tables:
            by_schema[table.schema].append((name, table))
        definition = self._definition(key, expectations)
        failures: list[Failure] = []
        evaluated, success = 0, True
        for group in by_schema.values():
            combined = pa.concat_tables([t for _, t in group]) if len(group) > 1 else group[0][1]
            frame = combined.to_pandas(types_mapper=pd.ArrowDtype).reset_index(drop=True)
            run_id = RunIdentifier(run_time=dt.datetime.now(dt.UTC))
            result = definition.run(batch_parameters={"dataframe": frame}, result_format=SAFE_RESULT_FORMAT,
                                    run_id=run_id)
            store = self.context.validation_results_store
            if not self.keep_results:
                for stored in store.list_keys():
                    store.remove_key(stored)
            else:
                # Data Docs' "Data asset" (page header, title and index) is the batch spec's
                # data_asset_name, which a dataframe asset leaves out: what this run read, in words
                result.meta.setdefault("batch_spec", {})["data_asset_name"] = data_asset_label(
                    zone, dataset, [name for name, _ in group])
                store.update(ValidationResultIdentifier(
                    batch_identifier=result.batch_id, run_id=run_id,
                    expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name)), result)
            evaluated = max(evaluated, len(result.results))
            success = success and bool(result.success)
            offsets = np.cumsum([0] + [t.num_rows for _, t in group])
            for r in result.results:
                if not r.success:
                    failures += _failures(r, combined, [name for name, _ in group], offsets)
        failures.sort(key=lambda f: (f.file or "", f.expectation, f.column or "", f.kind or ""))
        return Report(zone=zone, dataset=dataset, files=len(tables), rows=sum(t.num_rows for _, t in tables),
                      success=success, evaluated=evaluated, failures=failures)


def data_asset_label(zone: str, dataset: str, names: Sequence[str]) -> str:
    """What one run validated, for Data Docs: zone, dataset, tenant(s) and the partitions of
    its files (``names``, paths relative to the zones root), never a value: the zone, dataset,
    tenants, number of files, and each tenant directory with its first and last date
    partition (as ``lake.layout`` spells them)."""
    dirs: dict[str, set[str]] = defaultdict(set)  # tenant directory -> its partitions' names
    tenants: set[str] = set()
    for name in names:
        if zone == "exports":  # an archive, exports/<tenant>/<request id>.zip.enc: no zone file path
            tenant_dir = PurePosixPath(name).parent
            tenants.add(tenant_dir.name)
            dirs[str(tenant_dir)].update([])
            continue
        try:
            f = layout.parse(name)
        except layout.LayoutError:  # a file outside the zones (a caller's own): its directory
            dirs[str(PurePosixPath(name).parent)].update([])
            continue
        tenants.add(f.tenant)
        tenant_dir = layout.partition_dir(PurePosixPath(f.zone), f.dataset, f.tenant)
        dirs[str(tenant_dir)].update(
            [] if f.date is None else [layout.date_dir(f.date)])
    where = []
    for path, dates in sorted(dirs.items()):
        days = sorted(dates)
        span = "" if not days else f"/{days[0]}" if len(days) == 1 else f"/{days[0]} to {days[-1]}"
        where.append(f"{path or '.'}{span}")
    label = f"{zone} zone, dataset {'every dataset' if dataset == '*' else dataset}"
    if tenants:
        label += f", tenant{'s' if len(tenants) > 1 else ''} {', '.join(sorted(tenants))}"
    return f"{label}: {len(names)} file(s) in {'; '.join(where)}" if names else label


def _error(result: Any) -> str | None:
    info = result.exception_info or {}
    entries = info.values() if all(isinstance(v, dict) for v in info.values()) else [info]
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            message = str(entry.get("exception_message") or "")
            if message.startswith(ERROR_PREFIX):
                return "error:" + message.removeprefix(ERROR_PREFIX).split(" ", 1)[0]
            return "error"
    return None


def _failures(result: Any, table: pa.Table, names: list[str], offsets: np.ndarray) -> list[Failure]:
    """One failure per file (and, for PII forms, per form found) with file-local row positions."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    detail = dict(result.result or {})
    rows = np.asarray([r for r in detail.get("unexpected_index_list") or [] if isinstance(r, int)
                       and not isinstance(r, bool)], dtype=np.int64)
    base = Failure(expectation=config.type, column=column, kind=None,
                   unexpected_count=detail.get("unexpected_count"))
    error = _error(result)
    if error is not None:
        # the expectation could not be evaluated: a failure too (fail closed), named by
        # the exception's type only (its message might quote data)
        return [Failure(**{**asdict(base), "kind": error, "file": names[0] if len(names) == 1 else None})]
    if len(rows) == 0:
        return [Failure(**{**asdict(base), "file": names[0] if len(names) == 1 else None})]
    per_kind: list[tuple[str | None, np.ndarray]] = [(None, rows)]
    if config.type == FREE_OF_PII and column is not None:
        texts = table[column].take(pa.array(rows))
        per_kind = []
        named = np.zeros(len(rows), dtype=bool)
        regions = config.kwargs.get("regions") or detect.DEFAULT_REGIONS
        for kind in config.kwargs.get("kinds") or detect.KINDS:
            hit = detect.matches(texts, kind, regions).to_numpy(zero_copy_only=False)
            named |= hit
            if hit.any():
                per_kind.append((kind, rows[hit]))
        if not named.all():
            per_kind.append((None, rows[~named]))
    out: list[Failure] = []
    for kind, kind_rows in per_kind:
        file_of = np.searchsorted(offsets, kind_rows, side="right") - 1
        for f in np.unique(file_of):
            local = kind_rows[file_of == f] - offsets[f]
            out.append(Failure(expectation=base.expectation, column=column, kind=kind,
                               unexpected_count=len(local), file=names[int(f)],
                               rows=[int(r) for r in local[:MAX_ROWS_REPORTED]]))
    return out
