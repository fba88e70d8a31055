"""PII detectors over Arrow string columns: one boolean per row, no value kept.

The forms are the scrubber's (``pseudozone.scrub.PATTERNS``), so what the scrubber
leaves the validator does not flag, and what the validator flags is a scrub miss.
Card numbers count only when Luhn-valid (order numbers are not cards).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.scrub import PATTERNS

KINDS = ("email", "phone", "ip", "card", "iban")
_BY_KIND = {kind: "|".join(f"(?:{p})" for k, p in PATTERNS if k == kind) for kind in KINDS}
NONCE_BYTES = 12  # AES-GCM nonce at the start of every PII-zone value (pseudozone.keys)
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


def per_distinct(values: pa.Array, flag: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``flag`` (a boolean per value) computed once per distinct value, then spread to every row.

    Zone columns repeat a lot (user agents, URLs, event names, pseudonyms), so regexes
    and tokenizers run on the distinct values only; a column that barely repeats is
    flagged as it is.  Nulls give False.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        encoded = values
    elif len(values) < 1024:
        return pc.fill_null(flag(values), False)
    else:
        # a column of ids barely repeats: a sample says so before paying for the encoding
        sample = values.slice(0, 4096)
        if len(pc.unique(sample)) > len(sample) // 2:
            return pc.fill_null(flag(values), False)
        encoded = pc.dictionary_encode(values)
    return pc.fill_null(pc.take(flag(encoded.dictionary), encoded.indices), False)


def _strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())
    return arr


def _confirm_cards(arr: pa.Array, hit: pa.Array) -> pa.Array:
    # candidates are few: confirm each with the Luhn checksum
    rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if len(rows) == 0:
        return hit
    flags = hit.to_numpy(zero_copy_only=False).copy()
    for row, text in zip(rows, arr.take(pa.array(rows)).to_pylist(), strict=True):
        flags[row] = _has_luhn_card(text)
    return pa.array(flags)


def any_of(values: pa.Array | pa.ChunkedArray, kinds: list[str] | tuple[str, ...] = KINDS) -> pa.Array:
    """True where a value holds PII of any of ``kinds`` (one regex pass for the non-card forms)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown PII form(s) {unknown}; expected some of {KINDS}")
    plain = "|".join(f"(?:{_BY_KIND[k]})" for k in kinds if k != "card")

    def flag(arr: pa.Array) -> pa.Array:
        arr = _strings(arr)
        found = (pc.fill_null(pc.match_substring_regex(arr, plain), False) if plain
                 else pa.array(np.zeros(len(arr), dtype=bool)))
        if "card" in kinds:
            found = pc.or_(found, matches(arr, "card"))
        return found

    return per_distinct(values, flag)


def ciphertext_like(values: pa.Array | pa.ChunkedArray, *, min_bytes: int = 28) -> pa.Array:
    """True where a value looks like AES-GCM output: binary, ``min_bytes`` or more, not readable text.

    Ciphertext is random bytes: a printable UTF-8 reading of 28 or more of them is
    vanishingly rare, so a value that reads as text is plaintext that got in.
    Vectorized over the data buffer; only the rare all-text-byte candidates are
    decoded one by one.  Nulls are fine (a missing value).
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        return pa.array(np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
    n = len(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = ~valid | (lengths >= min_bytes)
    offsets_dtype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offsets_dtype)[arr.offset:arr.offset + n + 1]
    data = arr.buffers()[2]
    if data is not None and n and offsets[-1] > offsets[0]:
        raw = np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]
        # text bytes: TAB, LF, CR, printable ASCII and any byte of a UTF-8 sequence
        texty = ((raw >= 0x20) & (raw != 0x7F)) | (raw == 0x09) | (raw == 0x0A) | (raw == 0x0D)
        non_text = np.concatenate([[0], np.cumsum(~texty)])
        starts = (offsets[:-1] - offsets[0]).astype(np.int64)
        ends = (offsets[1:] - offsets[0]).astype(np.int64)
        # the whole value, or what follows a 12-byte nonce (a nonce glued to plaintext)
        after_nonce = np.minimum(starts + NONCE_BYTES, ends)
        whole = non_text[ends] - non_text[starts] == 0
        tail = (non_text[ends] - non_text[after_nonce] == 0) & (ends - after_nonce >= 4)
        candidates = np.flatnonzero(valid & (lengths > 0) & (whole | tail))
        for row in candidates:
            blob = arr[int(row)].as_py()
            for part in (blob, blob[NONCE_BYTES:]):
                try:
                    text = part.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                if len(text) >= 4 or part is blob:
                    ok[row] = False
                    break
    return pa.array(ok)


def matches(values: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """True where a value holds PII of this form (nulls: False)."""
    if kind not in _BY_KIND:
        raise ValueError(f"unknown PII form {kind!r}; expected one of {KINDS}")
    arr = _strings(values)
    hit = pc.fill_null(pc.match_substring_regex(arr, _BY_KIND[kind]), False)
    return _confirm_cards(arr, hit) if kind == "card" else hit
