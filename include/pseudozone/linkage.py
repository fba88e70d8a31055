"""Ids inside free text replaced by keyed tokens, so that no row links back to its source.

The platform's own ids (order numbers, epoch timestamps, cart tokens, uuids, ULIDs) ride
along in URLs, log lines and JSON properties.  A value unique to one row links that row
one-to-one to the tenant's copy of the data, and through it the row's subject pseudonym
to the tenant's user id.  After the scrubber has replaced PII, every id-shaped token of a
free-text column is replaced by ``[id:<15 consonants>]``: 64 bits of a keyed per-tenant
HMAC (purpose ``link:text``), so the same id gives the same token in every row and
dataset of a tenant (analysts still group and join on it), and nobody without the key
can map a token back or compute it from the tenant's data.  The token holds no digit,
no vowel and no hex run, so no detector reads it as PII and no word search as a name.

Id-shaped (each a whole token, bounded by a character that is no ASCII letter or digit):
a dashed uuid; a ULID (26 Crockford base-32 characters with a digit); 16 or more hex
digits; 7 or more decimal digits (order numbers, epoch seconds and milliseconds, long
amounts in cents).  Shorter numbers (quantities, prices, years, versions) stay as they
are: alone they do not single out a row (docs/adr/0010-linkage.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.pii import scan

TEXT_PURPOSE = "link:text"
_ALPHABET = "bcdfghjklmnpqrstvwxz"  # 20 consonants: 20**15 > 2**64
_TOKEN_CHARS = 15
_HEX = "[0-9a-fA-F]"
_ID = (rf"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
       r"|(?=[0-9A-Za-z]{0,25}[0-9])[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}"
       rf"|{_HEX}{{16,}}|[0-9]{{7,}}")
ID_RE = re.compile(rf"(?<![0-9A-Za-z])(?:{_ID})(?![0-9A-Za-z])")
# RE2 prefilter (no look-around): every value ID_RE can match in, and some more
_PREFILTER = rf"[0-9]{{7}}|{_HEX}{{16}}|{_HEX}{{8}}-{_HEX}{{4}}-|[0-9A-Za-z]{{26}}"

Tokenize = Callable[[list[str]], list[str]]


def token_of(digest_hex: str) -> str:
    """``[id:...]`` of a keyed digest: its first 64 bits in base 20 (consonants only)."""
    n = int(digest_hex[:16], 16)
    chars = []
    for _ in range(_TOKEN_CHARS):
        n, r = divmod(n, len(_ALPHABET))
        chars.append(_ALPHABET[r])
    return "[id:" + "".join(chars) + "]"


def replace_ids(values: pa.Array, pseudonymize: Tokenize) -> pa.Array:
    """``values`` (strings) with every id-shaped token replaced by its keyed token.

    ``pseudonymize`` maps distinct ids to keyed pseudonyms (``vN:<hex>``); JSON stays JSON
    (a number replaced becomes a quoted string), rows without an id are untouched.
    """
    arr = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
    if len(arr) == 0 or arr.null_count == len(arr):
        return arr
    if pa.types.is_dictionary(values.type):
        # a repetitive column: each distinct value once
        return pa.DictionaryArray.from_arrays(values.indices, replace_ids(values.dictionary, pseudonymize))
    candidate = pc.fill_null(pc.match_substring_regex(arr, _PREFILTER), False)
    rows = pc.indices_nonzero(candidate)
    if len(rows) == 0:
        return arr
    texts = arr.take(rows).to_pylist()
    spans = [[(m.start(), m.end()) for m in ID_RE.finditer(t)] for t in texts]
    distinct = sorted({t[s:e] for t, found in zip(texts, spans, strict=True) for s, e in found})
    if not distinct:
        return arr
    tokens = dict(zip(distinct, (token_of(p.rpartition(":")[2]) for p in pseudonymize(distinct)),
                      strict=True))
    out = [scan.replace_spans(t, [(tokens[t[s:e]], s, e) for s, e in found], token=_same) if found else t
           for t, found in zip(texts, spans, strict=True)]
    mask = np.zeros(len(arr), dtype=bool)
    mask[rows.to_numpy()] = True
    return pc.replace_with_mask(arr, pa.array(mask), pa.array(out, pa.string()))


def _same(label: str) -> str:
    return label
