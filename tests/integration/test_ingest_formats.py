"""Column formats end to end: a value that does not fit quarantines its batch; suites check formats."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import contracts, ingest, landing
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.validation import gate
from pseudozone.validation.expectations import (
    ExpectColumnValuesToBeFreeOfKnownValues,
    ExpectColumnValuesToBeFreeOfPii,
    ExpectColumnValuesToMatchPattern,
)
from pseudozone.validation.suites import PSEUDONYM_RE, PURE_ID_RE, _text_checks
from tests import planted
from tests.conftest import TEST_MASTER_KEY

TOKENS = """\
dataset: tokens
partition_date_from: ts
columns:
  tenant_id: {class: keep, type: string, nullable: false}
  user_id:   {class: identifier, type: string, subject: true}
  ts:        {class: keep, type: timestamp, nullable: false}
  token:     {class: keep, type: string, format: hex}
  label:     {class: keep, type: string}
  note:      {class: free_text, type: string}
"""


@pytest.fixture
def tokens_lake(settings: Settings, master_key_env: None, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Settings:
    extra = tmp_path / "contracts"
    extra.mkdir()
    (extra / "tokens.yaml").write_text(TOKENS)
    monkeypatch.setenv(contracts.CONTRACTS_DIR_ENV, str(extra))
    return settings


def _land(settings: Settings, dataset: str, table: pa.Table, name: str = "batch-0001.parquet") -> Path:
    target = settings.landing / dataset / f"tenant={planted.TENANT}" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return target


def _tokens(tokens: list[str | None]) -> pa.Table:
    n = len(tokens)
    return pa.table({"tenant_id": [planted.TENANT] * n, "user_id": [planted.USER] * n,
                     "ts": pa.array([planted.TS] * n, pa.timestamp("us", tz="UTC")),
                     "token": pa.array(tokens, pa.string()), "label": ["x"] * n, "note": ["hi"] * n})


def test_given_values_that_fit_then_the_batch_is_published(tokens_lake: Settings) -> None:
    _land(tokens_lake, "tokens", _tokens(["deadbeef", None, "0123456789ABCDEF"]))
    [result] = ingest.ingest_pending(tokens_lake)
    assert result.status == "done", result.reason
    assert result.rows_event == 3


def test_given_email_in_hex_column_then_batch_quarantined(tokens_lake: Settings) -> None:
    values: list[str | None] = ["deadbeef"] * 6
    values[1], values[4] = planted.EMAIL, planted.PHONE
    source = _land(tokens_lake, "tokens", _tokens(values))

    [result] = ingest.ingest_pending(tokens_lake)

    assert result.status == "quarantined" and result.reason is not None
    assert result.reason["code"] == "format_mismatch"
    assert result.reason["columns"] == ["token"]
    assert result.reason["rows"] == 2 and result.reason["rows_at"] == [1, 4]
    assert result.reason["details"] == [{"column": "token", "format": "hex", "rows": 2, "rows_at": [1, 4]}]
    assert not source.exists()
    [reason_file] = sorted(tokens_lake.quarantine.rglob("*.reason.json"))
    text = reason_file.read_text()
    assert json.loads(text)["code"] == "format_mismatch"
    assert planted.find_needles(text) == [] and "zelda" not in text.lower()
    assert reason_file.with_name(source.name).exists()  # the file itself is kept, in quarantine
    assert not any(tokens_lake.event_zone.rglob("*batch-0001*"))
    assert not any(tokens_lake.pii_zone.rglob("*batch-0001*"))


def test_given_an_iban_in_a_hex_column_then_the_gate_stops_it(tokens_lake: Settings) -> None:
    # a German IBAN is made of hex characters only: it fits 'hex', but it is no pure id and is scanned
    iban = "DE89370400440532013000"
    _land(tokens_lake, "tokens", _tokens(["deadbeef", iban, "0123456789abcdef"]))

    [result] = ingest.ingest_pending(tokens_lake)

    assert result.status == "quarantined" and result.reason is not None
    assert result.reason["code"] == "validation_failed"
    failures = [f for r in result.reason["validation"] for f in r["failures"] if f["column"] == "token"]
    assert [(f["expectation"], f["rows"]) for f in failures] == [
        ("expect_column_values_to_be_free_of_pii", [1])]
    assert iban not in json.dumps(result.reason)
    assert not any(tokens_lake.event_zone.rglob("*batch-0001*"))


def test_given_random_hex_ids_that_are_all_digits_then_they_pass(tokens_lake: Settings) -> None:
    # 1 in 35,000 random 16-hex ids is all digits, Luhn-valid and in a card issuer's range: a
    # format admits it, and the gate does not take it for a card (docs/adr/0003)
    _land(tokens_lake, "tokens", _tokens(["4539148803436467", "5555555555554444", "deadbeefdeadbeef"]))

    [result] = ingest.ingest_pending(tokens_lake)

    assert result.status == "done", result.reason


def test_given_email_in_a_bundled_id_column_then_batch_quarantined(settings: Settings,
                                                                    master_key_env: None) -> None:
    events = planted.events()
    sessions = events["session_id"].to_pylist()
    sessions[3] = planted.EMAIL
    events = events.set_column(events.column_names.index("session_id"), "session_id", pa.array(sessions))
    _land(settings, "events", events)

    [result] = ingest.ingest_pending(settings)

    assert result.status == "quarantined" and result.reason is not None
    assert result.reason["code"] == "format_mismatch" and result.reason["columns"] == ["session_id"]
    assert result.reason["rows_at"] == [3]
    assert planted.find_needles(json.dumps(result.reason)) == []


def test_a_keep_column_with_no_format_is_still_scanned_for_pii_and_a_formatted_one_is_matched() -> None:
    contract = contracts.parse_contract(TOKENS, "tokens.yaml")
    checks = _text_checks(contract, known_ref="known-1")
    by_column: dict[str, list[object]] = {}
    for check in checks:
        by_column.setdefault(check.column, []).append(check)

    token, *more = by_column["token"]
    assert isinstance(token, ExpectColumnValuesToMatchPattern)
    assert token.pattern == contract.column("token").format_regex == "^(?:[0-9a-fA-F]+)$"
    # what the format admits beyond pure ids (uuid, hex, ULID) is still scanned and searched
    assert {type(c) for c in more} == {ExpectColumnValuesToBeFreeOfPii,
                                       ExpectColumnValuesToBeFreeOfKnownValues}
    assert all(c.skip_pattern == PURE_ID_RE for c in more)
    for unformatted in ("label", "note"):
        kinds = {type(c) for c in by_column[unformatted]}
        assert kinds == {ExpectColumnValuesToBeFreeOfPii, ExpectColumnValuesToBeFreeOfKnownValues}
    [subject] = by_column["subject_id"]
    assert isinstance(subject, ExpectColumnValuesToMatchPattern) and subject.pattern == PSEUDONYM_RE


def test_a_formatted_identifier_keeps_the_pseudonym_check_in_the_event_zone() -> None:
    text = TOKENS.replace("subject: true}", "subject: true, format: {name: hex, prefix: u_}}")
    checks = _text_checks(contracts.parse_contract(text, "tokens.yaml"), known_ref=None)
    [subject] = [c for c in checks if c.column == "subject_id"]
    assert isinstance(subject, ExpectColumnValuesToMatchPattern) and subject.pattern == PSEUDONYM_RE


def test_the_bundled_event_suite_matches_formats_instead_of_scanning_ids() -> None:
    checks = _text_checks(contracts.load("events"), known_ref="known-1")
    # event_name: its format, and scans that skip pure ids
    check, *more = [c for c in checks if c.column == "event_name"]
    assert isinstance(check, ExpectColumnValuesToMatchPattern) and check.pattern != PSEUDONYM_RE
    assert more and all(c.skip_pattern == PURE_ID_RE for c in more)
    # the platform's ids are linkable: the event zone holds keyed pseudonyms, checked as such
    for column in ("event_id", "session_id"):
        [check] = [c for c in checks if c.column == column]
        assert isinstance(check, ExpectColumnValuesToMatchPattern) and check.pattern == PSEUDONYM_RE
    for column in ("user_agent", "page_url", "properties_json"):
        assert any(isinstance(c, ExpectColumnValuesToBeFreeOfPii) for c in checks if c.column == column)


def test_the_gate_stops_a_value_that_escaped_the_format_check(settings: Settings, master_key_env: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # simulate a conform regression: formats are not enforced at ingest
    monkeypatch.setattr(landing, "_check_formats", lambda columns, contract: None)
    events = planted.events()
    names = events["event_name"].to_pylist()
    names[2] = planted.IPV6
    _land(settings, "events", events.set_column(events.column_names.index("event_name"), "event_name",
                                                pa.array(names)))

    [result] = ingest.ingest_pending(settings)

    assert result.status == "quarantined" and result.reason is not None
    assert result.reason["code"] == "validation_failed"
    failures = [f for r in result.reason["validation"] for f in r["failures"] if f["column"] == "event_name"]
    # the format check stops it, and so does the PII scan (an IPv6 address is no pure id)
    assert sorted((f["expectation"], f["rows"]) for f in failures) == [
        ("expect_column_values_to_be_free_of_pii", [2]), ("expect_column_values_to_match_pattern", [2])]
    assert planted.find_needles(json.dumps(result.reason)) == []


def test_a_clean_event_zone_table_passes_the_format_checks() -> None:
    events = contracts.load("events")
    ring = KeyRing(TEST_MASTER_KEY)
    subject = ring.subject_id("acme", "someone")
    table = pa.table({"subject_id": [subject] * 3, "anonymous_pid": [None] * 3,
                      "event_id": [planted.link_id(i) for i in (
                          "evt_1", "0d6f1c0e-5b1a-4f7e-9a3b-2c4d5e6f7a8b", "01HV6Z8K9Q2W3E4R5T6Y7M8N9P")],
                      "event_name": ["page_view", "checkout:started", "add_to_cart"],
                      "event_ts": pa.array([planted.TS] * 3),
                      "session_id": [planted.link_id("9f86d081884c7d65", "session_id"), None,
                                     planted.link_id("s_1", "session_id")],
                      "ip_prefix": ["198.51.100.0/24"] * 3, "user_agent": ["x"] * 3, "page_url": ["/"] * 3,
                      "properties_json": ["{}"] * 3})
    assert gate.check(events, events=[("e.parquet", table)])
