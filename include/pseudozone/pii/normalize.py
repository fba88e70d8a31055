"""Read a text the way a person would, and remember where each character came from.

PII hides in encodings: ``zelda%40example.org`` in a URL, ``\\u0040`` in JSON,
``&#64;`` in HTML, a full-width ``＠`` pasted from a phone keyboard.  Detection
runs on the decoded text; the scrubber then replaces the *original* characters
that a finding came from, so the stored value stays itself (still a URL, still
JSON), with only the found spans replaced.

``normalize`` decodes, in the order a reader meets them: HTML character references
(numeric ones with or without their ``;``), JSON ``\\uXXXX`` escapes and percent-encoding
(``+`` is a space inside a query string, and between digits in a form-encoded token),
again and again while that changes the text (double encoding, and chains such as
``&amp;#64;`` or ``%26%2364%3B``), then Unicode NFKC by character cluster, with the
decimal digits of every script read as ASCII digits (``٤٩`` is ``49``) and typographic
dashes and middle dots as ``-`` and ``.``. A lone UTF-16 surrogate (``\\ud83d`` without
its pair) is read as U+FFFD, as a browser shows it: no decoded text holds one, so none
makes a UTF-8 encode (Arrow, hashing) fail. It returns the decoded text and, for every
decoded character, the span of the original text it came from. Only texts that need it pay
for it (``pseudozone.pii.scan.decoding_rows``).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import regex

# an RE2 pattern (Arrow) for texts holding something ``normalize`` decodes, apart from
# NFKC (which Arrow checks itself, see ``pseudozone.pii.scan``)
ENCODED_RE2 = (r"%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\/|&#?[A-Za-z0-9]{1,32};|&#[0-9]{2,7}|&#[xX][0-9A-Fa-f]"
               r"|\?[^\s]*\+|\d{2}\+[\d(]|[\x{ad}\x{200b}-\x{200f}\x{202a}-\x{202e}\x{2060}-\x{2069}\x{feff}]")

# numeric references need no ';' (browsers read '&#64' as '@'); named ones do
_ENTITY = re.compile(r"&(?:#[0-9]{1,7};?|#[xX][0-9A-Fa-f]{1,6};?|[A-Za-z][A-Za-z0-9]{1,31};)")
_JSON_ESCAPE = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}"
                          r"|\\[/\"\\bfnrt]")
_PERCENT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# a query string: '+' there is a space, except at the start of a value before a digit (+49…)
_QUERY = re.compile(r"\?[^\s\"'<>]*")
_QUERY_PLUS = re.compile(r"(?<![=&?])\+|\+(?!\d)")
# form encoding outside a query string (a value form-encoded into JSON or free text): in a
# token that holds a percent escape, or in digit groups joined by '+' ('0820+346352'), a
# '+' between digits or parentheses was a space (form encoding writes a real '+' as %2B)
_FORM_TOKEN = re.compile(r"[^\s\"'<>]*%[0-9A-Fa-f]{2}[^\s\"'<>]*|(?<![\d+])\d[\d()]+(?:\+[\d()]{2,})+")
_FORM_PLUS = re.compile(r"(?<=[\d)])\+(?=[\d(])")
_SIMPLE_ESCAPES = {"/": "/", '"': '"', "\\": "\\", "b": " ", "f": " ", "n": " ", "r": " ", "t": " "}
MAX_ROUNDS = 4  # decoding passes (HTML, JSON, percent) while the text still changes
_SAME = "\x00same"  # a piece that widens the previous piece's source span (multi-byte characters)
# a lone UTF-16 surrogate (a JSON '\\ud83d' without its pair, or one in a Python str): no UTF-8
# encoder takes it (Arrow, hashing), and a reader sees U+FFFD there
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Decoded:
    """A decoded text; character ``i`` came from ``original[starts[i]:ends[i]]``."""

    text: str
    starts: list[int]
    ends: list[int]

    def source_span(self, start: int, end: int) -> tuple[int, int]:
        """The original span that decoded characters ``start:end`` came from."""
        if start >= end:
            at = self.starts[start] if start < len(self.starts) else (self.ends[-1] if self.ends else 0)
            return at, at
        return self.starts[start], self.ends[end - 1]


def identity(text: str) -> Decoded:
    return Decoded(text, list(range(len(text))), list(range(1, len(text) + 1)))


def _substitute(doc: Decoded, pattern: re.Pattern[str], decode: Callable[[re.Match[str]], list[str] | None],
                *, within: re.Pattern[str] | None = None) -> Decoded:
    """Replace each match with the characters ``decode`` gives (None: keep it), keeping the map.

    Each decoded character maps to the original span of the piece it was decoded from
    (``decode`` returns one string per piece, pieces splitting the match evenly by width).
    """
    text = doc.text
    regions = [(0, len(text))] if within is None else [m.span() for m in within.finditer(text)]
    if not regions:
        return doc
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    changed = False
    for lo, hi in regions:
        for match in pattern.finditer(text, lo, hi):
            pieces = decode(match)
            if pieces is None:
                continue
            a, b = match.span()
            out.append(text[pos:a])
            starts += doc.starts[pos:a]
            ends += doc.ends[pos:a]
            width = (b - a) // max(len(pieces), 1)
            for k, piece in enumerate(pieces):
                pa_ = a + k * width
                pb = b if k == len(pieces) - 1 else pa_ + width
                if piece == _SAME:
                    ends[-1] = doc.ends[pb - 1]
                    continue
                for ch in piece:
                    out.append(ch)
                    starts.append(doc.starts[pa_])
                    ends.append(doc.ends[pb - 1])
            pos = b
            changed = True
    if not changed:
        return doc
    out.append(text[pos:])
    starts += doc.starts[pos:]
    ends += doc.ends[pos:]
    return Decoded("".join(out), starts, ends)


def _entity(match: re.Match[str]) -> list[str] | None:
    decoded = html.unescape(match.group())  # a surrogate's reference is U+FFFD already (HTML5)
    return None if decoded == match.group() else [_SURROGATE.sub(REPLACEMENT, decoded)]


def _json_escape(match: re.Match[str]) -> list[str] | None:
    raw = match.group()
    if len(raw) == 2:
        return [_SIMPLE_ESCAPES[raw[1]]]
    if len(raw) == 12:
        high, low = int(raw[2:6], 16), int(raw[8:12], 16)
        return [chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))]
    code = int(raw[2:6], 16)
    # a surrogate without its pair is no character: read as U+FFFD, as a browser shows it
    return [REPLACEMENT if 0xD800 <= code <= 0xDFFF else chr(code)]


def _utf8_length(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def _percent(match: re.Match[str]) -> list[str] | None:
    raw = match.group()
    data = bytes.fromhex(raw.replace("%", ""))
    # one piece per escaped byte (each 3 characters wide); a character decoded from several
    # bytes goes in its first byte's piece and its other bytes give empty pieces
    pieces: list[str] = []
    i = 0
    while i < len(data):
        n = _utf8_length(data[i])
        chunk = data[i:i + n] if n else b""
        try:
            ch = chunk.decode("utf-8") if n and len(chunk) == n else None
        except UnicodeDecodeError:
            ch = None
        if ch is None:
            pieces.append(raw[3 * i:3 * i + 3])  # not UTF-8: left as it was
            i += 1
            continue
        pieces.append(ch)
        pieces += [_SAME] * (n - 1)
        i += n
    return pieces


def _query_plus(match: re.Match[str]) -> list[str] | None:
    return [" "]


def _other_digit_ranges() -> list[tuple[int, int]]:
    """The decimal digits (Unicode ``Nd``) other than ASCII's that NFKC leaves as they are
    (Arabic-Indic, Devanagari, Thai, …), as code point ranges: a reader reads them as digits."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x80, 0x10000):
        char = chr(code)
        if unicodedata.category(char) == "Nd" and unicodedata.normalize("NFKC", char) == char:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return ranges


_OTHER_DIGITS = _other_digit_ranges()
# dashes and dots that a reader takes for '-' and '.' between the groups of a number
# (030–1234–5678, 030·1234·5678; NFKC keeps them)
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_DOTS = "\u00b7\u2027\u30fb"
_ASCII_PUNCTUATION = {**{ord(c): "-" for c in _DASHES}, **{ord(c): "." for c in _DOTS}}
# texts holding such digits, or such separators between digits, are decoded too (RE2,
# Arrow; ``pseudozone.pii.scan``)
OTHER_DIGITS_RE2 = ("[" + "".join(rf"\x{{{a:x}}}-\x{{{b:x}}}" for a, b in _OTHER_DIGITS) + "]"
                    + r"|\d\s?[" + "".join(rf"\x{{{ord(c):x}}}" for c in _DASHES + _DOTS) + r"]\s?\d")
# what ``_read`` changes that NFKC does not (a text without any is read by NFKC alone)
_READ_AS_ASCII = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _OTHER_DIGITS) + _DASHES + _DOTS
                            + "\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# a character cluster that NFKC may change: a non-ASCII character with its combining marks,
# or an ASCII letter followed by marks ('e' + U+0301 is 'é')
_CLUSTER = regex.compile(r"[^\x00-\x7f]\p{M}*|[\x00-\x7f]\p{M}+")
# a run of non-ASCII text with the character before it (a base for its first combining mark)
_RUN = re.compile(r"[\x00-\x7f]?[^\x00-\x7f]+")


def _read(cluster: str) -> str:
    if len(cluster) == 1:
        if unicodedata.category(cluster) == "Cf":
            return ""  # format characters (zero-width spaces, soft hyphens) are invisible to a reader
        digit = unicodedata.decimal(cluster, None)
        if digit is not None:
            return str(digit)
        if ord(cluster) in _ASCII_PUNCTUATION:
            return _ASCII_PUNCTUATION[ord(cluster)]
    return unicodedata.normalize("NFKC", cluster)


def _clusters_to_read(text: str) -> Iterator[regex.Match[str]]:
    """The clusters of ``text`` that reading may change, skipping runs of non-ASCII text that
    are already as a reader reads them (most of a Chinese or Russian text)."""
    for run in _RUN.finditer(text):
        piece = run.group()
        if unicodedata.is_normalized("NFKC", piece) and not _READ_AS_ASCII.search(piece):
            continue
        yield from _CLUSTER.finditer(text, run.start(), run.end())


def _nfkc(doc: Decoded) -> Decoded:
    text = doc.text
    if text.isascii() or (unicodedata.is_normalized("NFKC", text) and not _READ_AS_ASCII.search(text)):
        return doc
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for match in _clusters_to_read(text):
        cluster = match.group()
        mapped = _read(cluster)
        if mapped == cluster:
            continue
        i, j = match.span()
        out.append(text[pos:i])
        starts += doc.starts[pos:i]
        ends += doc.ends[pos:i]
        out.append(mapped)
        starts += [doc.starts[i]] * len(mapped)
        ends += [doc.ends[j - 1]] * len(mapped)
        pos = j
    if pos == 0:
        return doc
    out.append(text[pos:])
    starts += doc.starts[pos:]
    ends += doc.ends[pos:]
    return Decoded("".join(out), starts, ends)


def normalize(text: str) -> Decoded:
    """``text`` decoded as a reader sees it, with the map back to ``text``."""
    doc = identity(text)
    if "+" in text and "?" in text:
        # form encoding: '+' is a space in a query string (a decoded %2B below is a real '+')
        doc = _substitute(doc, _QUERY_PLUS, _query_plus, within=_QUERY)
    if "+" in doc.text:
        doc = _substitute(doc, _FORM_PLUS, _query_plus, within=_FORM_TOKEN)
    for _ in range(MAX_ROUNDS):
        before = doc.text
        if "&" in doc.text:
            doc = _substitute(doc, _ENTITY, _entity)
        if "\\" in doc.text:
            doc = _substitute(doc, _JSON_ESCAPE, _json_escape)
        if "%" in doc.text:
            doc = _substitute(doc, _PERCENT_RUN, _percent)
        if doc.text == before:
            break
    if not doc.text.isascii() and _SURROGATE.search(doc.text):
        # a Python str may hold a lone surrogate (an Arrow string cannot): one for one, so the map holds
        doc = Decoded(_SURROGATE.sub(REPLACEMENT, doc.text), doc.starts, doc.ends)
    return _nfkc(doc)
