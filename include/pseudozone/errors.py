"""Project exceptions.

Every message is safe to log: it names datasets, columns, types, batch ids,
counts and pseudonyms, never a data value.  Code that catches a library error
whose text may quote a value (pyarrow casts do) re-raises one of these instead
and drops the original text.
"""

from __future__ import annotations

from typing import Any


class PseudozoneError(Exception):
    """Base class of every error pseudozone raises on purpose."""


class ConfigError(PseudozoneError):
    """The environment or a configuration file is wrong."""


class KeyMaterialError(PseudozoneError):
    """A key is missing, malformed, unreadable or insecurely stored."""


class ContractError(PseudozoneError):
    """A dataset contract file is itself invalid."""


class ContractViolation(PseudozoneError):
    """A batch does not satisfy its dataset contract; the batch is rejected whole.

    ``code`` is machine-readable and stable; ``columns`` names the offending
    columns; ``detail`` is a human sentence that never quotes a data value.
    ``rows`` counts the offending rows, ``rows_at`` gives the first of them (0-based
    positions in the batch as delivered) and ``details`` breaks the violation down
    (per column, say); both hold names, counts and positions only, never a value.
    """

    def __init__(self, code: str, detail: str, *, columns: list[str] | None = None,
                 rows: int | None = None, rows_at: list[int] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.columns = sorted(columns or [])
        self.rows = rows
        self.rows_at = rows_at
        self.details = details

    def to_reason(self) -> dict[str, Any]:
        reason: dict[str, Any] = {"code": self.code, "detail": self.detail,
                                  "columns": self.columns}
        if self.rows is not None:
            reason["rows"] = self.rows
        if self.rows_at is not None:
            reason["rows_at"] = self.rows_at
        if self.details is not None:
            reason["details"] = self.details
        return reason
