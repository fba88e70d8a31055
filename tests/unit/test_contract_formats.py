"""Column formats in dataset contracts: parsing, the full-match pattern, enforcement in conform."""

from __future__ import annotations

import ipaddress
import random
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pseudozone import contracts
from pseudozone.contracts import ColumnSpec, FormatSpec
from pseudozone.errors import ContractError, ContractViolation
from pseudozone.landing import conform

BASE = """
dataset: things
partition_date_from: ts
columns:
  tenant_id: {class: keep, type: string, nullable: false}
  user_id: {class: identifier, type: string, subject: true}
  ts: {class: keep, type: timestamp, nullable: false}
  note: {class: free_text, type: string}
  count: {class: keep, type: int64}
"""

ULID = "01HV6Z8K9Q2W3E4R5T6Y7M8N9P"
# values that hold PII: none may fit any format a bundled contract gives
PII_VALUES = ["zelda@example.org", "Zelda.Plantedpii+promo@Example.ORG", "zelda%40example.org",
              "+49 30 1234567", "+44 20 7946 0999", "(555) 010-4477", "030 1234567", "555-0123",
              "4930123456", "00493012345678", "192.168.0.1", "198.51.100.77", "2001:db8::1",
              "2001:db8:beef:7::77", "fe80::1", "::1", "::ffff:192.0.2.1", "abcd:ef01::1",
              "Zelda Plantedpii", "GB82 WEST 1234 5698 7654 32", "4539 1488 0343 6467", ""]


def _parse(column_yaml: str, name: str = "token") -> ColumnSpec:
    contract = contracts.parse_contract(BASE + f"  {name}: {column_yaml}\n", "things.yaml")
    return contract.column(name)


def _fits(pattern: str | None, values: list[str]) -> list[bool]:
    assert pattern is not None
    return [bool(v) for v in pc.match_substring_regex(pa.array(values, pa.string()), pattern).to_pylist()]


def _bundled_formats() -> dict[str, str]:
    found = {}
    for dataset in ("events", "profiles", "server_logs"):
        for col in contracts.load(dataset).columns:
            if col.format_regex is not None:
                found[f"{dataset}.{col.name}"] = col.format_regex
    return found


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("yaml_format", "expected"), [
    ("uuid", FormatSpec(kind="uuid")),
    ("hex", FormatSpec(kind="hex")),
    ("ulid", FormatSpec(kind="ulid")),
    ("integer", FormatSpec(kind="integer")),
    ("{name: hex, length: 16}", FormatSpec(kind="hex", min_length=16, max_length=16)),
    ("{name: hex, min_length: 16, max_length: 64}", FormatSpec(kind="hex", min_length=16, max_length=64)),
    ("{name: hex, max_length: 8}", FormatSpec(kind="hex", max_length=8)),
    ("{name: ulid, prefix: usr_}", FormatSpec(kind="ulid", prefix="usr_")),
    ('{name: hex, prefix: "s_", length: 16}', FormatSpec(kind="hex", prefix="s_", min_length=16,
                                                         max_length=16)),
    ("{enum: [GET, POST]}", FormatSpec(kind="enum", values=("GET", "POST"))),
    ("{regex: '[A-Z]{2}'}", FormatSpec(kind="regex", pattern="[A-Z]{2}")),
])
def test_given_each_format_then_it_parses(yaml_format: str, expected: FormatSpec) -> None:
    spec = _parse(f"{{class: keep, type: string, format: {yaml_format}}}")
    assert spec.format == expected
    assert spec.format_regex == expected.regex


def test_given_an_identifier_with_a_format_then_it_parses() -> None:
    contract = contracts.parse_contract(
        BASE.replace("subject: true}", "subject: true, format: {name: ulid, prefix: usr_}}"), "things.yaml")
    assert contract.subject.format == FormatSpec(kind="ulid", prefix="usr_")


def test_given_no_format_then_format_regex_is_none() -> None:
    assert _parse("{class: keep, type: string}").format_regex is None


def test_a_contract_with_formats_stays_frozen_and_its_formats_hashable() -> None:
    spec = _parse("{class: keep, type: string, format: {enum: [a, b]}}")
    assert hash(spec.format) == hash(FormatSpec(kind="enum", values=("a", "b")))
    with pytest.raises(AttributeError):
        spec.format = None  # type: ignore[misc]


@pytest.mark.parametrize(("column_yaml", "message"), [
    ("{class: keep, type: string, format: phone}", "format 'phone' is not one of"),
    ("{class: keep, type: string, format: {name: base64}}", "format 'base64' is not one of"),
    ("{class: keep, type: string, format: {enum: GET}}", "enum must be a non-empty list"),
    ("{class: keep, type: string, format: {enum: []}}", "enum must be a non-empty list"),
    ("{class: keep, type: string, format: {enum: [1, 2]}}", "list of non-empty strings"),
    ("{class: keep, type: string, format: {enum: [a, a]}}", "lists a value twice"),
    ("{class: keep, type: string, format: {regex: '(unclosed'}}", "not a valid RE2 pattern"),
    ("{class: keep, type: string, format: {regex: '(?=lookahead)'}}", "not a valid RE2 pattern"),
    ("{class: keep, type: string, format: {regex: 'x)|(.*'}}", "not a valid RE2 pattern"),
    ("{class: keep, type: string, format: {regex: 'x\\'}}", "not a valid RE2 pattern"),
    ("{class: keep, type: string, format: {regex: ''}}", "regex must be a non-empty string"),
    ("{class: keep, type: string, format: {regex: 'a', prefix: x_}}", "regex takes no prefix"),
    ("{class: keep, type: string, format: {enum: [a], length: 2}}", "enum takes no prefix or length"),
    ("{class: keep, type: string, format: {name: uuid, length: 36}}", "uuid takes no length options"),
    ("{class: keep, type: string, format: {name: hex, length: 0}}", "whole numbers from 1 to 1000"),
    ("{class: keep, type: string, format: {name: hex, length: 2000}}", "whole numbers from 1 to 1000"),
    ("{class: keep, type: string, format: {name: hex, length: 8, max_length: 9}}", "not both"),
    ("{class: keep, type: string, format: {name: hex, min_length: 9, max_length: 8}}", "larger than"),
    ("{class: keep, type: string, format: {name: hex, prefix: ''}}", "prefix must not be empty"),
    ("{class: keep, type: string, format: {name: hex, prefix: 7}}", "prefix must be a string"),
    ("{class: keep, type: string, format: {name: hex, colour: red}}", "unknown option"),
    ("{class: keep, type: string, format: {name: hex, enum: [a]}}", "exactly one of name:, enum: or regex:"),
    ("{class: keep, type: string, format: {}}", "exactly one of name:, enum: or regex:"),
    ("{class: keep, type: string, format: [hex]}", "must be a name or a mapping"),
    ("{class: keep, type: string, format: hex, length: 16}", "belong inside format:"),
    ("{class: free_text, type: string, format: hex}", "format is only for keep and identifier columns"),
    ("{class: pii, type: string, format: hex}", "format is only for keep and identifier columns"),
    ("{class: keep, type: int64, format: integer}", "format needs type string, not int64"),
])
def test_given_a_bad_format_spec_then_contract_error_names_the_column(column_yaml: str, message: str) -> None:
    with pytest.raises(ContractError, match=message) as err:
        _parse(column_yaml, name="bad_col")
    assert "column 'bad_col'" in str(err.value)


def test_the_bundled_contracts_give_their_id_columns_formats_but_not_user_id() -> None:
    assert set(_bundled_formats()) == {"events.event_id", "events.session_id", "events.event_name",
                                       "server_logs.request_id", "server_logs.method", "profiles.country"}
    for dataset in ("events", "profiles", "server_logs"):
        contract = contracts.load(dataset)
        assert contract.column("user_id").format is None
        assert contract.column("tenant_id").format is None


# -- format_regex: the whole value must match --------------------------------------------------------


@pytest.mark.parametrize(("yaml_format", "fit", "misfit"), [
    ("uuid", ["123e4567-e89b-42d3-a456-426614174000", "123E4567-E89B-42D3-A456-426614174000"],
     ["123e4567e89b42d3a456426614174000", "123e4567-e89b-42d3-a456-42661417400",
      "x123e4567-e89b-42d3-a456-426614174000", "123e4567-e89b-42d3-a456-426614174000\n",
      "g23e4567-e89b-42d3-a456-426614174000"]),
    ("hex", ["0", "deadBEEF", uuid.UUID(int=7).hex], ["", "0x12", "dead beef", "abcg", "-1"]),
    ("{name: hex, length: 16}", ["0123456789abcdef"], ["0123456789abcde", "0123456789abcdef0"]),
    ("{name: hex, min_length: 2, max_length: 3}", ["ab", "abc"], ["a", "abcd"]),
    ("ulid", [ULID, ULID.lower(), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"],
     ["81HV6Z8K9Q2W3E4R5T6Y7M8N9P", ULID[:-1], ULID + "0", "01HV6Z8K9Q2W3E4R5T6Y7M8N9U",
      "01HV6Z8K9Q2W3E4R5T6Y7M8N9I"]),
    ("integer", ["0", "42", "-7", "0012"], ["", "-", "+7", "4.2", "1e3", " 42", "42 ", "--1"]),
    ("{name: ulid, prefix: usr_}", [f"usr_{ULID}"], [ULID, f"usr-{ULID}", f"usr_{ULID}x", f"xusr_{ULID}"]),
    ("{name: integer, prefix: 'a.b+'}", ["a.b+12"], ["aXb+12", "a.bb12", "a.b+"]),
    ("{name: uuid, prefix: evt_}", ["evt_123e4567-e89b-42d3-a456-426614174000"],
     ["123e4567-e89b-42d3-a456-426614174000"]),
    ("{enum: [GET, POST, a.b, 'x|y', 'c d']}", ["GET", "POST", "a.b", "x|y", "c d"],
     ["get", "GETX", "XGET", "aXb", "x", "y", "c  d", ""]),
    ("{regex: 'ab|cd'}", ["ab", "cd"], ["abcd", "xab", "abx", "a"]),
    ("{regex: '^[A-Z]{2}$'}", ["DE"], ["D", "DEU", "de"]),
])
def test_format_regex_matches_whole_values_only(yaml_format: str, fit: list[str], misfit: list[str]) -> None:
    pattern = _parse(f"{{class: keep, type: string, format: {yaml_format}}}").format_regex
    assert _fits(pattern, fit) == [True] * len(fit)
    assert _fits(pattern, misfit) == [False] * len(misfit)


def test_no_email_phone_or_ip_fits_any_bundled_format() -> None:
    rng = random.Random(3)
    ips = []
    for _ in range(2000):
        v6 = ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice([0, 16, 64, 96]))
        ips += [str(v6), v6.exploded, str(ipaddress.IPv4Address(rng.getrandbits(32)))]
    values = PII_VALUES + ips + [f"{v}@example.com" for v in ("evt_1", "abc", uuid.UUID(int=1).hex)]
    for column, pattern in _bundled_formats().items():
        fits = [v for v, ok in zip(values, _fits(pattern, values), strict=True) if ok]
        assert fits == [], f"{column} admits {fits[:3]}"


def test_the_bundled_id_formats_fit_real_world_and_sample_ids() -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4()).upper(), uuid.uuid4().hex, uuid.uuid4().hex.upper(), ULID,
           f"usr_{ULID}", f"evt_{uuid.uuid4().hex}", "evt_123", "req_4567", "s_42", "req_planted_1",
           uuid.uuid4().hex[:16], "0" * 16, "1234567890123456", "a" * 64, "evt_" + "x" * 47,
           "p" * 16 + "-" + "x" * 47, "anon-acme-12"]
    for column in ("events.event_id", "events.session_id", "server_logs.request_id"):
        assert _fits(_bundled_formats()[column], ids) == [True] * len(ids), column
        too_long_or_bare = ["a" * 65, "p" * 17 + "_1", "evt_" + "x" * 48, "1" * 15, "evt", "_1", "r1"]
        assert _fits(_bundled_formats()[column], too_long_or_bare) == [False] * len(too_long_or_bare)
    names = ["page_view", "add_to_cart", "checkout", "checkout:started", "cart.item-added", "a", "add",
             "added_to_cart", "deface", "v2:login", "x" * 64]
    assert _fits(_bundled_formats()["events.event_name"], names) == [True] * len(names)
    assert _fits(_bundled_formats()["events.event_name"], ["Page_View", "1st_visit", "x" * 65, "cafe:x",
                                                           "has space", "a/b"]) == [False] * 6
    assert _fits(_bundled_formats()["server_logs.method"], ["GET", "POST", "DELETE", "PATCH"]) == [True] * 4
    assert _fits(_bundled_formats()["server_logs.method"], ["get", "GETS", "BREW"]) == [False] * 3
    assert _fits(_bundled_formats()["profiles.country"], ["DE", "GB"]) == [True] * 2
    assert _fits(_bundled_formats()["profiles.country"], ["de", "DEU", "D"]) == [False] * 3


# -- enforcement in conform ---------------------------------------------------------------------------

HEX_CONTRACT = contracts.parse_contract(BASE + """\
  token: {class: keep, type: string, format: {name: hex, length: 16}}
  method: {class: keep, type: string, required: false, format: {enum: [GET, POST]}}
""", "things.yaml")


def _things(n: int, **overrides: list[object]) -> pa.Table:
    base: dict[str, list[object]] = {
        "tenant_id": ["acme"] * n, "user_id": [f"u{i}" for i in range(n)], "ts": ["2026-11-01T10:00:00Z"] * n,
        "note": ["hi"] * n, "count": [1] * n, "token": ["0123456789abcdef"] * n}
    base.update(overrides)
    return pa.table(base)


def test_given_values_that_fit_then_conform_passes_and_nulls_are_allowed() -> None:
    table = conform(_things(3, token=["0123456789abcdef", None, "FEDCBA9876543210"]), HEX_CONTRACT, "acme")
    assert table["token"].null_count == 1 and table["method"].null_count == 3


def test_given_email_in_hex_column_then_batch_is_rejected_naming_column_format_and_rows() -> None:
    tokens = ["0123456789abcdef"] * 30
    for row in (2, 5, *range(8, 30)):
        tokens[row] = "zelda@example.org"
    with pytest.raises(ContractViolation) as err:
        conform(_things(30, token=tokens, method=["GET"] * 29 + ["BREW"]), HEX_CONTRACT, "acme")
    violation = err.value
    assert violation.code == "format_mismatch"
    assert violation.detail == "25 value(s) do not fit their contract format"
    assert violation.columns == ["method", "token"] and violation.rows == 24
    assert violation.rows_at == [2, 5, *range(8, 26)]  # the first 20 rows
    reason = violation.to_reason()
    assert reason["details"] == [
        {"column": "token", "format": "hex (length 16)", "rows": 24, "rows_at": [2, 5, *range(8, 26)]},
        {"column": "method", "format": "enum of 2", "rows": 1, "rows_at": [29]}]
    assert "zelda" not in str(reason) and "BREW" not in str(reason) and "zelda" not in str(violation)


def test_given_a_formatted_identifier_then_it_is_checked_after_trimming() -> None:
    text = BASE.replace("subject: true}", "subject: true, format: {name: ulid, prefix: usr_}}")
    contract = contracts.parse_contract(text + "  token: {class: keep, type: string}\n", "things.yaml")
    table = conform(_things(3, user_id=[f"  usr_{ULID} ", "   ", None]), contract, "acme")
    assert table["user_id"].to_pylist() == [f"usr_{ULID}", None, None]
    with pytest.raises(ContractViolation) as err:
        conform(_things(2, user_id=[f"usr_{ULID}", "zelda@example.org"]), contract, "acme")
    assert err.value.code == "format_mismatch" and err.value.columns == ["user_id"]
    assert err.value.rows_at == [1]


def test_the_sample_generator_fits_the_bundled_formats(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pseudozone.config import Settings
    from pseudozone.landing import discover, read_batch
    from pseudozone.sample import generate

    settings = Settings.from_env(tmp_path / "lake")
    generate(settings, events=2000, tenants=2, seed=5)
    refs = discover(settings)
    assert {r.dataset for r in refs} == {"events", "profiles", "server_logs"}
    for ref in refs:
        read_batch(settings, ref)  # raises ContractViolation if a value does not fit
