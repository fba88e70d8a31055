"""Great Expectations 1.x pieces: quiet setup, a safe result format, custom expectations.

Results are always requested with ``SAFE_RESULT_FORMAT``: counts and row positions,
``exclude_unexpected_values`` so that GX does not copy the values it found into the
results (its default echoes them, a known leak of PII into validation stores and Data
Docs).  ``include_unexpected_rows`` is never used: that flag does not honour the
exclusion.
"""

from __future__ import annotations

import logging
from typing import Any

logging.getLogger("great_expectations").setLevel(logging.WARNING)  # before the import

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.execution_engine import PandasExecutionEngine  # noqa: E402
from great_expectations.expectations.expectation import ColumnMapExpectation  # noqa: E402
from great_expectations.expectations.metrics import (  # noqa: E402
    ColumnMapMetricProvider,
    column_condition_partial,
)

from pseudozone.validation import detect  # noqa: E402

logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

SAFE_RESULT_FORMAT: dict[str, Any] = {"result_format": "COMPLETE", "exclude_unexpected_values": True}


class ColumnValuesFreeOfPii(ColumnMapMetricProvider):
    """Row is True when the value holds no PII of the given form (Arrow RE2 + Luhn)."""

    condition_metric_name = "column_values.free_of_pii"
    condition_value_keys = ("kind",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, kind: str, **kwargs: Any) -> pd.Series:
        found = detect.matches(pa.array(column, from_pandas=True), kind)
        return ~pd.Series(found.to_numpy(zero_copy_only=False), index=column.index)


class ExpectColumnValuesToBeFreeOfPii(ColumnMapExpectation):
    """Expect no value of the column to hold an email, phone, IP, Luhn-valid card or IBAN."""

    kind: str
    map_metric = "column_values.free_of_pii"
    success_keys = ("kind", "mostly")


def context() -> Any:
    """An ephemeral GX context without progress bars (this module builds no Data Docs)."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx
