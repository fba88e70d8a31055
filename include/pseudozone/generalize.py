"""Generalizers for quasi-identifiers, one small function each, listed explicitly.

A generalizer maps a column to a coarser one (IP → network prefix, birth date
→ year, postal code → leading characters).  Values that cannot be generalized
(a malformed IP) become null: never the raw value.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

IPV4_PREFIX = 24
IPV6_PREFIX = 48


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# canonical dotted quads (no leading zeros, no spaces): generalized by one vectorized regex
_IPV4 = rf"^({_OCTET}\.{_OCTET}\.{_OCTET})\.{_OCTET}$"


_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_KEEP = IPV4_PREFIX // 8  # both prefixes are whole bytes
_V6_KEEP = IPV6_PREFIX // 8


def _ip_network(raw: str | None) -> str | None:
    """Network of one address in canonical text (RFC 5952 for IPv6), or None if invalid."""
    if raw is None:
        return None
    text = raw.strip().strip("[]")
    if "%" in text:  # IPv6 zone id: fe80::1%eth0
        text = text.split("%", 1)[0]
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except (OSError, ValueError):
        return None
    if len(packed) == 16 and packed[:12] == _V4_MAPPED:
        packed = packed[12:]
    if len(packed) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, packed[:_V4_KEEP] + bytes(4 - _V4_KEEP))}/{IPV4_PREFIX}"
    return f"{socket.inet_ntop(socket.AF_INET6, packed[:_V6_KEEP] + bytes(16 - _V6_KEEP))}/{IPV6_PREFIX}"


def ip_prefix(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    """IPv4 → /24, IPv6 → /48, anything else → null; once per distinct address.

    Canonical IPv4 text (the common case) is rewritten by a vectorized regex; the
    rest (IPv6, IPv4-mapped, bracketed, padded) is parsed by ``inet_pton``.
    """
    del params
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary
    simple = pc.fill_null(pc.match_substring_regex(distinct, _IPV4), False)
    networks = pc.replace_substring_regex(distinct, _IPV4, r"\1.0/24")
    rest = pc.filter(distinct, pc.invert(simple))
    if len(rest):
        slow = pa.array([_ip_network(v) for v in rest.to_pylist()], pa.string())
        networks = pc.replace_with_mask(networks, pc.invert(simple), slow)
    return pa.DictionaryArray.from_arrays(encoded.indices, networks)


def year(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    del params
    return pc.cast(pc.year(values), pa.int16())


def prefix(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    length = int(params["length"])
    trimmed = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    return pc.utf8_slice_codeunits(trimmed, 0, length)


def significant(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    """A number rounded down to ``digits`` significant digits (123,456 → 120,000 with 2), type kept.

    A byte count or amount exact to the unit is nearly unique per row, so it would link a row
    to the tenant's copy of it (docs/adr/0010-linkage.md); its order of magnitude does not.
    """
    import numpy as np

    digits = int(params["digits"])
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    x = np.asarray(pc.fill_null(arr.cast(pa.float64()), 0).to_numpy(zero_copy_only=False))
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.abs(x))) - (digits - 1)
    if pa.types.is_integer(arr.type):
        exponent = np.maximum(exponent, 0)
    scale = np.where(np.isfinite(exponent), np.power(10.0, exponent), 1.0)
    rounded = np.trunc(x / scale) * scale
    out = pa.array(rounded, pa.float64()).cast(arr.type, safe=False)
    return pc.if_else(pc.is_valid(arr), out, pa.scalar(None, arr.type))


GENERALIZERS: dict[str, Callable[[pa.Array, dict[str, Any]], pa.Array]] = {
    "ip_prefix": ip_prefix,
    "year": year,
    "prefix": prefix,
    "significant": significant,
}
