"""Find and replace PII in Arrow string columns; the cost grows with the hits, not the rows.

1. A cheap vectorized RE2 pass over the whole column (its distinct values, when they
   repeat) marks the values that hold something PII-shaped, something encoded
   (``%40``, ``\\u0040``, ``&#64;``) or something NFKC would change (``＠``).
2. Only those values are decoded (``normalize``) and run through the confirming
   detectors (``detectors``) and, where given, the search for the tenant's known
   values (``pseudozone.validation.known.KnownValues``).
3. ``find`` reports which values hold what; ``scrub`` replaces the original characters
   each finding came from with a typed token, keeping JSON valid where it was (a number
   replaced by a token becomes a quoted string) and URLs parseable.

Nothing here logs or returns a found value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.pii import detectors
from pseudozone.pii.normalize import ENCODED_RE2, OTHER_DIGITS_RE2, identity, normalize

if TYPE_CHECKING:
    from pseudozone.validation.known import Known

KINDS = detectors.KINDS
KNOWN = "pii"  # the token of a tenant's known value (a name, a street, …)

_IBAN_COUNTRIES = ("AD|AE|AL|AT|AZ|BA|BE|BG|BH|BI|BR|BY|CH|CR|CY|CZ|DE|DJ|DK|DO|DZ|EE|EG|ES|FI|FK|FO|FR|GB"
                   "|GE|GI|GL|GR|GT|HN|HR|HU|IE|IL|IQ|IS|IT|JO|KW|KZ|LB|LC|LI|LT|LU|LV|LY|MA|MC|MD|ME|MK|MN|MR|MT|MU"
                   "|MZ|NI|NL|NO|OM|PK|PL|PS|PT|QA|RO|RS|RU|SA|SC|SD|SE|SI|SK|SM|SN|SO|ST|SV|TL|TN|TR|UA|VA|VG"
                   "|XK|YE")
# what makes a value worth decoding and confirming (RE2, Arrow); deliberately loose:
# the detectors decide
TRIGGERS: dict[str, str] = {
    "email": r"@|(?i)[\(\[\{]\s?at\s?[\)\]\}]|(?i)\sat\s\S+\sdot\s",
    "ip": r"(?:\d{1,3}\.){3}\d{1,3}|::|(?:[0-9A-Fa-f]{1,4}:){7}",
    "phone": (r"\+\s?\(?\d|(?:^|[^0-9A-Za-z])00\d|\(\s?\d"
              r"|\d{2,}[ .\-/\x{a0}]{1,3}\(?\d{2,}\)?[ .\-/\x{a0}]{1,3}\d{2,}"
              r"|\d{2,}[ .\-/\x{a0}]{1,3}\(?\d{4,}"
              r"|(?:^|\D)0\d{8,11}(?:\D|$)|\p{Han}\D{0,8}1[3-9]\d{9}(?:\D|$)"
              r"|(?i)(?:phone|tel|tlf|ring\s+(?:mig|meg|os|oss|til)|mobil|cell|fax|whatsapp|handy|call|sms|móvil"
              r"|portable|celular|contato"
              r"|電話|携帯|电话|手机|телефон|тел|फ़ोन|फोन|τηλ|κινητ|טלפון|נייד|전화|휴대폰|핸드폰|โทร|มือถือ|هاتف|جوال"
              r"|नया नंबर|новый номер|新号码|新しい番号)"
              # the phone words of ``detectors._CONTEXT``: a bare number after them is a phone
              r"|(?i)(?:my|new|your|our|mein|meine|neue|mon|nouveau|mi|nuevo|meu|novo)\s+(?:new\s+)?"
              r"(?:number|nummer|num[eé]ro|n[uú]mero)"),
    # grouped, or a bare run of a card's length that starts the way cards start (an order
    # number inside a longer digit run is not a candidate)
    "card": (r"(?:^|[^0-9])(?:[2-6]\d{3}S\d{4}S\d{4}S\d{1,7}|3[47]\d{2}S\d{6}S\d{5}|3[0689]\d{2}S\d{6}S\d{4}"
             r"|(?:1800|2131)\d{11}|[56]\d{15,18}|81\d{14})(?:[^0-9]|$)").replace("S", r"[ \t.\-]{0,5}")
            # a bare 12-19 digit run after a card word (a 12-digit Maestro)
            + r"|(?i)(?:" + detectors.CARD_WORDS + r")\w{0,6}\W{0,4}(?:\w{1,9}\W{1,4}){0,2}\d{12,19}",
    "iban": rf"(?i)(?:^|[^0-9A-Za-z])(?:{_IBAN_COUNTRIES})\d{{2}}[ .\-]?[0-9A-Za-z]{{4}}",
}
# dates and times look like phone numbers to the trigger; a value whose only trigger was
# a date is dropped before it is decoded
_DATES_RE2 = (r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:Z|[+\-]\d{2}:?\d{2})?)?"
              r"|\b\d{1,2}[./]\d{1,2}[./]\d{2,4}\b")
_NUMBERISH = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?")


def trigger_pattern(kinds: Iterable[str]) -> str:
    return "|".join(f"(?:{TRIGGERS[k]})" for k in kinds)


@dataclass
class Findings:
    """Per value (row of the scanned array): what was found where, and the per-row verdicts."""

    # row -> (kind, start, end) in the ORIGINAL value
    spans: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)
    # per row: a confirmed finding of the scanned kinds (what ``flags`` gives without ``known``)
    pii: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # per row: a known value found (what ``known.found_in`` gives); None when no ``known`` was given
    known: np.ndarray | None = None

    def rows(self) -> list[int]:
        return sorted(r for r, s in self.spans.items() if s)


@dataclass(frozen=True)
class Evidence:
    """What the full checks found in each value of ``values``, computed once and shared.

    ``pii[i]`` is what ``flags(values[i:i+1], kinds=kinds, regions=regions)`` gives and
    ``known_hit[i]`` what ``known.found_in`` gives: the scrubber computes both on its input
    while it scans it, and a gate checking the scrubbed output reuses them for every row
    whose value is still the same (``reuse``) and runs the checks itself on the rest.
    The verdict is the one a full scan of the output would give; the scrubber's choice of
    what to replace plays no part in it.
    """

    values: pa.Array
    pii: np.ndarray
    kinds: tuple[str, ...]
    regions: tuple[str, ...]
    known: Known | None = None
    known_hit: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> Evidence:
        """The evidence of ``rows`` only (in that order)."""
        return Evidence(self.values.take(pa.array(rows, pa.int64())), self.pii[rows], self.kinds,
                        self.regions, self.known, None if self.known_hit is None else self.known_hit[rows])

    def spread(self, indices: pa.Array, values: pa.Array) -> Evidence:
        """Evidence of distinct values spread to the rows of ``values`` (``indices`` into them)."""
        # a null row has no distinct value: nothing was found in it
        valid = np.asarray(indices.is_valid().to_numpy(zero_copy_only=False))
        at = np.asarray(pc.fill_null(indices, 0).to_numpy(zero_copy_only=False))
        return Evidence(values, self.pii[at] & valid, self.kinds, self.regions, self.known,
                        None if self.known_hit is None else self.known_hit[at] & valid)


def reuse(values: pa.Array, evidence: np.ndarray, evidence_values: pa.Array,
          check: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """``check(values)``, computed only for the rows whose value differs from ``evidence_values``.

    The other rows take ``evidence`` (``check`` of the same value, computed before).
    """
    if len(values) != len(evidence_values):
        return check(values)
    plain = _strings(values)
    same = pc.fill_null(pc.equal(plain, evidence_values), False)
    same = pc.or_(same, pc.and_(plain.is_null(), evidence_values.is_null()))
    same_np = np.asarray(same.to_numpy(zero_copy_only=False))
    out = np.where(same_np, evidence, False)
    changed = np.flatnonzero(~same_np)
    if len(changed):
        out[changed] = check(plain.take(pa.array(changed, pa.int64())))
    return out


def _strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _mask(arr: pa.Array, pattern: str) -> np.ndarray:
    hit = pc.fill_null(pc.match_substring_regex(arr, pattern), False)
    return np.asarray(hit.to_numpy(zero_copy_only=False))


def decoding_rows(arr: pa.Array) -> np.ndarray:
    """Rows of a plain string array that ``normalize`` would change (encoded, not NFKC, or with
    digits of another script)."""
    return np.flatnonzero(_decoding_mask(arr))


def _decoding_mask(arr: pa.Array) -> np.ndarray:
    if len(arr) == 0:
        return np.zeros(0, bool)
    encoded = _mask(arr, ENCODED_RE2)
    non_ascii = np.flatnonzero(~np.asarray(pc.fill_null(pc.string_is_ascii(arr), True)
                                           .to_numpy(zero_copy_only=False)))
    if len(non_ascii):
        sub = arr.take(pa.array(non_ascii))
        changed = pc.fill_null(pc.not_equal(pc.utf8_normalize(sub, form="NFKC"), sub), False)
        # digits of other scripts, which a reader reads as digits (NFKC keeps them)
        changed = pc.or_(changed, pc.fill_null(pc.match_substring_regex(sub, OTHER_DIGITS_RE2), False))
        encoded[non_ascii[np.asarray(changed.to_numpy(zero_copy_only=False))]] = True
    return encoded


@dataclass(frozen=True)
class Candidates:
    """The rows of a string array worth a closer look, and why."""

    rows: np.ndarray        # rows to look at
    decode: np.ndarray      # per row of ``rows``: needs decoding
    detect: np.ndarray      # per row of ``rows``: a detector trigger fired (or it needs decoding)
    maybe_known: np.ndarray  # per row of ``rows``: may hold a known value
    known_hit: np.ndarray | None  # per row of the array: a known value found undecoded


def candidate_rows(arr: pa.Array, kinds: Iterable[str] = KINDS, known: Known | None = None) -> Candidates:
    """The candidates of a string array: triggers, encodings and (undecoded) known values."""
    kinds = list(kinds)
    n = len(arr)
    if n == 0:
        empty = np.zeros(0, bool)
        return Candidates(np.zeros(0, np.int64), empty, empty, empty, None if known is None else empty)
    encoded = _decoding_mask(arr)
    wanted = np.zeros(n, bool)
    others = [k for k in kinds if k != "phone"]
    if others:
        wanted |= _mask(arr, trigger_pattern(others))
    if "phone" in kinds:
        hit = np.flatnonzero(_mask(arr, TRIGGERS["phone"]) & ~encoded & ~wanted)
        if len(hit):
            # dates and times look like phone numbers to the trigger: drop the values
            # whose only phone-shaped part was a date
            stripped = pc.replace_substring_regex(arr.take(pa.array(hit)), _DATES_RE2, " ")
            wanted[hit[_mask(stripped, TRIGGERS["phone"])]] = True
    known_hit = np.zeros(n, bool)
    if known is not None and known.count:
        # encoded values are decoded and searched below anyway
        known_hit = np.asarray(known.found_in(arr, decode=False).to_numpy(zero_copy_only=False))
    rows = np.flatnonzero(wanted | known_hit | encoded)
    return Candidates(rows, encoded[rows], wanted[rows] | encoded[rows], known_hit[rows] | encoded[rows],
                      None if known is None else known_hit)


def find(values: pa.Array | pa.ChunkedArray, *, kinds: Iterable[str] = KINDS,
         regions: tuple[str, ...] = detectors.DEFAULT_REGIONS,
         known: Known | None = None) -> Findings:
    """What each value holds: confirmed detector findings and the tenant's known values."""
    arr = _strings(values)
    kinds = tuple(kinds)
    cand = candidate_rows(arr, kinds, known)
    searching = known is not None and known.count > 0
    out = Findings(pii=np.zeros(len(arr), bool),
                   known=None if cand.known_hit is None else cand.known_hit.copy())
    if len(cand.rows) == 0:
        return out
    # each distinct text is read once (a planted card or IBAN repeats across a batch's rows): what
    # a row's text holds, and its flags (decode, detect, look), depend on the text alone
    taken = arr.take(pa.array(cand.rows))
    encoded = pc.dictionary_encode(taken)
    group = np.asarray(encoded.indices.fill_null(-1))
    texts = encoded.dictionary.to_pylist()
    first = np.full(len(texts), -1, np.int64)
    at = np.flatnonzero(group >= 0)
    first[group[at[::-1]]] = at[::-1]
    pii = np.zeros(len(texts), bool)
    spans: dict[int, list[tuple[str, int, int]]] = {}
    decoded_groups: list[int] = []
    decoded_texts: list[str] = []
    for g, (text, k) in enumerate(zip(texts, first.tolist(), strict=True)):
        if text is None or k < 0:
            continue
        decode, detect, look = bool(cand.decode[k]), bool(cand.detect[k]), bool(cand.maybe_known[k])
        doc = normalize(text) if decode else identity(text)
        if decode:
            decoded_groups.append(g)
            decoded_texts.append(doc.text)
        found = detectors.find_all(doc.text, kinds, regions)
        # a row no trigger marked is not one ``flags`` would confirm: its verdict stays theirs
        pii[g] = detect and bool(found)
        if look and searching:
            assert known is not None
            for start, end in known.spans(doc.text):
                if not any(start < e and s < end for _, s, e in found):
                    found.append((KNOWN, start, end))
        if found:
            spans[g] = sorted((kind, *doc.source_span(s, e)) for kind, s, e in found)
    rows = cand.rows[at]
    out.pii[rows] = pii[group[at]]
    for row, g in zip(rows.tolist(), group[at].tolist(), strict=True):
        if g in spans:
            out.spans[row] = list(spans[g])
    if decoded_groups and searching and out.known is not None:
        assert known is not None
        # as ``found_in(decode=True)``: an encoded text is also searched as a reader reads it
        hit = np.zeros(len(texts), bool)
        hit[decoded_groups] = np.asarray(known.found_in(pa.array(decoded_texts, pa.string()), decode=False)
                                         .to_numpy(zero_copy_only=False))
        out.known[rows] |= hit[group[at]]
    return out


def flags(values: pa.Array | pa.ChunkedArray, *, kinds: Iterable[str] = KINDS,
          regions: tuple[str, ...] = detectors.DEFAULT_REGIONS, known: Known | None = None,
          which: str | None = None) -> pa.Array:
    """True where a value holds PII (of kind ``which`` only, when given); nulls give False."""
    arr = _strings(values)
    hit = np.zeros(len(arr), bool)
    for row, spans in find(arr, kinds=kinds, regions=regions, known=known).spans.items():
        hit[row] = any(which is None or k == which for k, _, _ in spans)
    return pa.array(hit)


def find_with_evidence(values: pa.Array | pa.ChunkedArray, *, kinds: Iterable[str] = KINDS,
                       regions: tuple[str, ...] = detectors.DEFAULT_REGIONS,
                       known: Known | None = None) -> tuple[Findings, Evidence]:
    """``find``, and the evidence a gate can reuse for the values the scrubber leaves as they are."""
    arr = _strings(values)
    found = find(arr, kinds=kinds, regions=regions, known=known)
    return found, Evidence(arr, found.pii, tuple(kinds), tuple(regions), known, found.known)


# -- replacing ------------------------------------------------------------------------------------


def _json_string_mask(text: str) -> np.ndarray | None:
    """Per character: inside a JSON string literal?  None when ``text`` is not JSON."""
    stripped = text.lstrip()
    if stripped[:1] not in ("{", "["):
        return None
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return None
    inside = np.zeros(len(text), bool)
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if in_string:
            inside[i] = True
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                inside[i] = False
        elif ch == '"':
            in_string = True
    return inside


def _in_authority(text: str, start: int) -> bool:
    head = text[:start]
    cut = head.rfind("://")
    return cut != -1 and not re.search(r"[/?#\s]", head[cut + 3:])


def _token(kind: str) -> str:
    return f"[{kind}]"


def replace_spans(text: str, spans: list[tuple[str, int, int]],
                  token: Callable[[str], str] = _token) -> str:
    """``text`` with each span replaced by its kind's token, JSON- and URL-aware."""
    merged: list[tuple[str, int, int]] = []
    for kind, start, end in sorted(spans, key=lambda s: (s[1], -s[2])):
        if merged and start < merged[-1][2]:
            merged[-1] = (merged[-1][0], merged[-1][1], max(merged[-1][2], end))
            continue
        merged.append((kind, start, end))
    in_string = _json_string_mask(text)
    parts: list[str] = []
    pos = 0
    for kind, s, e in merged:
        label = token(kind)
        if _in_authority(text, s):
            # a host or user in a URL: keep the URL parseable (no brackets, a reserved domain)
            if s > 0 and text[s - 1] == "[" and text[e:e + 1] == "]":
                s, e = s - 1, e + 1
            label = f"{'pii' if kind == KNOWN else kind}.invalid"
        elif in_string is not None and not in_string[s:e].all():
            # a bare JSON number (or more): the token goes in as a string
            bare = text[s:e]
            if _NUMBERISH.fullmatch(bare.strip()) or not in_string[s:e].any():
                label = json.dumps(label)
        parts.append(text[pos:s])
        parts.append(label)
        pos = e
    parts.append(text[pos:])
    out = "".join(parts)
    if in_string is not None:
        try:
            json.loads(out)
        except ValueError:
            return _replace_in_json(text, spans, token)
    return out


def _replace_in_json(text: str, spans: list[tuple[str, int, int]], token: Callable[[str], str]) -> str:
    """A finding straddled JSON syntax: blank the whole string or number values it touches."""
    inside = _json_string_mask(text)
    assert inside is not None
    touched = np.zeros(len(text), bool)
    for _, s, e in spans:
        touched[s:e] = True
    out: list[str] = []
    i = 0
    kinds = {k for k, _, _ in spans}
    label = json.dumps(token(sorted(kinds)[0]) if len(kinds) == 1 else token("pii"))
    while i < len(text):
        if text[i] == '"' and not inside[i]:
            j = i + 1
            while j < len(text) and (text[j] != '"' or inside[j]):
                j += 1
            out.append(label if touched[i:j + 1].any() else text[i:j + 1])
            i = j + 1
            continue
        match = _NUMBERISH.match(text, i)
        if match and match.end() > i:
            out.append(label if touched[i:match.end()].any() else match.group())
            i = match.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def scrub(values: pa.Array | pa.ChunkedArray, *, kinds: Iterable[str] = KINDS,
          regions: tuple[str, ...] = detectors.DEFAULT_REGIONS,
          known: Known | None = None) -> pa.Array:
    """``values`` with every finding replaced; values with nothing found are untouched."""
    return scrub_with_evidence(values, kinds=kinds, regions=regions, known=known)[0]


def scrub_with_evidence(values: pa.Array | pa.ChunkedArray, *, kinds: Iterable[str] = KINDS,
                        regions: tuple[str, ...] = detectors.DEFAULT_REGIONS, known: Known | None = None,
                        replace: Iterable[str] | None = None) -> tuple[pa.Array, Evidence]:
    """``values`` with the findings of ``replace`` (default: ``kinds``) and known values replaced,
    and the evidence of the scan (every form of ``kinds``, replaced or not)."""
    arr = _strings(values)
    kinds = tuple(kinds)
    found, evidence = find_with_evidence(arr, kinds=kinds, regions=regions, known=known)
    if replace is not None and set(replace) != set(kinds):
        # fewer forms replaced than checked (a form switched off): what is replaced is found
        # as it would be with those forms only; the evidence still covers every form
        found = find(arr, kinds=tuple(replace), regions=regions, known=known)
    spans = found.spans
    rows = found.rows()
    if not rows:
        return arr, evidence
    texts = arr.take(pa.array(rows)).to_pylist()
    replaced = [replace_spans(t, spans[r]) for r, t in zip(rows, texts, strict=True)]
    mask = np.zeros(len(arr), bool)
    mask[rows] = True
    return pc.replace_with_mask(arr, pa.array(mask), pa.array(replaced, pa.string())), evidence
