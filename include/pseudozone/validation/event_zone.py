"""The event-zone suite, built from a dataset contract, and a validator for one table.

The suite says, for one event-zone file of a dataset:
- its columns are exactly the contract's event-zone allow-list;
- ``subject_id`` (and every other pseudonym column) has the pseudonym format;
- generalized IP columns hold networks (``/24`` or ``/48``), never an address;
- no other text column holds an email, phone number, IP address, Luhn-valid card
  number or IBAN, whole or inside JSON;
- none of the given erased or restricted subjects appears.

``validate_table`` returns a ``Report``: success, and per failed expectation its type,
column, PII form, unexpected count and first row positions.  No value is ever in it.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
import pyarrow as pa

from pseudozone.contracts import Contract
from pseudozone.validation.detect import KINDS
from pseudozone.validation.expectations import (
    SAFE_RESULT_FORMAT,
    ExpectColumnValuesToBeFreeOfPii,
    context,
)

PSEUDONYM_RE = r"^v[0-9]+:[0-9a-f]{64}$"
NETWORK_RE = r"^(?:[0-9]{1,3}\.){3}0/24$|^[0-9a-f:]+/48$"
MAX_ROWS_REPORTED = 20
_names = itertools.count()


@dataclass
class Failure:
    expectation: str
    column: str | None
    kind: str | None
    unexpected_count: int | None
    rows: list[int] = field(default_factory=list)


@dataclass
class Report:
    dataset: str
    rows: int
    success: bool
    evaluated: int
    failures: list[Failure]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def failed_names(self) -> list[str]:
        return sorted({f"{f.expectation}:{f.column}" + (f":{f.kind}" if f.kind else "")
                       for f in self.failures})


def suite_expectations(contract: Contract, *, forbidden_subjects: list[str] | None = None) -> list[Any]:
    """The expectations for one event-zone file of ``contract``'s dataset."""
    expected: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=contract.event_columns,
                                                            exact_match=True)]
    for spec in contract.columns:
        name = spec.event_name
        if name is None or spec.type != "string":
            continue
        if spec.cls == "identifier":
            expected.append(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=PSEUDONYM_RE))
        elif spec.cls == "quasi" and spec.generalize == "ip_prefix":
            expected.append(gxe.ExpectColumnValuesToMatchRegex(column=name, regex=NETWORK_RE))
        elif spec.cls in ("free_text", "keep"):
            expected.extend(ExpectColumnValuesToBeFreeOfPii(column=name, kind=kind) for kind in KINDS)
    if forbidden_subjects:
        expected.append(gxe.ExpectColumnValuesToNotBeInSet(column="subject_id",
                                                           value_set=sorted(forbidden_subjects)))
    return expected


def _failure(result: Any) -> Failure:
    config = result.expectation_config
    kwargs = dict(config.kwargs)
    detail = dict(result.result or {})
    rows = detail.get("unexpected_index_list") or []
    return Failure(expectation=config.type, column=kwargs.get("column"), kind=kwargs.get("kind"),
                   unexpected_count=detail.get("unexpected_count"),
                   rows=[int(r) for r in rows[:MAX_ROWS_REPORTED] if isinstance(r, int)])


def validate_table(table: pa.Table, contract: Contract, *,
                   forbidden_subjects: list[str] | None = None) -> Report:
    """Validate one event-zone table (as it is, or staged before publishing)."""
    ctx = context()
    tag = f"{contract.dataset}_{next(_names)}"
    source = ctx.data_sources.add_pandas(name=f"src_{tag}")
    asset = source.add_dataframe_asset(name=f"asset_{tag}")
    batch = asset.add_batch_definition_whole_dataframe(f"b_{tag}")
    expectations = suite_expectations(contract, forbidden_subjects=forbidden_subjects)
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"event_zone_{tag}", expectations=expectations))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"v_{tag}", data=batch, suite=suite))
    frame = table.to_pandas(types_mapper=pd.ArrowDtype).reset_index(drop=True)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=SAFE_RESULT_FORMAT)
    failures = [_failure(r) for r in result.results if not r.success]
    failures.sort(key=lambda f: (f.expectation, f.column or "", f.kind or ""))
    return Report(dataset=contract.dataset, rows=table.num_rows, success=bool(result.success),
                  evaluated=len(result.results), failures=failures)
