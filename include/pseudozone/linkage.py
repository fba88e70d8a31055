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

The definition is per row (``_replace_rows``: ``ID_RE`` matches, then ``scan.replace_spans``,
JSON- and URL-aware); it runs, per row in Python, only where it may do more than put each id's
token in its place.  Every other row is done over the bytes of many rows at once
(``_replace_fast``), with the same result byte for byte (tests/unit/test_linkage_fast.py).
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
TOKEN_WIDTH = _TOKEN_CHARS + 5  # "[id:" + 15 consonants + "]"
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
    texts = arr.take(rows)
    # most rows in Arrow kernels (_replace_fast); the rows where the per-row definition does more
    # than put a token in place of each id, or might, row by row (_replace_rows)
    slow, json = _slow_rows(texts)
    if suspect is not None and evidence is not None:
        slow |= suspect[rows.to_numpy()]
    out = _replace_fast(texts, slow, json, pseudonymize)
    at = np.flatnonzero(slow)
    if len(at):
        sub = suspect[rows.to_numpy()[at]] if suspect is not None else None
        done = _replace_rows(texts.take(pa.array(at)).to_pylist(), pseudonymize, sub, evidence)
        mask = np.zeros(len(texts), dtype=bool)
        mask[at] = True
        out = pc.replace_with_mask(out, pa.array(mask), pa.array(done, pa.string()))
    mask = np.zeros(len(arr), dtype=bool)
    mask[rows.to_numpy()] = True
    return pc.replace_with_mask(arr, pa.array(mask), out)


def _replace_rows(texts: list[str], pseudonymize: Tokenize, suspect: np.ndarray | None,
                  evidence: scan.Evidence | None) -> list[str]:
    """The definition, row by row: every ``ID_RE`` match replaced by ``scan.replace_spans`` (JSON-
    and URL-aware), except the ids ``_spare_pii`` leaves in suspect rows."""
    spans = [[(m.start(), m.end()) for m in ID_RE.finditer(t)] for t in texts]
    if suspect is not None and evidence is not None and suspect.any():
        spans = _spare_pii(texts, spans, suspect, evidence)
    distinct = sorted({t[s:e] for t, found in zip(texts, spans, strict=True) for s, e in found})
    if not distinct:
        return texts
    mapped = dict(zip(distinct, tokens(pseudonymize, distinct).to_pylist(), strict=True))
    return [scan.replace_spans(t, [(mapped[t[s:e]], s, e) for s, e in found], token=_same) if found else t
            for t, found in zip(texts, spans, strict=True)]


# -- the same over the rows' bytes at once ----------------------------------------------------------
#
# An ``ID_RE`` match starts where no ASCII letter or digit precedes and ends where none follows, and
# holds letters and digits only, but for a uuid's dashes: it is a whole maximal run of ASCII letters
# and digits (a "run") of the right shape (a ULID, 16+ hex digits, 7+ decimal digits), or five runs
# of 8, 4, 4, 4 and 12 hex digits joined by single dashes (a uuid, which ``ID_RE`` tries first).
# Runs are found and classified with numpy over the UTF-8 bytes of many rows together (non-ASCII
# bytes are never letters or digits to ``ID_RE``), and the ids replaced by copying bytes.

# ``scan.replace_spans`` writes an id in a URL's authority (after '://' with no '/', '?', '#' or
# space since) as '<token>.invalid': rows where that may be (RE2's \s is narrower than Python's,
# so this matches more)
_AUTHORITY = rf"://[^/?#\s]*(?:{_PREFILTER})"
# ... and a bare id (outside JSON strings) of a JSON text as a JSON string: rows where an id may
# stand outside the strings of a JSON text (every row with an id after a '{' or '[' where quotes
# pair up as a JSON text's do)
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'
_MAYBE_BARE = rf'(?s)^[^"\[{{]*[\[{{](?:[^"]|{_JSON_STRING})*?(?:{_PREFILTER})'
# JSON that ``json.loads`` surely reads (RFC 8259, containers nested at most 3 deep, whitespace as
# Python's json module skips it); longer values are left to json itself (Python caps int digits)
_WS = r"[ \t\n\r]*"
_STRICT_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?"
_SCALAR = rf"(?:{_STRICT_STRING}|{_NUMBER}|true|false|null)"
_JSON_MAX_CHARS = 4000


def _containers(value: str) -> str:
    member = rf"{_STRICT_STRING}{_WS}:{_WS}{value}{_WS}"
    return (rf"\{{{_WS}(?:{member}(?:,{_WS}{member})*)?\}}"
            rf"|\[{_WS}(?:{value}{_WS}(?:,{_WS}{value}{_WS})*)?\]")


_VALUE2 = rf"(?:{_SCALAR}|{_containers(_SCALAR)})"
_VALUE3 = rf"(?:{_SCALAR}|{_containers(_VALUE2)})"
_STRICT_JSON = rf"^{_WS}(?:{_containers(_VALUE3)}){_WS}$"
# rows are handled this many bytes at a time (numpy temporaries are a few times as large)
_CHUNK_BYTES = 8 << 20


def _byte_levels() -> np.ndarray:
    # per byte: 1 a decimal digit, 2 another hex digit, 3 another Crockford base-32 letter, 4 another
    # ASCII letter; 0 anything else (a run is all digits when its highest level is 1, ...)
    level = np.zeros(256, np.uint8)
    for value, chars in ((4, "ILOUilou"), (3, "GHJKMNPQRSTVWXYZghjkmnpqrstvwxyz"), (2, "ABCDEFabcdef"),
                         (1, "0123456789")):
        level[np.frombuffer(chars.encode(), np.uint8)] = value
    return level


_LEVEL = _byte_levels()
_DIGIT, _HEX_DIGIT, _CROCKFORD = 1, 2, 3
_OCTAL = np.zeros(256, bool)
_OCTAL[np.frombuffer(b"01234567", np.uint8)] = True
_DASH, _QUOTE, _BACKSLASH = ord("-"), ord('"'), ord("\\")


def _matches(values: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.match_substring_regex(values, pattern), False)
                      .to_numpy(zero_copy_only=False))


def _strict_json(values: pa.Array) -> np.ndarray:
    short = np.asarray(pc.less(pc.utf8_length(values), _JSON_MAX_CHARS).to_numpy(zero_copy_only=False))
    return short & _matches(values, _STRICT_JSON)


def _slow_rows(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Rows the fast path leaves to ``_replace_rows`` (an id that may be in a URL's authority, or
    one that may stand outside the strings of a JSON text that is not surely JSON), and the rows
    that are surely JSON (``_strict_json``) among those where an id may stand outside the strings."""
    slow = _matches(texts, _AUTHORITY)
    json = np.zeros(len(texts), bool)
    bare = np.flatnonzero(~slow & _matches(texts, _MAYBE_BARE))
    if len(bare):
        json[bare] = _strict_json(texts.take(pa.array(bare)))
        slow[bare[~json[bare]]] = True
    return slow, json


def _buffers(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(row offsets into the bytes, the UTF-8 bytes) of a string array without nulls."""
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
    return offsets, np.frombuffer(values.buffers()[2], np.uint8)


def _id_spans(offsets: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte positions of the ``ID_RE`` matches in the rows, in order."""
    lo, hi = int(offsets[0]), int(offsets[-1])
    level = _LEVEL[data[lo:hi]]
    alnum = level > 0
    edge = np.zeros(hi - lo + 1, bool)  # a row starts (or the last one ends) here
    edge[offsets - lo] = True
    before = np.zeros(hi - lo, bool)
    before[1:] = alnum[:-1]
    after = np.zeros(hi - lo, bool)
    after[:-1] = alnum[1:]
    starts = np.flatnonzero(alnum & (~before | edge[:-1]))
    ends = np.flatnonzero(alnum & (~after | edge[1:])) + 1
    if len(starts) == 0:
        return starts, ends
    length = ends - starts
    # each run's highest level (the bytes between runs are level 0)
    top = np.maximum.reduceat(level, starts)
    single = (((top == _DIGIT) & (length >= 7)) | ((top <= _HEX_DIGIT) & (length >= 16))
              | ((length == 26) & _OCTAL[data[lo + starts]] & (top <= _CROCKFORD)))
    # a uuid: runs k..k+4 of 8, 4, 4, 4, 12 hex digits, each after a single dash in the same row
    hexes = top <= _HEX_DIGIT
    uuid = np.zeros(len(starts), bool)
    if len(starts) >= 5:
        m = len(starts) - 4
        uuid[:m] = (length[:m] == 8) & hexes[:m]
        for k, size in enumerate((4, 4, 4, 12), start=1):
            dash = ends[k - 1:k - 1 + m]
            uuid[:m] &= ((starts[k:k + m] == dash + 1) & (data[lo + dash] == _DASH) & ~edge[dash + 1]
                         & (length[k:k + m] == size) & hexes[k:k + m])
    at = np.flatnonzero(uuid)
    take = single | uuid
    for k in range(1, 5):
        take[at + k] = False  # the runs a uuid holds after its first
    span_end = ends.copy()
    span_end[at] = ends[at + 4]
    return starts[take] + lo, span_end[take] + lo


def _outside_strings(offsets: np.ndarray, data: np.ndarray, rows: np.ndarray,
                     positions: np.ndarray) -> np.ndarray:
    """Whether each position is outside the strings of its row (``rows``), a JSON text."""
    quotes = np.flatnonzero(data[offsets[0]:offsets[-1]] == _QUOTE) + offsets[0]
    # a quote after an odd run of backslashes is escaped (backslashes are in strings only, in JSON)
    escaped = np.zeros(len(quotes), bool)
    quote_row = np.searchsorted(offsets, quotes, side="right") - 1
    first = offsets[quote_row]
    back = quotes - 1
    going = (back >= first) & (data[np.maximum(back, 0)] == _BACKSLASH)
    while going.any():
        escaped ^= going
        back -= 1
        going &= (back >= first) & (data[np.maximum(back, 0)] == _BACKSLASH)
    plain = quotes[~escaped]
    before = np.searchsorted(plain, positions) - np.searchsorted(plain, offsets[rows])
    return before % 2 == 0


def _replace_fast(texts: pa.Array, slow: np.ndarray, json: np.ndarray, pseudonymize: Tokenize) -> pa.Array:
    """``texts`` (no nulls) with the ids of the rows not ``slow`` replaced as ``_replace_rows`` does.

    Those rows are text where ``scan.replace_spans`` puts each id's token in its place, or JSON that
    ``_strict_json`` reads (``json``): there an id outside the JSON strings becomes a JSON string
    (``"[id:...]"``), as ``scan.replace_spans`` writes it, and a row whose result is not surely JSON
    then (``-1234567``) goes to ``_replace_rows`` after all.
    """
    fast = np.flatnonzero(~slow)
    if len(fast) == 0:
        return texts
    sub = texts.take(pa.array(fast))
    is_json = json[fast]
    offsets, _ = _buffers(sub)
    pieces = []
    first = 0
    while first < len(sub):
        last = max(int(np.searchsorted(offsets, offsets[first] + _CHUNK_BYTES, side="right")) - 1, first + 1)
        pieces.append(_replace_chunk(sub.slice(first, last - first), is_json[first:last], pseudonymize))
        first = last
    out = pa.concat_arrays(pieces) if len(pieces) > 1 else pieces[0]
    json_rows = np.flatnonzero(is_json)
    if len(json_rows):
        changed = json_rows[~_strict_json(out.take(pa.array(json_rows)))]
        slow[fast[changed]] = True  # not surely JSON after the change: the definition decides
    mask = np.zeros(len(texts), dtype=bool)
    mask[fast] = True
    return pc.replace_with_mask(texts, pa.array(mask), out)


def _replace_chunk(values: pa.Array, json_rows: np.ndarray, pseudonymize: Tokenize) -> pa.Array:
    offsets, data = _buffers(values)
    starts, ends = _id_spans(offsets, data)
    if len(starts) == 0:
        return values
    n = len(values)
    span_row = np.searchsorted(offsets, starts, side="right") - 1
    # bare: outside the strings of a JSON text
    bare = np.zeros(len(starts), bool)
    in_json = json_rows[span_row]
    if in_json.any():
        bare[in_json] = _outside_strings(offsets, data, span_row[in_json], starts[in_json])
    # every row cut into pieces at its ids' edges: text, id, text, id, ..., text
    cuts = np.empty(n + 1 + 2 * len(starts), np.int32)
    row_at = np.arange(n + 1) + 2 * np.searchsorted(span_row, np.arange(n + 1))
    cuts[row_at] = offsets
    id_at = np.arange(len(starts)) * 2 + span_row + 1
    cuts[id_at] = starts
    cuts[id_at + 1] = ends
    pieces = pa.StringArray.from_buffers(len(cuts) - 1, pa.py_buffer(cuts), values.buffers()[2])
    is_id = np.zeros(len(cuts) - 1, bool)
    is_id[id_at] = True
    encoded = pc.dictionary_encode(pieces.filter(pa.array(is_id)))
    token = tokens(pseudonymize, encoded.dictionary.to_pylist()).take(encoded.indices)
    token = pc.if_else(pa.array(bare), pc.binary_join_element_wise('"', token, '"', ""), token)
    pieces = pc.replace_with_mask(pieces, pa.array(is_id), token)
    rows = pa.ListArray.from_arrays(pa.array(row_at.astype(np.int32)), pieces)
    return pc.binary_join(rows, "")


_ALPHABET_BYTES = np.frombuffer(_ALPHABET.encode(), np.uint8)
_HEX_VALUE = np.zeros(256, np.uint64)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX_VALUE[ord(_c)] = _HEX_VALUE[ord(_c.upper())] = _i
del _i, _c


def tokens(pseudonymize: Tokenize, distinct: list[str]) -> pa.Array:
    """``token_of`` each distinct id's keyed pseudonym, computed over all of them at once."""
    pseudonyms = pa.array(pseudonymize(distinct), pa.string())
    head = pc.utf8_slice_codeunits(pseudonyms, start=-64, stop=-48)
    n = len(head)
    if n == 0:
        return pa.array([], pa.string())
    if not pc.all(pc.match_substring_regex(pseudonyms, r":[0-9a-f]{64}$")).as_py():
        return pa.array([token_of(p.rpartition(":")[2]) for p in pseudonyms.to_pylist()], pa.string())
    offsets = np.frombuffer(head.buffers()[1], np.int32)[head.offset:head.offset + n + 1]
    data = np.frombuffer(head.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].reshape(n, 16)
    value = np.zeros(n, np.uint64)
    for k in range(16):
        value = (value << np.uint64(4)) | _HEX_VALUE[data[:, k]]
    return _token_strings(value)


_tokens = tokens  # the name ingest.text_pseudonyms uses


def digest_tokens(digests: np.ndarray) -> pa.Array:
    """``token_of`` the hex of each row of ``digests`` ((n, 32) uint8 keyed digests), at once."""
    head = np.ascontiguousarray(digests[:, :8]).view(">u8").reshape(len(digests))
    return _token_strings(head.astype(np.uint64))


def _token_strings(value: np.ndarray) -> pa.Array:
    """``[id:...]`` of each 64-bit value (``token_of``'s base 20, least significant digit first)."""
    n = len(value)
    value = value.copy()
    out = np.empty((n, TOKEN_WIDTH), np.uint8)
    out[:, :4] = np.frombuffer(b"[id:", np.uint8)
    out[:, -1] = ord("]")
    base = np.uint64(len(_ALPHABET))
    for k in range(_TOKEN_CHARS):
        out[:, 4 + k] = _ALPHABET_BYTES[(value % base).astype(np.intp)]
        value //= base
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, n * TOKEN_WIDTH + 1, TOKEN_WIDTH, dtype=np.int32)),
        pa.py_buffer(out.tobytes()))


# -- the tokens already in published text (a pseudonym rotation steps them) --------------------------

TOKEN_RE = re.compile(rf"\[id:[a-z]{{{_TOKEN_CHARS}}}\]")  # what a rotation takes for a token
_TOKEN_HEAD = np.frombuffer(b"[id:", np.uint8)
_LOWER = np.zeros(256, bool)
_LOWER[ord("a"):ord("z") + 1] = True


def _token_matches(arr: pa.Array) -> tuple[np.ndarray, pa.Array] | None:
    """(where each ``TOKEN_RE`` match starts in the data buffer, the matches) of a string array
    (no dictionary); None when there is none."""
    n = len(arr)
    if n == 0 or arr.null_count == n or arr.buffers()[2] is None:
        return None
    wide = pa.types.is_large_string(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if wide else np.int32)[arr.offset:arr.offset + n + 1]
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi - lo < TOKEN_WIDTH:
        return None
    # candidates: a '[' with a whole token's room after it in the data; then the shape, then the row
    at = np.flatnonzero(data[lo:hi - TOKEN_WIDTH + 1] == _TOKEN_HEAD[0]) + lo
    window = data[at[:, None] + np.arange(TOKEN_WIDTH)]
    ok = (window[:, :4] == _TOKEN_HEAD).all(axis=1) & (window[:, -1] == ord("]"))
    ok &= _LOWER[window[:, 4:-1]].all(axis=1)
    at, window = at[ok], window[ok]
    row = np.searchsorted(offsets, at, side="right") - 1
    inside = at + TOKEN_WIDTH <= offsets[row + 1]
    if arr.null_count:
        inside &= np.asarray(arr.is_valid().to_numpy(zero_copy_only=False))[row]
    at, window = at[inside], window[inside]
    if len(at) == 0:
        return None
    found = pa.StringArray.from_buffers(
        len(at), pa.py_buffer(np.arange(0, (len(at) + 1) * TOKEN_WIDTH, TOKEN_WIDTH, dtype=np.int32)),
        pa.py_buffer(np.ascontiguousarray(window)))
    return at, found


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise TypeError(f"tokens are found in strings, not {arr.type}")
    return arr


def find_tokens(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct ``TOKEN_RE`` matches of ``values`` (strings), in the order in which
    ``map_tokens`` hands them to its mapping."""
    matches = _token_matches(_plain(values))
    return pa.array([], pa.string()) if matches is None else pc.dictionary_encode(matches[1]).dictionary


def map_tokens(values: pa.Array | pa.ChunkedArray, mapping: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``values`` (strings) with every ``TOKEN_RE`` match replaced by its image under ``mapping``,
    which takes the distinct matches (a string array) and returns one ``TOKEN_WIDTH``-character
    string each, in order: what ``TOKEN_RE.sub`` does row by row, over the bytes of all rows.

    A match starts with the only ``[`` it holds, so matches never overlap and each is found
    where it starts; a token has the width of what it replaces, so only bytes change.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        return pa.DictionaryArray.from_arrays(arr.indices, map_tokens(arr.dictionary, mapping))
    matches = _token_matches(_plain(arr))
    if matches is None:
        return arr
    at, found = matches
    encoded = pc.dictionary_encode(found)
    image = mapping(encoded.dictionary)
    if len(image) != len(encoded.dictionary) or image.null_count or \
            not pc.all(pc.equal(pc.binary_length(image), TOKEN_WIDTH)).as_py():
        raise ValueError(f"a token mapping must give one {TOKEN_WIDTH}-byte token per token")
    image_offsets = np.frombuffer(image.buffers()[1], np.int32)[image.offset:image.offset + len(image) + 1]
    image_bytes = np.frombuffer(image.buffers()[2], np.uint8)[image_offsets[0]:image_offsets[-1]]
    out = np.frombuffer(arr.buffers()[2], np.uint8).copy()
    indices = encoded.indices.to_numpy()
    out[at[:, None] + np.arange(TOKEN_WIDTH)] = image_bytes.reshape(-1, TOKEN_WIDTH)[indices]
    return pa.Array.from_buffers(arr.type, len(arr), [arr.buffers()[0], arr.buffers()[1], pa.py_buffer(out)],
                                 null_count=arr.null_count, offset=arr.offset)


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
