"""PII checks over Arrow string columns for the publish gates and the nightly run: a boolean per row.

They use the confirming detectors (``pseudozone.pii``: libphonenumber, mod-97,
Luhn with issuer ranges, ``ipaddress``, on text decoded as a reader sees it) and
the keyed-hash search for known values, never the scrubber's own choices: the
scrubber decides what it replaces (``pseudozone.scrub.SCRUB_KINDS``), these checks
decide independently what must not be published.  No value is kept or returned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pseudozone.pii import scan
from pseudozone.pii.detectors import DEFAULT_REGIONS, KINDS

__all__ = ["DEFAULT_REGIONS", "KINDS", "any_of", "ciphertext_like", "matches", "per_distinct"]
NONCE_BYTES = 12  # AES-GCM nonce at the start of every PII-zone value (pseudozone.keys)


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


def any_of(values: pa.Array | pa.ChunkedArray, kinds: list[str] | tuple[str, ...] = KINDS,
           regions: tuple[str, ...] | list[str] = DEFAULT_REGIONS) -> pa.Array:
    """True where a value holds PII of any of ``kinds`` (confirmed by its detector)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown PII form(s) {unknown}; expected some of {KINDS}")
    chosen, where = tuple(kinds), tuple(regions)
    return per_distinct(values, lambda arr: scan.flags(arr, kinds=chosen, regions=where))


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


def matches(values: pa.Array | pa.ChunkedArray, kind: str,
            regions: tuple[str, ...] | list[str] = DEFAULT_REGIONS) -> pa.Array:
    """True where a value holds PII of this form (nulls: False)."""
    if kind not in KINDS:
        raise ValueError(f"unknown PII form {kind!r}; expected one of {KINDS}")
    return scan.flags(values, kinds=KINDS, regions=tuple(regions), which=kind)
