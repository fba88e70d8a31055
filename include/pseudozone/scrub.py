"""Free-text scrubbing with vectorized RE2 regexes (``pyarrow.compute``).

Each pattern replaces what it finds with a typed token (``[email]``, ...).
The scrubber prefers false positives: a long digit run that might be a phone
or card number is scrubbed even if it was an order number.  The same patterns
are the detectors that validation uses (``PATTERNS``), so what the scrubber
leaves, the validator would not flag.

Work is proportional to the rows that match: one combined regex finds the rows
that hold anything at all, and only those rows get the per-pattern
replacements.  Low-cardinality columns (user agents, URLs) are scrubbed once
per distinct value through dictionary encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

# Order matters: earlier patterns consume text that later ones could misread
# (an email's digits as a phone, an IPv4 as a phone, a card as a phone).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H = r"[0-9A-Fa-f]{1,4}"
_SEP = r"(?:[ .\-/]|%20)"  # separators inside phone numbers, URL-encoded space too
PATTERNS: tuple[tuple[str, str], ...] = (
    ("email", r"[\p{L}\p{N}._%+\-]+(?:@|%40|\(at\)|\[at\])[\p{L}\p{N}\-]+(?:\.[\p{L}\p{N}\-]+)*\.\p{L}{2,}"),
    ("iban", r"(?i)\b[a-z]{2}\d{2}(?:[ \-]?[a-z0-9]){11,30}\b"),
    # international: +49 …, 0049 …, 00 81 …, URL-encoded %2B49…
    ("phone", rf"(?:\+|%2[Bb]|\b00{_SEP}?)\d{{1,3}}{_SEP}?(?:\(?\d{{1,5}}\)?{_SEP}?){{1,5}}\d{{2,5}}"),
    ("card", r"\b(?:\d[ \-]?){12,18}\d\b"),
    ("ip", rf"(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,6}}:(?:{_H}(?::{_H}){{0,5}})?"),
    ("ip", rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b"),
    # (555) 123-4567, (030) 1234567
    ("phone", rf"\(\d{{2,5}}\){_SEP}?\d{{2,8}}(?:{_SEP}?\d{{2,5}})?"),
    # North American 555-123-4567 / 555.123.4567 / 555 123 4567
    ("phone", rf"\b\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{4}}\b"),
    # national trunk prefix: 030-12345678, 07700 900123, 06 12 34 56 78
    ("phone", r"\b0\d{1,4}(?:(?:[ \-/]|%20)\d{2,8}){1,4}\b"),
    # bare digit runs long enough to be a phone number
    ("phone", r"\b\d{9,15}\b"),
)
COMBINED = "|".join(f"(?:{p})" for _, p in PATTERNS)

# Dictionary-encode a column when at most this share of its values is distinct.
_DICTIONARY_RATIO = 0.5


def _scrub_plain(arr: pa.Array) -> pa.Array:
    if len(arr) == 0 or arr.null_count == len(arr):
        return arr
    hit = pc.match_substring_regex(arr, COMBINED)
    hit = pc.fill_null(hit, False)
    if not pc.any(hit).as_py():
        return arr
    sub = pc.filter(arr, hit)
    for token_name, pattern in PATTERNS:
        sub = pc.replace_substring_regex(sub, pattern, f"[{token_name}]")
    return pc.replace_with_mask(arr, hit, sub)


def scrub(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Scrub a string column; nulls stay null, non-matching values are untouched.

    The result may be dictionary-encoded (same values, cheaper to move and write).
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if len(arr) == 0:
        return arr
    encoded = pc.dictionary_encode(arr)
    if len(encoded.dictionary) <= _DICTIONARY_RATIO * len(arr):
        # few distinct values (user agents, URLs): scrub each once, stay dictionary-encoded
        return pa.DictionaryArray.from_arrays(encoded.indices, _scrub_plain(encoded.dictionary))
    return _scrub_plain(arr)


def find(values: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """Count values matching each pattern kind (for checks and reports; never the values)."""
    counts: dict[str, int] = {}
    for token_name, pattern in PATTERNS:
        hit = pc.fill_null(pc.match_substring_regex(values, pattern), False)
        counts[token_name] = counts.get(token_name, 0) + int(pc.sum(hit).as_py() or 0)
    return counts


REDACTED = "[pii]"


def redact_known(texts: Sequence[str | None], known: Sequence[Iterable[str | None]],
                 *, token: str = REDACTED, min_len: int = 3) -> list[str | None]:
    """Remove each row's own known PII values (e.g. its name) from its free text.

    Row-wise by nature (each row has its own values), so it is used only where
    a dataset carries PII columns beside free text: profiles, one row per user.
    Matching is case-insensitive.
    """
    out: list[str | None] = []
    for text, values in zip(texts, known, strict=True):
        if text is None:
            out.append(None)
            continue
        for value in values:
            if value is None or len(value.strip()) < min_len:
                continue
            out_text = _replace_casefold(text, value.strip(), token)
            text = out_text
        out.append(text)
    return out


def _replace_casefold(text: str, needle: str, token: str) -> str:
    low_text, low_needle = text.lower(), needle.lower()
    if len(low_text) != len(text) or low_needle not in low_text:
        # lower() changed the length (rare scripts): fall back to an exact match
        return text.replace(needle, token)
    parts: list[str] = []
    pos = 0
    while (idx := low_text.find(low_needle, pos)) != -1:
        parts.append(text[pos:idx])
        parts.append(token)
        pos = idx + len(needle)
    parts.append(text[pos:])
    return "".join(parts)
