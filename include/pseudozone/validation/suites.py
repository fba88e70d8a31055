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

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa

from pseudozone.contracts import COOKIE_COLUMN, SUBJECT_COLUMN, Contract
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
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=PSEUDONYM_RE))
        elif spec.cls == "quasi" and spec.generalize == "ip_prefix":
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=NETWORK_RE))
        elif spec.cls == "keep" and spec.format_regex is not None:
            # an allow-list proves the column; values it admits that are not pure ids (prefixed
            # ids, names of events) are still scanned and searched, pure ids (uuid, hex, ULID) not
            expected.append(ExpectColumnValuesToMatchPattern(column=name, pattern=spec.format_regex))
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


def _absent(forbidden_ref: str, columns: Sequence[str], forbidden_cookies_ref: str | None) -> list[Any]:
    """No forbidden subject, and no row (logged-out or not) of a forbidden cookie."""
    expected: list[Any] = [ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=forbidden_ref,
                                                                 absent=True)]
    if forbidden_cookies_ref is not None and _has_cookie(columns):
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=COOKIE_COLUMN,
                                                              set_ref=forbidden_cookies_ref, absent=True))
    return expected


def _owned(allowed_ref: str, columns: Sequence[str], cookies_ref: str | None) -> list[Any]:
    """Every row a restricted subject's, or (with a cookie column) a logged-out row of a
    restricted cookie (docs/adr/0008-identity-links.md)."""
    if cookies_ref is not None and _has_cookie(columns):
        return [ExpectRowsToBelongToRegisteredOwners(column_A=SUBJECT_COLUMN, column_B=COOKIE_COLUMN,
                                                     subject_ref=allowed_ref, cookie_ref=cookies_ref)]
    return [gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN),
            ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=allowed_ref)]


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
                           ExpectColumnValuesToMatchPattern(column=SUBJECT_COLUMN, pattern=PSEUDONYM_RE)]
    expected += [ExpectColumnValuesToBeCiphertext(column=c) for c in columns[1:]]
    if live_ref is not None:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=live_ref))
    if erased_ref is not None:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=erased_ref,
                                                              absent=True))
    return expected


def subjects_suite(columns: list[str], *, set_ref: str, absent: bool, not_null: bool,
                   cookies_ref: str | None = None) -> list[Any]:
    """Only the columns and which subjects: for rows a rewrite kept as they were published.

    ``cookies_ref``: with ``absent``, cookies none of whose rows may appear; otherwise the
    cookies whose logged-out rows may appear (without a subject) beside the allowed subjects.
    """
    expected: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True)]
    if absent:
        expected += _absent(set_ref, columns, cookies_ref)
        if not_null:
            expected.append(gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN))
    elif not_null:
        expected += _owned(set_ref, columns, cookies_ref)
    else:
        expected.append(ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=set_ref))
    return expected


def export_suite(*, subject_ref: str) -> list[Any]:
    """Export archive: every row is the requesting subject's."""
    return [gxe.ExpectColumnToExist(column=SUBJECT_COLUMN),
            gxe.ExpectColumnValuesToNotBeNull(column=SUBJECT_COLUMN),
            ExpectColumnValuesToBeInRegisteredSet(column=SUBJECT_COLUMN, set_ref=subject_ref)]


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
            result = definition.run(batch_parameters={"dataframe": frame}, result_format=SAFE_RESULT_FORMAT)
            if not self.keep_results:
                store = self.context.validation_results_store
                for stored in store.list_keys():
                    store.remove_key(stored)
            evaluated = max(evaluated, len(result.results))
            success = success and bool(result.success)
            offsets = np.cumsum([0] + [t.num_rows for _, t in group])
            for r in result.results:
                if not r.success:
                    failures += _failures(r, combined, [name for name, _ in group], offsets)
        failures.sort(key=lambda f: (f.file or "", f.expectation, f.column or "", f.kind or ""))
        return Report(zone=zone, dataset=dataset, files=len(tables), rows=sum(t.num_rows for _, t in tables),
                      success=success, evaluated=evaluated, failures=failures)


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
