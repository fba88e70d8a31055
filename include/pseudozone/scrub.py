"""Free-text scrubbing: confirmed PII and the tenant's known values replaced by typed tokens.

``scrub`` finds what to replace with the confirming detectors of ``pseudozone.pii``
(libphonenumber, mod-97, Luhn with issuer ranges, ``ipaddress``; on text decoded
as a reader sees it: URL-, JSON- and HTML-decoded, NFKC) and, when given the
tenant's ``KnownValues``, every known subject's name, email, phone, street and
user id wherever it appears.  Each finding's original characters are replaced by
``[email]``, ``[phone]``, ``[ip]``, ``[card]``, ``[iban]`` or ``[pii]`` (a known value);
everything else stays as it was: JSON stays JSON (a number replaced by a token
becomes a quoted string), URLs stay parseable, order numbers, timestamps, prices
and hex ids are left alone.

The scrubber does not check itself: the publish gate and the nightly run look for
the same forms independently (``pseudozone.validation.detect``), so a form the
scrubber misses or skips (``SCRUB_KINDS``) is caught there, not published.

Work grows with the hits: one vectorized RE2 pass marks the values worth a closer
look, and only those are decoded and confirmed in Python.  Columns that repeat
(user agents, URLs) are scrubbed once per distinct value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.pii import scan
from pseudozone.pii.detectors import DEFAULT_REGIONS, KINDS

if TYPE_CHECKING:
    from pseudozone.validation.known import Known

# the forms the scrubber replaces (every form the detectors know)
SCRUB_KINDS: tuple[str, ...] = KINDS

# Dictionary-encode a column when at most this share of its values is distinct.
_DICTIONARY_RATIO = 0.5


def scrub(values: pa.Array | pa.ChunkedArray, *, regions: Iterable[str] = DEFAULT_REGIONS,
          known: Known | None = None) -> pa.Array:
    """Scrub a string column; nulls stay null, values with nothing found are untouched.

    The result may be dictionary-encoded (same values, cheaper to move and write).
    """
    return scrub_with_evidence(values, regions=regions, known=known)[0]


def scrub_with_evidence(values: pa.Array | pa.ChunkedArray, *, regions: Iterable[str] = DEFAULT_REGIONS,
                        known: Known | None = None) -> tuple[pa.Array, scan.Evidence]:
    """``scrub``, and the evidence of its scan: per input row, what the checks found (every form
    the detectors know, and the known values), for a gate to reuse on the rows left as they were."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    where = tuple(regions)

    def run(plain: pa.Array) -> tuple[pa.Array, scan.Evidence]:
        return scan.scrub_with_evidence(plain, kinds=KINDS, regions=where, known=known, replace=SCRUB_KINDS)

    if len(arr) == 0 or arr.null_count == len(arr):
        return arr, run(arr)[1]
    if len(arr) >= 1024:
        sample = arr.slice(0, 4096)
        if len(pc.unique(sample)) > len(sample) * _DICTIONARY_RATIO:
            return run(arr)
    encoded = pc.dictionary_encode(arr)
    if len(encoded.dictionary) <= _DICTIONARY_RATIO * len(arr):
        # few distinct values (user agents, URLs): scrub each once, stay dictionary-encoded
        distinct, evidence = run(encoded.dictionary)
        return (pa.DictionaryArray.from_arrays(encoded.indices, distinct),
                evidence.spread(encoded.indices, arr))
    return run(arr)


def find(values: pa.Array | pa.ChunkedArray, *, regions: Iterable[str] = DEFAULT_REGIONS) -> dict[str, int]:
    """Count values holding each form (for tests and reports; never the values)."""
    counts = dict.fromkeys(KINDS, 0)
    for spans in scan.find(values, kinds=KINDS, regions=tuple(regions)).spans.values():
        for kind in {k for k, _, _ in spans}:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


REDACTED = "[pii]"


def redact_known(texts: Sequence[str | None], known: Sequence[Iterable[str | None]],
                 *, token: str = REDACTED, min_len: int = 3) -> list[str | None]:
    """Remove each row's own values (e.g. its city) from its free text.

    For the PII columns that are not searched for tenant-wide (``find_in_text: false``:
    a city is no leak in another row, but is beside its own subject's pseudonym).
    Row-wise by nature, so used only where a dataset carries PII columns beside free
    text: profiles, one row per user.  Matching is case-insensitive.
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
