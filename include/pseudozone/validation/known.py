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
a whole phrase, never as a substring of a longer word.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WORD_SEPARATORS = r"[^\p{L}\p{N}]+"
MIN_CHARS = 3          # values shorter than this (after normalising) are not searched for
MAX_WORDS = 8          # longer values are searched for by their first MAX_WORDS words


def word_lists(values: pa.Array) -> pa.Array:
    """Each string's words: lower-cased runs of letters and digits (a list per row)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    spaced = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(values), WORD_SEPARATORS, " "))
    # a text without words gives [""]: that empty word is dropped by its users
    return pc.utf8_split_whitespace(spaced)


def tokens(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(words, row of each word) of a string array."""
    lists = word_lists(values)
    words, rows = pc.list_flatten(lists), pc.list_parent_indices(lists)
    keep = pc.greater(pc.utf8_length(words), 0)
    return words.filter(keep), rows.filter(keep)


class KnownValues:
    """Keyed digests of a batch's raw values; ``found_in`` flags text that contains one."""

    def __init__(self, values: Iterable[str | None]) -> None:
        self._key = os.urandom(32)
        distinct = pa.array(sorted({v for v in values if v is not None}), pa.string())
        lists = pc.list_slice(word_lists(distinct), 0, MAX_WORDS)
        phrase = pc.binary_join(lists, " ")
        wanted = pc.fill_null(pc.greater_equal(pc.utf8_length(phrase), MIN_CHARS), False)
        lists, phrase = lists.filter(wanted), pc.unique(phrase.filter(wanted))
        first = pc.unique(pc.list_element(lists, 0))
        phrases = {self._digest(p) for p in phrase.to_pylist()}
        firsts = {self._digest(w) for w in first.to_pylist()}
        first_chars = set(pc.unique(pc.utf8_length(first)).to_pylist())
        lengths = set(pc.unique(pc.list_value_length(lists)).to_pylist())
        self.count = len(phrases)
        self._phrases = phrases
        self._firsts = pa.array(sorted(firsts), pa.binary())
        self._lengths = sorted(lengths)
        # only words as long as some value's first word are hashed (a length is no value)
        self._first_chars = pa.array(sorted(first_chars), pa.int32())

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("KnownValues holds a one-off key and is never serialized")

    def _digest(self, text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8"), key=self._key, digest_size=16).digest()

    def found_in(self, values: pa.Array) -> pa.Array:
        """True where a text holds one of the known values as a whole word sequence."""
        from pseudozone.validation.detect import per_distinct

        return per_distinct(values, self._found_in)

    def _found_in(self, values: pa.Array) -> pa.Array:
        n = len(values)
        if not self._phrases or n == 0:
            return pa.array(np.zeros(n, dtype=bool))
        words, rows = tokens(values)
        if len(words) == 0:
            return pa.array(np.zeros(n, dtype=bool))
        encoded = pc.dictionary_encode(words)
        distinct = encoded.dictionary
        maybe = np.flatnonzero(pc.is_in(pc.utf8_length(distinct), value_set=self._first_chars)
                               .to_numpy(zero_copy_only=False))
        digests: list[bytes | None] = [None] * len(distinct)
        candidates = distinct.take(pa.array(maybe, pa.int64())).to_pylist()
        for at, word in zip(maybe.tolist(), candidates, strict=True):
            digests[at] = self._digest(word)
        word_digest = pc.take(pa.array(digests, pa.binary()), encoded.indices)
        starts = np.flatnonzero(pc.is_in(word_digest, value_set=self._firsts).to_numpy(zero_copy_only=False))
        hit = np.zeros(n, dtype=bool)
        if len(starts) == 0:
            return pa.array(hit)
        row_of = rows.to_numpy()
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
        return pa.array(hit)


def _window_indices(starts: np.ndarray, width: int, total: int) -> np.ndarray:
    """Indices of ``width`` words from each start, clipped to the last word."""
    grid = starts[:, None] + np.arange(width)[None, :]
    return np.minimum(grid, total - 1).ravel()
