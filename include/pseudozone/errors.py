"""Project exceptions.

Every message is safe to log: it names datasets, columns, types, batch ids,
counts and pseudonyms, never a data value.  Code that catches a library error
whose text may quote a value (pyarrow casts do) re-raises one of these instead
and drops the original text.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

_OS_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EROFS: "the file system is read-only", errno.ENOENT: "no such file or directory"}


def describe_os_error(exc: OSError) -> str:
    """An operating-system error in words (disk full, permission denied, ...) and the path it concerns."""
    what = _OS_ERRORS.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    return f"{what}: {exc.filename}" if exc.filename else what


def machine_failure(exc: BaseException) -> str | None:
    """The machine's failure behind ``exc`` in words (disk full, permission denied, read-only
    file system, state database full, out of memory), or None when it is no such failure.

    Arrow's I/O errors carry no errno, only the system's sentence: it is recognised, never
    echoed (the rest of an Arrow message may name more than a path).
    """
    if isinstance(exc, MemoryError):
        return "out of memory"
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    if isinstance(orig, sqlite3.Error):
        exc = orig
    if isinstance(exc, sqlite3.Error):
        text = str(exc).lower()
        if "disk is full" in text or "disk i/o error" in text:
            return "state database: no space left on the device"
        if "readonly" in text or "read-only" in text:
            return "state database: the file system is read-only"
        return None
    if isinstance(exc, OSError):
        if exc.errno in _OS_ERRORS:
            return _OS_ERRORS[exc.errno]
        text = str(exc)
        for code, words in _OS_ERRORS.items():
            if os.strerror(code) in text:
                return words
    return None


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
