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

The tokenizer never hides PII from the publish gate: where the scrubber's scan found PII
in a row's input (``Evidence``), the confirming detectors read the scrubbed row again,
and an id-shaped run that they confirm as PII (a card or phone number the scrubber was
told not to replace, or missed) stays as it is, so that the gate quarantines the batch.
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


def replace_ids(values: pa.Array, pseudonymize: Tokenize, *,
                evidence: scan.Evidence | None = None) -> pa.Array:
    """``values`` (strings) with every id-shaped token replaced by its keyed token.

    ``pseudonymize`` maps distinct ids to keyed pseudonyms (``vN:<hex>``); JSON stays JSON
    (a number replaced becomes a quoted string), rows without an id are untouched.
    ``evidence`` is the scrubber's scan of the rows before it replaced anything: in a row
    where it found PII, an id the detectors confirm as PII in ``values`` is left for the gate.
    """
    arr = values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values
    if len(arr) == 0 or arr.null_count == len(arr):
        return arr
    suspect = None
    if evidence is not None:
        suspect = evidence.pii if evidence.known_hit is None else evidence.pii | evidence.known_hit
    if not pa.types.is_dictionary(values.type):
        return _replace_plain(arr, pseudonymize, suspect, evidence)
    # a repetitive column: each distinct value once (suspect when any of its rows is)
    per_value = None
    if suspect is not None and suspect.any():
        per_value = np.zeros(len(values.dictionary), bool)
        per_value[values.indices.filter(pa.array(suspect)).drop_null().to_numpy(zero_copy_only=False)] = True
    return pa.DictionaryArray.from_arrays(
        values.indices, _replace_plain(values.dictionary, pseudonymize, per_value, evidence))


def _replace_plain(arr: pa.Array, pseudonymize: Tokenize, suspect: np.ndarray | None,
                   evidence: scan.Evidence | None) -> pa.Array:
    candidate = pc.fill_null(pc.match_substring_regex(arr, _PREFILTER), False)
    rows = pc.indices_nonzero(candidate)
    if len(rows) == 0:
        return arr
    texts = arr.take(rows).to_pylist()
    spans = [[(m.start(), m.end()) for m in ID_RE.finditer(t)] for t in texts]
    if suspect is not None and evidence is not None and suspect.any():
        spans = _spare_pii(texts, spans, suspect[rows.to_numpy()], evidence)
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


def _spare_pii(texts: list[str], spans: list[list[tuple[int, int]]], suspect: np.ndarray,
               evidence: scan.Evidence) -> list[list[tuple[int, int]]]:
    """``spans`` without the ids that overlap PII the detectors confirm in a suspect row."""
    at = np.flatnonzero(suspect & np.array([bool(s) for s in spans], bool))
    if len(at) == 0:
        return spans
    found = scan.find(pa.array([texts[i] for i in at], pa.string()), kinds=evidence.kinds,
                      regions=evidence.regions, known=evidence.known)
    out = list(spans)
    for k, i in enumerate(at.tolist()):
        pii = found.spans.get(k, [])
        out[i] = [(s, e) for s, e in spans[i] if not any(s < pe and ps < e for _, ps, pe in pii)]
    return out


def _same(label: str) -> str:
    return label
