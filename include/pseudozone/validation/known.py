"""The raw PII values of one batch, as keyed hashes, and a search for them in published text.

A gate must prove that no raw value of the batch it publishes (a name, an email, a
street, a raw user id) reached the event zone, including inside another row's free
text, where the scrubber's patterns do not look.  The comparison runs on keyed
hashes: ``KnownValues`` keeps BLAKE2b digests under a key drawn for this check
alone and never stored, so neither the expectation's configuration, its results
nor anything left after the task can be turned back into a value, not even by
hashing guesses (the key is gone).

Matching is on word sequences: text and values are lower-cased and split into
runs of letters and digits, so ``Zelda.Plantedpii@Example.ORG`` matches
``zelda plantedpii example org`` however it is punctuated, and a name matches as
a whole phrase, never as a substring of a longer word.  The words of a value of several
words fold accents ('José García' is 'jose garcia'); a value of one word keeps them (the
surname 'Đặng' is not the Vietnamese word 'đang', 'Schön' not 'schon').  Han, kana and hangul
characters are words of their own (those scripts write names without spaces), and
combining marks belong to their word (Devanagari vowel signs).  A text is split into
words once for all the value sets searched together (``AnyKnown``), and a word is
taken as a possible start of a value only when its keyed 64-bit mix is one of the
values' first words' mixes; each phrase it may start is then confirmed by its digest.

Phone numbers are matched on their digits: each known phone's national number,
with and without its trunk prefix (``0``, or its region's: ``06`` in Hungary, ``8`` in
Russia) and its country code (also after ``00``), against every digit run of the
text with its separators removed (``+44 (0)20 7946-0999`` is ``4402079460999``, one of
the forms of the known ``2079460999``; a run must be a whole form, not end in one).  The
digit runs are compared vectorized through a keyed 64-bit mix first; only runs that pass
are hashed with BLAKE2b.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

WORD_SEPARATORS = r"[^\p{L}\p{N}\p{M}]+"
_CJK = r"([\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}])"
_CJK_CLASS = (r"[\u1100-\u11ff\u3040-\u30ff\u3131-\u318e\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
              r"\uf900-\ufaff\U00020000-\U0002fa1f]")
# a word of ``word_lists``, found in Python: one CJK character, or a run of other letters,
# digits and marks (``regex``: Unicode properties, as RE2 has them)
_WORD_PY = regex.compile(rf"{_CJK_CLASS}|(?:(?!{_CJK_CLASS})[\p{{L}}\p{{N}}\p{{M}}])+")
# digits joined across the separators of a phone number (applied twice: groups of one digit)
_DIGIT_JOIN = r"(\d)[ .\-/()\x{a0}]{1,3}(\d)"
MAX_PHONE_DIGITS = 18  # longer digit runs are no phone (and would not fit 64 bits)
_DIGIT_RUN_PY = re.compile(r"\+?\d(?:[ .\-/()\u00a0]{0,3}\d)*")
MIN_PHONE_DIGITS = 7
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
MIN_CHARS = 3          # values shorter than this (after normalising) are not searched for
MAX_WORDS = 8          # longer values are searched for by their first MAX_WORDS words


# ASCII bytes as the word search sees them: letters lower-cased, digits kept, everything
# else a space; bytes of multi-byte characters are left for the Unicode-aware pass
_ASCII_FOLD = np.arange(256, dtype=np.uint8)
for _byte in range(128):
    _ASCII_FOLD[_byte] = ord(chr(_byte).lower()) if chr(_byte).isalnum() else 0x20
del _byte


def _plain_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return values


# Hebrew points and Arabic vowel marks: ordinary writing leaves them out, so a word is the same
# word with or without them
_VOWEL_MARK_RANGES = ((0x591, 0x5BD), (0x5BF, 0x5BF), (0x5C1, 0x5C2), (0x5C4, 0x5C5), (0x5C7, 0x5C7),
                      (0x64B, 0x65F), (0x670, 0x670))
# and the combining diacritical marks of Latin, Greek and Cyrillic: the words of a name of
# several words are the same name with or without them, a word alone is not ('Đặng', 'đang')
_DIACRITIC_RANGES = ((0x300, 0x36F), *_VOWEL_MARK_RANGES)


def _re2_class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "[" + "".join(rf"\x{{{a:x}}}-\x{{{b:x}}}" for a, b in ranges) + "]"


def _py_class(ranges: tuple[tuple[int, int], ...]) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges) + "]")


_DIACRITICS_RE2, _DIACRITICS_PY = _re2_class(_DIACRITIC_RANGES), _py_class(_DIACRITIC_RANGES)
_VOWEL_MARKS_RE2, _VOWEL_MARKS_PY = _re2_class(_VOWEL_MARK_RANGES), _py_class(_VOWEL_MARK_RANGES)


def _fold(lowered: pa.Array, *, keep_accents: bool = False) -> pa.Array:
    """Lower-cased text folded as a reader matches names: 'ß' is 'ss' (Straße, STRASSE), a final
    'ς' is 'σ', Turkish 'ı' is 'i' (YILMAZ, Yılmaz), Arabic vowel marks and Hebrew points are
    dropped ('مُحَمَّد' is 'محمد'), and unless ``keep_accents`` so are accents ('José' is 'jose',
    'Οδός' is 'οδος'); the vowel signs of Indic scripts are not accents and stay."""
    folded = pc.replace_substring(pc.replace_substring(lowered, "ß", "ss"), "ς", "σ")
    folded = pc.replace_substring(folded, "ı", "i")
    if keep_accents:
        # as Python lower-cases 'İ' ('i' and a combining dot): the dot goes, as in ``_fold_word``
        folded = pc.replace_substring(folded, "i\u0307", "i")
    marks = _VOWEL_MARKS_RE2 if keep_accents else _DIACRITICS_RE2
    bare = pc.replace_substring_regex(pc.utf8_normalize(folded, form="NFD"), marks, "")
    return pc.utf8_normalize(bare, form="NFC")


def _fold_word(word: str, *, keep_accents: bool = False) -> str:
    """A word as ``spaced_words`` folds it, in Python ('İ' is 'i', not 'i' and a combining dot)."""
    folded = word.lower().replace("i\u0307", "i").replace("ß", "ss").replace("ς", "σ").replace("ı", "i")
    if folded.isascii():
        return folded
    marks = _VOWEL_MARKS_PY if keep_accents else _DIACRITICS_PY
    return unicodedata.normalize("NFC", marks.sub("", unicodedata.normalize("NFD", folded)))


def spaced_words(values: pa.Array | pa.ChunkedArray, *, keep_accents: bool = False) -> pa.Array:
    """Each string lower-cased ('ß' as 'ss'), its words (runs of letters, digits and marks; CJK characters
    one by one) separated by whitespace and everything else gone; accents dropped unless ``keep_accents``.

    ASCII text is folded with one table lookup over the data buffer; only the values that
    hold other characters go through Unicode-aware regexes (which fold their ASCII alike).
    """
    values = _plain_strings(values)
    data = values.buffers()[2]
    if data is None or len(values) == 0:
        return values
    folded_data = _ASCII_FOLD[np.frombuffer(data, dtype=np.uint8)]
    folded = pa.StringArray.from_buffers(len(values), values.buffers()[1], pa.py_buffer(folded_data),
                                         values.buffers()[0], values.null_count, values.offset)
    other = np.flatnonzero(~np.asarray(pc.fill_null(pc.string_is_ascii(values), True)
                                       .to_numpy(zero_copy_only=False)))
    if len(other):
        sub = folded.take(pa.array(other))
        lowered = pc.replace_substring_regex(_fold(pc.utf8_lower(sub), keep_accents=keep_accents), _CJK,
                                             r" \1 ")
        words = pc.replace_substring_regex(lowered, WORD_SEPARATORS, " ")
        mask = np.zeros(len(values), dtype=bool)
        mask[other] = True
        folded = pc.replace_with_mask(folded, pa.array(mask), words)
    return pc.utf8_trim_whitespace(folded)


def word_lists(values: pa.Array | pa.ChunkedArray, *, keep_accents: bool = False) -> pa.Array:
    """Each string's words: lower-cased runs of letters and digits (a list per row)."""
    # a text without words gives [""]: that empty word is dropped by its users
    return pc.utf8_split_whitespace(spaced_words(values, keep_accents=keep_accents))


def tokens(values: pa.Array, *, keep_accents: bool = False) -> tuple[pa.Array, pa.Array]:
    """(words, row of each word) of a string array."""
    lists = word_lists(values, keep_accents=keep_accents)
    words, rows = pc.list_flatten(lists), pc.list_parent_indices(lists)
    keep = pc.greater(pc.utf8_length(words), 0)
    return words.filter(keep), rows.filter(keep)


_NOT_ASCII_DIGIT = re.compile(r"[^0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate read as U+FFFD (Arrow takes UTF-8 only)."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _ascii_digits(text: str) -> str:
    """The decimal digits of ``text`` in ASCII (``+٤٩ ٣٠`` is ``4930``), everything else dropped."""
    if text.isascii():
        return _NOT_ASCII_DIGIT.sub("", text)
    return "".join(str(unicodedata.decimal(c)) for c in text if unicodedata.decimal(c, None) is not None)


@lru_cache(maxsize=64)
def _calling_codes(regions: tuple[str, ...]) -> frozenset[str]:
    import phonenumbers

    return frozenset(str(c) for c in (phonenumbers.country_code_for_region(r) for r in regions) if c)


# an extension at the end of a phone number: 'x12', 'ext. 12', '#12', 'доб. 12'
_EXTENSION = re.compile(r"\s*(?:x|ext\.?|extension|#|доб\.?)\s*\d{1,6}\s*$", re.IGNORECASE)
# a short fifth group after a dash may be an extension too ('+1-415-555-0132-12'); the number
# without it must still have ten digits (no 7-digit prefix of a phone becomes a known form)
_SHORT_TAIL = re.compile(r"^(\D*\d+(?:\D+\d+){3,}?)\s*-\s*\d{1,5}$")
_TAIL_MIN_DIGITS = 10
_TRUNK_0 = re.compile(r"\(\s*0\s*\)")


_NATIONAL_PREFIX_DIGITS = 3  # the longest trunk prefix read from a parsing pattern ('80' in Belarus)


@lru_cache(maxsize=512)
def _trunk_prefixes(code: str) -> tuple[frozenset[str], frozenset[int]]:
    """The trunk prefixes numbers of calling code ``code`` are dialled with at home ('06' in Hungary,
    '8' and '80' in Belarus, '0' and '8' in Lithuania), and the lengths of their national numbers.

    From libphonenumber's metadata of every region of the code: its ``national_prefix`` and the
    short digit strings its ``national_prefix_for_parsing`` reads as a prefix (where that pattern
    does not rewrite the number: Argentina, Brazil and Japan keep their ``national_prefix`` only).
    """
    import phonenumbers

    prefixes: set[str] = set()
    lengths: set[int] = set()
    for region in phonenumbers.region_codes_for_country_code(int(code)):
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None:
            continue
        if meta.national_prefix:
            prefixes.add(meta.national_prefix)
        if meta.national_prefix_for_parsing and meta.national_prefix_transform_rule is None:
            parsing = re.compile(meta.national_prefix_for_parsing)
            prefixes |= {d for width in range(1, _NATIONAL_PREFIX_DIGITS + 1) for n in range(10 ** width)
                         if parsing.fullmatch(d := str(n).zfill(width))}
        if meta.general_desc is not None and meta.general_desc.possible_length:
            lengths.update(meta.general_desc.possible_length)
    return frozenset(prefixes), frozenset(lengths)


def _national_forms(digits: str, codes: Iterable[str], *, national: bool = True) -> set[str]:
    """A number's forms: without and with a trunk prefix, and after each calling code (also after
    ``00``, the international prefix of most countries: ``0036 1 234 5678``).

    With ``national``, ``digits`` are written as at home under one of ``codes``: a trunk prefix of
    that code's regions is taken off them, and the code's forms are added, only where a national
    number of that length is possible there, so no form is shorter than the number.  An
    international number's own digits are its national number: nothing but a written trunk ``0``
    (``+49 030 …``) is taken off them.
    """
    nationals = {digits}
    if digits.startswith("0") and not digits.startswith("00"):
        nationals.add(digits[1:])  # the trunk 0 of most countries (kept in Italy: both are read)
    elif len(digits) == 11 and digits[0] in "18":
        nationals.add(digits[1:])  # North America's 1, Russia's and Kazakhstan's 8
    nationals = {n for n in nationals if len(n) >= MIN_PHONE_DIGITS - 1}
    forms = {prefix + n for n in nationals for prefix in ("", "0")}
    forms |= {code + prefix + n for n in nationals for code in codes for prefix in ("", "0")
              if not n.startswith("0")}
    for code in codes:
        prefixes, lengths = _trunk_prefixes(code)
        mine = nationals
        if national:
            mine = {n for n in nationals if len(n) in lengths}
            mine |= {digits[len(p):] for p in prefixes
                     if digits.startswith(p) and len(digits) - len(p) in lengths}
        for n in mine:
            forms |= {p + n for p in ("", *prefixes)}  # '06 1 234 5678', '8 912 345-67-89'
            if not n.startswith("0"):
                forms |= {code + n, "00" + code + n}
                if "0" in prefixes:
                    forms |= {code + "0" + n, "00" + code + "0" + n}  # '+44 (0)20 …', '0044 (0)20 …'
    return forms


def _phone_variants(value: str, regions: tuple[str, ...]) -> set[str]:
    """The digit strings a known phone is written as: national number, with a trunk prefix and
    after its country code (with or without ``00``).

    No full libphonenumber parse (a tenant has tens of thousands of phones): an
    international ``+``/``00`` form (also in parentheses, ``(+36)``) is split at its calling
    code (libphonenumber's code table) and gets the trunk prefixes of that code's regions
    (``_trunk_prefixes``); a national form is read after the calling code of every region in
    ``regions``, its trunk prefix taken off where that leaves a possible national number.
    Extensions (``x12``, ``ext. 12``, and a short fifth group after a dash,
    ``+1-415-555-0132-12``) are read both with and without.  This finds more forms than
    one parse would, never fewer: a known value is matched as a whole digit run only.
    """
    from pseudozone.pii.detectors import calling_code_of

    text = value.strip()
    readings = {text, _EXTENSION.sub("", text)}
    tail = _SHORT_TAIL.match(text)
    if tail and len(_ascii_digits(tail.group(1))) >= _TAIL_MIN_DIGITS:
        readings.add(tail.group(1))
    codes = _calling_codes(regions)
    variants: set[str] = set()
    for reading in readings:
        digits = _ascii_digits(_TRUNK_0.sub("", reading))
        if len(digits) < MIN_PHONE_DIGITS:
            continue
        variants.add(_ascii_digits(reading))
        lead = reading.lstrip("( ")  # '(+36) 1 234 5678', '(0036) 1 234 5678'
        international = lead.startswith("+") or digits.startswith("00")
        rest = digits[2:] if digits.startswith("00") and not lead.startswith("+") else digits
        code = calling_code_of(rest) if international else None
        if code is not None:
            variants |= _national_forms(rest[len(code):], (code,), national=False)
        else:
            variants |= _national_forms(digits, codes)
    return {v for v in variants if len(v) >= MIN_PHONE_DIGITS}


class KnownValues:
    """Keyed digests of known raw values; ``found_in`` flags text that contains one, ``spans`` says where.

    ``values`` are matched as word sequences; ``phones`` (phone numbers, read under
    ``regions``) also by their digits, however the text formats them.
    """

    def __init__(self, values: Iterable[str | None], *, phones: Iterable[str | None] = (),
                 regions: tuple[str, ...] = ("US",)) -> None:
        self._key = os.urandom(32)
        self._mix_key = np.frombuffer(os.urandom(8), dtype=np.uint64)[0]
        # a lone surrogate (a Python str may hold one, an Arrow string cannot) reads as U+FFFD,
        # as a decoded text has it (``pseudozone.pii.normalize``)
        phone_list = [_no_surrogates(p) for p in phones if p]
        given = {_no_surrogates(v) for v in values if v is not None} | set(phone_list)
        # as written, and as a reader reads it (NFKC: 'ﬁona', Thai 'ำ'), since a text is searched
        # both ways (decoded texts are NFKC)
        given |= {unicodedata.normalize("NFKC", v) for v in given if not v.isascii()}
        distinct = pa.array(sorted(given), pa.string())
        # a value of one word matches with its accents (the surname 'Đặng' is not the word 'đang',
        # 'Schön' is not 'schon'); the words of a longer value fold them ('José García')
        one_word = pc.fill_null(pc.equal(pc.list_value_length(word_lists(distinct, keep_accents=True)), 1),
                                False)
        singles = pc.list_element(word_lists(distinct.filter(one_word), keep_accents=True), 0)
        singles = pc.unique(singles.filter(pc.greater_equal(pc.utf8_length(singles), MIN_CHARS)))
        lists = pc.list_slice(word_lists(distinct.filter(pc.invert(one_word))), 0, MAX_WORDS)
        phrase = pc.binary_join(lists, " ")
        wanted = pc.fill_null(pc.greater_equal(pc.utf8_length(phrase), MIN_CHARS), False)
        lists, phrase = lists.filter(wanted), pc.unique(phrase.filter(wanted))
        first = pc.unique(pc.list_element(lists, 0))
        phrases = {self._digest(p) for p in phrase.to_pylist()}
        firsts = {self._digest(w) for w in first.to_pylist()}
        first_chars = set(pc.unique(pc.utf8_length(first)).to_pylist())
        lengths = set(pc.unique(pc.list_value_length(lists)).to_pylist())
        digit_forms: set[str] = set()
        for phone in set(phone_list):
            digit_forms |= {d for d in _phone_variants(phone, regions) if len(d) <= MAX_PHONE_DIGITS}
        self._digit_digests = {self._digest("#" + d) for d in digit_forms}
        self._digit_lengths = sorted({len(d) for d in digit_forms})
        forms = np.array(sorted({int(d) for d in digit_forms}), dtype=np.uint64)
        self._digit_mixes = np.unique(self._mix(forms))
        self._singles = {self._digest(w) for w in singles.to_pylist()}
        self._single_mixes = np.unique(self._mix_strings(singles)) if len(singles) else np.zeros(0, np.uint64)
        self._single_chars = pa.array(sorted(set(pc.utf8_length(singles).to_pylist())), pa.int32())
        self.count = len(phrases) + len(self._singles) + len(self._digit_digests)
        self._phrases = phrases
        self._first_set = firsts
        self._first_mixes = np.unique(self._mix_strings(first)) if len(first) else np.zeros(0, np.uint64)
        self._lengths = sorted(lengths)
        # only words as long as some value's first word are mixed and compared (a length is no value)
        self._first_chars = pa.array(sorted(first_chars), pa.int32())

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("KnownValues holds a one-off key and is never serialized")

    def _digest(self, text: str) -> bytes:
        # surrogatepass: a lone surrogate from a broken \\u escape is hashed, not an error
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16).digest()

    def _mix(self, x: np.ndarray) -> np.ndarray:
        """A keyed 64-bit mix (splitmix64 finalizer): a cheap vectorized filter before BLAKE2b."""
        with np.errstate(over="ignore"):
            z = (x ^ self._mix_key) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    def _mix_strings(self, words: pa.Array) -> np.ndarray:
        """The keyed mix of each string's UTF-8 bytes (its length, then 8 bytes at a time), vectorized."""
        n = len(words)
        if n == 0:
            return np.zeros(0, np.uint64)
        offsets = np.frombuffer(words.buffers()[1], dtype=np.int32)[words.offset:words.offset + n + 1]
        starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
        data = words.buffers()[2]
        raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        padded = np.concatenate([raw, np.zeros(8, np.uint8)])  # a chunk may read past the last word
        mixed = self._mix(lengths.astype(np.uint64))
        todo, chunk = np.arange(n), 0
        while len(todo):
            base, left = starts[todo] + 8 * chunk, lengths[todo] - 8 * chunk
            word = np.zeros(len(todo), np.uint64)
            for k in range(8):
                byte = np.where(left > k, padded[np.minimum(base + k, len(padded) - 1)], 0).astype(np.uint64)
                word |= byte << np.uint64(8 * k)
            mixed[todo] = self._mix(mixed[todo] ^ word)
            chunk += 1
            todo = todo[lengths[todo] > 8 * chunk]
        return mixed

    def found_in(self, values: pa.Array, *, decode: bool = True) -> pa.Array:
        """True where a text holds one of the known values as a whole word sequence (or phone digits).

        With ``decode``, texts holding something encoded (``%40``, ``\\u0040``, ``&#64;``,
        full-width forms) are also searched as a reader reads them (``pseudozone.pii.normalize``).
        """
        return _search((self,), values, decode)

    def _found_digits(self, runs: tuple[pa.Array, np.ndarray] | None, n: int) -> np.ndarray:
        hit = np.zeros(n, dtype=bool)
        if runs is None or not self._digit_lengths:
            return hit
        words, row_of = runs
        size = pc.utf8_length(words).to_numpy(zero_copy_only=False)
        keep = np.flatnonzero((size >= self._digit_lengths[0]) & (size <= 18))
        if len(keep) == 0:
            return hit
        words, row_of = words.take(pa.array(keep)), row_of[keep]
        # a whole digit run must be one of the known forms: '99301234567' is no '+49 30 1234567'
        numbers = pc.cast(words, pa.uint64()).to_numpy(zero_copy_only=False).astype(np.uint64)
        maybe = np.flatnonzero(np.isin(self._mix(numbers), self._digit_mixes))
        for at in maybe.tolist():
            if self._digest("#" + words[at].as_py()) in self._digit_digests:
                hit[row_of[at]] = True
        return hit

    def _found_words(self, index: _Words | None, n: int) -> np.ndarray:
        hit = np.zeros(n, dtype=bool)
        if index is None or len(index.words) == 0:
            return hit
        if self._singles:
            hit |= self._found_single_words(index.with_accents, n)
        if self._phrases:
            hit |= self._found_phrases(index, n)
        return hit

    def _found_single_words(self, index: _Words, n: int) -> np.ndarray:
        """Rows holding a one-word value, accents and all (its keyed mix filters, its digest confirms)."""
        hit = np.zeros(n, dtype=bool)
        distinct = index.encoded.dictionary
        maybe = np.flatnonzero(pc.is_in(pc.utf8_length(distinct), value_set=self._single_chars)
                               .to_numpy(zero_copy_only=False))
        if len(maybe) == 0:
            return hit
        mixes = self._mix_strings(distinct.take(pa.array(maybe, pa.int64())))
        maybe = maybe[np.isin(mixes, self._single_mixes)]
        confirmed = [i for i in maybe.tolist() if self._digest(distinct[i].as_py()) in self._singles]
        if confirmed:
            indices = np.asarray(index.encoded.indices.to_numpy(zero_copy_only=False))
            hit[index.rows[np.isin(indices, confirmed)]] = True
        return hit

    def _found_phrases(self, index: _Words, n: int) -> np.ndarray:
        words, rows, encoded = index.words, index.rows, index.encoded
        distinct = encoded.dictionary
        maybe = np.flatnonzero(pc.is_in(pc.utf8_length(distinct), value_set=self._first_chars)
                               .to_numpy(zero_copy_only=False))
        # a distinct word may start a known value when its keyed mix is a first word's (a
        # filter: every phrase it may start is confirmed by its BLAKE2b digest below)
        starts_value = np.zeros(len(distinct), dtype=bool)
        starts_value[maybe] = np.isin(self._mix_strings(distinct.take(pa.array(maybe, pa.int64()))),
                                      self._first_mixes)
        indices = np.asarray(encoded.indices.to_numpy(zero_copy_only=False))
        starts = np.flatnonzero(starts_value[indices])
        hit = np.zeros(n, dtype=bool)
        if len(starts) == 0:
            return hit
        row_of = rows
        # few positions start with a known first word; build their phrases one by one
        word_list = words.take(pa.array(_window_indices(starts, self._lengths[-1], len(words)))).to_pylist()
        width = self._lengths[-1]
        for i, start in enumerate(starts.tolist()):
            if hit[row_of[start]]:
                continue
            seq = word_list[i * width:(i + 1) * width]
            for length in self._lengths:
                end = start + length - 1
                if end >= len(row_of) or row_of[end] != row_of[start]:
                    break
                if self._digest(" ".join(seq[:length])) in self._phrases:
                    hit[row_of[start]] = True
                    break
        return hit

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where in ``text`` a known value occurs: (start, end) of each match, in order."""
        found: list[tuple[int, int]] = []
        words = _word_spans(text)
        folded = [_fold_word(text[a:b]) for a, b in words] if self._phrases else []
        kept = [_fold_word(text[a:b], keep_accents=True) for a, b in words] if self._singles else []
        i = 0
        while i < len(words):
            matched = 0
            if self._phrases and self._digest(folded[i]) in self._first_set:
                for length in reversed(self._lengths):
                    if i + length <= len(words) and \
                            self._digest(" ".join(folded[i:i + length])) in self._phrases:
                        matched = length
                        break
            if not matched and self._singles and self._digest(kept[i]) in self._singles:
                matched = 1  # a one-word value, accents and all
            if matched:
                found.append((words[i][0], words[i + matched - 1][1]))
                i += matched
            else:
                i += 1
        if self._digit_lengths:
            for run in _DIGIT_RUN_PY.finditer(text):
                digits = re.sub(r"\D", "", run.group())
                if len(digits) > MAX_PHONE_DIGITS:
                    continue
                if len(digits) in self._digit_lengths and self._digest("#" + digits) in self._digit_digests:
                    found.append(run.span())
        return sorted(found)


class AnyKnown:
    """Several ``KnownValues`` searched as one (the tenant's, and a batch's own)."""

    def __init__(self, *parts: KnownValues) -> None:
        self._parts = parts
        self.count = sum(p.count for p in parts)

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("KnownValues holds a one-off key and is never serialized")

    def found_in(self, values: pa.Array, *, decode: bool = True) -> pa.Array:
        """As ``KnownValues.found_in``, for any part's values (the text is split into words once)."""
        return _search(self._parts, values, decode)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return sorted(s for part in self._parts if part.count for s in part.spans(text))


@dataclass(frozen=True)
class _Words:
    """A string array's words (non-empty), the row of each, and the words dictionary-encoded."""

    words: pa.Array
    rows: np.ndarray
    encoded: pa.DictionaryArray
    values: pa.Array
    keep_accents: bool = False

    @classmethod
    def of(cls, values: pa.Array, *, keep_accents: bool = False) -> _Words:
        words, rows = tokens(values, keep_accents=keep_accents)
        return cls(words, np.asarray(rows.to_numpy(zero_copy_only=False)), pc.dictionary_encode(words),
                   values, keep_accents)

    @cached_property
    def with_accents(self) -> _Words:
        """The same texts' words with their accents kept (what one-word values are matched against)."""
        if self.keep_accents or pc.all(pc.string_is_ascii(_plain_strings(self.values))).as_py() is not False:
            return self  # ASCII words have no accents to keep
        return _Words.of(self.values, keep_accents=True)


def _split_spaced_digits(spaced: pa.Array) -> pa.Array:
    """Runs of digits separated by spaces, split (a list per value).

    The ASCII split: pyarrow 26's ``utf8_split_whitespace`` reads one byte past a value that
    ends in a space, and keeps that space in the last word when the byte there starts a UTF-8
    character (the next value's, or whatever memory follows the buffer).
    """
    return pc.ascii_split_whitespace(spaced)


def _digit_runs(values: pa.Array) -> tuple[pa.Array, np.ndarray] | None:
    """Every run of digits (joined across phone separators) and its row; None when there is none."""
    joined = _plain_strings(values)
    for _ in range(2):
        joined = pc.replace_substring_regex(joined, _DIGIT_JOIN, r"\1\2")
    runs = _split_spaced_digits(pc.replace_substring_regex(joined, r"\D+", " "))
    words, rows = pc.list_flatten(runs), pc.list_parent_indices(runs)
    size = pc.utf8_length(words)
    fits = pc.and_(pc.greater_equal(size, MIN_PHONE_DIGITS), pc.less_equal(size, MAX_PHONE_DIGITS))
    keep = pc.fill_null(fits, False)
    words, rows = words.filter(keep), rows.filter(keep)
    return (words, np.asarray(rows.to_numpy(zero_copy_only=False))) if len(words) else None


def _found_plain(parts: Iterable[KnownValues], values: pa.Array) -> np.ndarray:
    """Rows of ``values`` holding a value of any of ``parts``, as written (words split once)."""
    n = len(values)
    hit = np.zeros(n, dtype=bool)
    live = [p for p in parts if p.count]
    if n == 0 or not live:
        return hit
    if any(p._phrases or p._singles for p in live):
        index = _Words.of(values)
        for part in live:
            hit |= part._found_words(index, n)
    if any(p._digit_lengths for p in live):
        runs = _digit_runs(values)
        for part in live:
            hit |= part._found_digits(runs, n)
    return hit


def _found_decoded(parts: Iterable[KnownValues], values: pa.Array) -> pa.Array:
    from pseudozone.pii.normalize import normalize
    from pseudozone.pii.scan import decoding_rows

    parts = tuple(parts)
    hit = _found_plain(parts, values)
    plain = _plain_strings(values)
    rows = decoding_rows(plain)
    if len(rows):
        texts = plain.take(pa.array(rows)).to_pylist()
        decoded = pa.array([None if t is None else normalize(t).text for t in texts], pa.string())
        hit[rows] |= _found_plain(parts, decoded)
    return pa.array(hit)


def _search(parts: tuple[KnownValues, ...], values: pa.Array, decode: bool) -> pa.Array:
    from pseudozone.validation.detect import per_distinct

    if decode:
        return per_distinct(values, lambda v: _found_decoded(parts, v))
    return per_distinct(values, lambda v: pa.array(_found_plain(parts, v)))


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Word spans as ``word_lists`` splits words: letters, digits and marks; CJK characters alone."""
    return [m.span() for m in _WORD_PY.finditer(text)]


def _window_indices(starts: np.ndarray, width: int, total: int) -> np.ndarray:
    """Indices of ``width`` words from each start, clipped to the last word."""
    grid = starts[:, None] + np.arange(width)[None, :]
    return np.minimum(grid, total - 1).ravel()


# what the scrubber, the gates and the nightly run accept as known values
Known = KnownValues | AnyKnown
