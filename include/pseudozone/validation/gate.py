"""Publish gates: validate what a unit of work is about to publish, before anything is visible.

``pseudonymize_ingested`` gates each batch (its event-zone rows, its restricted-zone
rows and its PII-zone rows) after transforming it and before staging; the rights
processor gates each rewritten file group before it replaces anything.  A failed
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
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow as pa

from pseudozone.contracts import Contract
from pseudozone.errors import ContractViolation
from pseudozone.validation.expectations import registered
from pseudozone.validation.known import KnownValues
from pseudozone.validation.suites import Report, Validator, event_suite, pii_suite, restricted_suite

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
        _validator = Validator()
    return _validator


def _strings(values: Sequence[str] | pa.Array) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(sorted(values), pa.string())


def check(contract: Contract, *, events: Tables = (), restricted: Tables = (), pii: Tables = (),
          forbidden: Sequence[str] | pa.Array = (), restricted_subjects: Sequence[str] | pa.Array = (),
          known: KnownValues | None = None) -> list[Report]:
    """Validate a unit of work's outputs; raise ``ValidationFailed`` if any expectation fails.

    ``forbidden``: subjects that must not appear in the event zone (erased, restricted);
    ``restricted_subjects``: the only subjects allowed in the restricted zone;
    ``known``: the raw values of the input, which must appear nowhere.
    """
    dataset, version = contract.dataset, contract.version
    with _lock, ExitStack() as stack:
        v = validator()
        forbidden_ref = stack.enter_context(registered(_strings(forbidden), ref="gate:forbidden"))
        allowed_ref = stack.enter_context(registered(_strings(restricted_subjects), ref="gate:restricted"))
        known_ref = (stack.enter_context(registered(known, ref="gate:known")) if known is not None else None)
        suffix = f"{dataset}:v{version}:{'known' if known_ref else 'plain'}"
        reports = []
        if events:
            reports.append(v.validate(events, zone="events", dataset=dataset, key=f"gate:events:{suffix}",
                                      expectations=lambda: event_suite(contract, forbidden_ref=forbidden_ref,
                                                                       known_ref=known_ref)))
        if restricted:
            reports.append(v.validate(restricted, zone="restricted", dataset=dataset,
                                      key=f"gate:restricted:{suffix}",
                                      expectations=lambda: restricted_suite(contract, allowed_ref=allowed_ref,
                                                                            known_ref=known_ref)))
        if pii:
            reports.append(v.validate(pii, zone="pii", dataset=dataset, key=f"gate:pii:{dataset}:v{version}",
                                      expectations=lambda: pii_suite(contract)))
    if not all(r.success for r in reports):
        raise ValidationFailed(reports)
    return reports


def renumber(exc: ValidationFailed, name: str, row_numbers: dict[str, np.ndarray]) -> None:
    """Report rows as positions in the input (``name``) rather than in each checked table."""
    for report in exc.reports:
        for failure in report.failures:
            mapping = row_numbers.get(failure.file or "")
            if mapping is not None:
                failure.rows = [int(mapping[r]) for r in failure.rows]
                failure.file = name
