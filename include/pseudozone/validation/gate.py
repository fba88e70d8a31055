"""Publish gates: validate what a unit of work is about to publish, before anything is visible.

``pseudonymize_ingested`` gates each batch (its event-zone rows, its restricted-zone
rows and its PII-zone rows) after transforming it, while its files are staged and
before any is published; the rights processor gates each rewritten file group
before it replaces anything.  A failed
gate raises ``ValidationFailed``: the caller quarantines the unit of work with the
report (expectations, columns, PII forms, counts, row positions; never a value),
publishes nothing of it and fails its task.

One ``Validator`` (one Great Expectations context) serves every gate of a process;
the suites are registered once per dataset and zone, and the value sets they check
against (forbidden subjects, restricted subjects, the batch's known raw values) are
swapped in under fixed references for each unit of work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.contracts import SUBJECT_COLUMN, Contract
from pseudozone.errors import ContractViolation
from pseudozone.pii.detectors import DEFAULT_REGIONS
from pseudozone.pii.scan import Evidence
from pseudozone.validation.expectations import registered
from pseudozone.validation.known import Known
from pseudozone.validation.suites import (
    Report,
    Validator,
    event_suite,
    pii_columns,
    pii_suite,
    restricted_suite,
    subjects_suite,
)

_lock = threading.Lock()
_validator: Validator | None = None

Tables = Sequence[tuple[str, pa.Table]]


class ValidationFailed(ContractViolation):
    """A gate found something that must not be published; ``reports`` say what, never a value."""

    def __init__(self, reports: list[Report]) -> None:
        failed = [r for r in reports if not r.success]
        names = sorted({f"{r.zone}: {n}" for r in failed for n in r.failed_names()})
        columns = sorted({f.column for r in failed for f in r.failures if f.column})
        super().__init__("validation_failed", "the publish gate failed: " + "; ".join(names), columns=columns)
        self.reports = failed

    def to_reason(self) -> dict[str, Any]:
        reason = super().to_reason()
        reason["validation"] = [r.to_dict() for r in self.reports]
        return reason


def validator() -> Validator:
    global _validator
    if _validator is None:
        _validator = Validator(keep_results=False)
    return _validator


def _strings(values: Sequence[str] | pa.Array) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(sorted(values), pa.string())


def check(contract: Contract, *, events: Tables = (), restricted: Tables = (), pii: Tables = (),
          forbidden: Sequence[str] | pa.Array = (), restricted_subjects: Sequence[str] | pa.Array = (),
          erased: Sequence[str] | pa.Array = (), known: Known | None = None,
          changed: Collection[str] | None = None, regions: Sequence[str] = DEFAULT_REGIONS,
          evidence: Mapping[str, Mapping[str, Evidence]] | None = None,
          forbidden_cookies: Sequence[str] | pa.Array = (),
          restricted_cookies: Sequence[str] | pa.Array = ()) -> list[Report]:
    """Validate a unit of work's outputs; raise ``ValidationFailed`` if any expectation fails.

    ``forbidden``: subjects that must not appear in the event zone (erased, restricted);
    ``restricted_subjects``: the only subjects allowed in the restricted zone;
    ``erased``: subjects that must not appear in the PII zone;
    ``known``: the tenant's known values (and the input's raw values), which must appear nowhere;
    ``regions``: the regions whose national phone formats are read (as the scrubber read them).
    ``forbidden_cookies``: cookies none of whose rows may be in the event zone (erased or
    restricted with their subjects); ``restricted_cookies``: cookies whose logged-out rows
    the restricted zone admits (ADR 0008).
    ``evidence``: per zone (``events``, ``restricted``) and column, the scrubber's scan evidence
    of the text it was given (``pseudozone.pii.scan.Evidence``): the PII and known-value checks
    reuse its verdicts for the rows whose value is still the one scanned, and check every other
    row themselves, so the verdict is that of a full check of the output.
    ``changed``: for a rewrite, the subjects whose rows it changed or moved: every row is
    checked for its columns and subject, and only those subjects' rows for everything
    else (the other rows are as they were published, and were validated then).
    """
    dataset, version = contract.dataset, contract.suite_version
    mode = ("known" if known is not None else "plain") + ":" + ",".join(regions)
    with _lock, ExitStack() as stack:
        v = validator()
        forbidden_ref = stack.enter_context(registered(_strings(forbidden), ref="gate:forbidden"))
        allowed_ref = stack.enter_context(registered(_strings(restricted_subjects), ref="gate:restricted"))
        erased_ref = stack.enter_context(registered(_strings(erased), ref="gate:erased"))
        no_cookies_ref = stack.enter_context(registered(_strings(forbidden_cookies),
                                                        ref="gate:forbidden-cookies"))
        cookies_ref = stack.enter_context(registered(_strings(restricted_cookies),
                                                     ref="gate:restricted-cookies"))
        known_ref = stack.enter_context(registered(known, ref="gate:known")) if known is not None else None
        shared = {zone: stack.enter_context(registered(dict((evidence or {}).get(zone, {})),
                                                       ref=f"gate:evidence:{zone}"))
                  for zone in ("events", "restricted")}
        columns = contract.event_columns
        # zone: (tables, the whole suite, the columns-and-subjects suite)
        suites: dict[str, tuple[Tables, Callable[[], list[Any]], Callable[[], list[Any]]]] = {
            "events": (events,
                       partial(event_suite, contract, forbidden_ref=forbidden_ref, known_ref=known_ref,
                               regions=tuple(regions), evidence_ref=shared["events"],
                               forbidden_cookies_ref=no_cookies_ref),
                       partial(subjects_suite, columns, set_ref=forbidden_ref, absent=True, not_null=False,
                               cookies_ref=no_cookies_ref)),
            "restricted": (restricted,
                           partial(restricted_suite, contract, allowed_ref=allowed_ref, known_ref=known_ref,
                                   regions=tuple(regions), evidence_ref=shared["restricted"],
                                   cookies_ref=cookies_ref),
                           partial(subjects_suite, columns, set_ref=allowed_ref, absent=False,
                                   not_null=True, cookies_ref=cookies_ref)),
            "pii": (pii, partial(pii_suite, contract, erased_ref=erased_ref),
                    partial(subjects_suite, pii_columns(contract), set_ref=erased_ref, absent=True,
                            not_null=True, set_name="erased subjects")),
        }
        reports = []
        for zone, (tables, full, subjects_only) in suites.items():
            if not tables:
                continue
            key = f"gate:{zone}:{version}:{mode}"
            if changed is None:
                reports.append(v.validate(tables, zone=zone, dataset=dataset, key=key, expectations=full))
                continue
            reports.append(v.validate(tables, zone=zone, dataset=dataset,
                                      key=f"gate:{zone}-subjects:{version}",
                                      expectations=subjects_only))
            subset, positions = _rows_of(tables, changed)
            if subset:
                report = v.validate(subset, zone=zone, dataset=dataset, key=key, expectations=full)
                for failure in report.failures:
                    rows = positions.get(failure.file or "")
                    if rows is not None:
                        failure.rows = [int(rows[r]) for r in failure.rows]
                reports.append(report)
    if not all(r.success for r in reports):
        raise ValidationFailed(reports)
    return reports


def _rows_of(tables: Tables, subjects: Collection[str]) -> tuple[list[tuple[str, pa.Table]],
                                                                  dict[str, np.ndarray]]:
    """Each table's rows of ``subjects`` (and their positions), for the tables that have any."""
    wanted = pa.array(sorted(subjects), pa.string())
    subset: list[tuple[str, pa.Table]] = []
    positions: dict[str, np.ndarray] = {}
    for name, table in tables:
        if SUBJECT_COLUMN not in table.column_names or not len(wanted):
            continue
        mask = pc.fill_null(pc.is_in(table[SUBJECT_COLUMN], value_set=wanted), False)
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array)
                              else mask.combine_chunks().to_numpy(zero_copy_only=False))
        if len(rows):
            subset.append((name, table.take(pa.array(rows))))
            positions[name] = rows
    return subset, positions


def renumber(exc: ValidationFailed, name: str, row_numbers: dict[str, np.ndarray]) -> None:
    """Report rows as positions in the input (``name``) rather than in each checked table."""
    for report in exc.reports:
        for failure in report.failures:
            mapping = row_numbers.get(failure.file or "")
            if mapping is not None:
                failure.rows = [int(mapping[r]) for r in failure.rows]
                failure.file = name
