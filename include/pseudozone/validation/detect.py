"""PII detectors over Arrow string columns: one boolean per row, no value kept.

The forms are the scrubber's (``pseudozone.scrub.PATTERNS``), so what the scrubber
leaves the validator does not flag, and what the validator flags is a scrub miss.
Card numbers count only when Luhn-valid (order numbers are not cards).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.scrub import PATTERNS

KINDS = ("email", "phone", "ip", "card", "iban")
_BY_KIND = {kind: "|".join(f"(?:{p})" for k, p in PATTERNS if k == kind) for kind in KINDS}
_DIGIT_RUN = re.compile(r"(?:\d[ \-]?){12,18}\d")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _has_luhn_card(text: str) -> bool:
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            return True
    return False


def matches(values: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """True where a value holds PII of this form (nulls: False)."""
    if kind not in _BY_KIND:
        raise ValueError(f"unknown PII form {kind!r}; expected one of {KINDS}")
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    hit = pc.fill_null(pc.match_substring_regex(arr, _BY_KIND[kind]), False)
    if kind != "card" or not pc.any(hit).as_py():
        return hit
    # candidates are few: confirm each with the Luhn checksum
    flags = hit.to_pylist()
    texts = arr.to_pylist()
    return pa.array([bool(f) and _has_luhn_card(t) for f, t in zip(flags, texts, strict=True)], pa.bool_())
