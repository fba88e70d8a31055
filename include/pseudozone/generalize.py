"""Generalizers for quasi-identifiers, one small function each, listed explicitly.

A generalizer maps a column to a coarser one (IP → network prefix, birth date
→ year, postal code → leading characters).  Values that cannot be generalized
(a malformed IP) become null: never the raw value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

IPV4_PREFIX = 24
IPV6_PREFIX = 48


def _ip_network(raw: str | None) -> str | None:
    if raw is None:
        return None
    text = raw.strip().strip("[]")
    if "%" in text:  # IPv6 zone id: fe80::1%eth0
        text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = IPV4_PREFIX if addr.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def ip_prefix(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    """IPv4 → /24, IPv6 → /48; computed once per distinct address."""
    del params
    encoded = pc.dictionary_encode(values)
    networks = pa.array([_ip_network(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(networks, encoded.indices)


def year(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    del params
    return pc.cast(pc.year(values), pa.int16())


def prefix(values: pa.Array, params: dict[str, Any]) -> pa.Array:
    length = int(params["length"])
    trimmed = pc.utf8_upper(pc.utf8_trim_whitespace(values))
    return pc.utf8_slice_codeunits(trimmed, 0, length)


GENERALIZERS: dict[str, Callable[[pa.Array, dict[str, Any]], pa.Array]] = {
    "ip_prefix": ip_prefix,
    "year": year,
    "prefix": prefix,
}
