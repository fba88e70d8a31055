from __future__ import annotations

import datetime as dt

import pyarrow as pa

from pseudozone.generalize import GENERALIZERS


def test_ip_prefix_truncates_v4_to_24_and_v6_to_48_and_nulls_garbage() -> None:
    values = pa.array(["203.0.113.45", "2001:db8:85a3::8a2e:370:7334", "::ffff:10.1.2.3", "garbage",
                       None, "[2001:db8::1]", "fe80::1%eth0", " 198.51.100.7 "])
    assert GENERALIZERS["ip_prefix"](values, {}).to_pylist() == [
        "203.0.113.0/24", "2001:db8:85a3::/48", "10.1.2.0/24", None, None, "2001:db8::/48",
        "fe80::/48", "198.51.100.0/24"]


def test_year_keeps_only_the_year() -> None:
    values = pa.array([dt.date(1990, 5, 17), None], pa.date32())
    assert GENERALIZERS["year"](values, {}).to_pylist() == [1990, None]


def test_prefix_keeps_leading_characters_normalized() -> None:
    values = pa.array(["sw1a 1aa", " 10115", None, "7"])
    assert GENERALIZERS["prefix"](values, {"length": 2}).to_pylist() == ["SW", "10", None, "7"]
