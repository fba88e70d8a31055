"""Great Expectations suites over event-zone tables: each PII form is caught, no value is echoed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import contracts, ingest
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.validation import detect
from pseudozone.validation.expectations import registered
from pseudozone.validation.suites import Report, Validator, event_suite
from tests import planted
from tests.conftest import TEST_MASTER_KEY

EVENTS = contracts.load("events")


def validate_table(table: pa.Table, contract: contracts.Contract, *,
                   forbidden_subjects: list[str] | None = None) -> Report:
    validator = Validator()
    with registered(pa.array(sorted(forbidden_subjects or []), pa.string())) as ref:
        return validator.validate([("part.parquet", table)], zone="events", dataset=contract.dataset,
                                  key="events", expectations=lambda: event_suite(contract, forbidden_ref=ref))


@pytest.fixture
def clean_events(lake: Settings) -> pa.Table:
    ingest.ingest_pending(lake)
    files = sorted((lake.event_zone / "events").rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files[:6]])


def test_a_published_event_zone_file_passes(clean_events: pa.Table) -> None:
    report = validate_table(clean_events, EVENTS)
    assert report.success, report.failed_names()
    assert report.evaluated >= 10 and report.rows == clean_events.num_rows


@pytest.mark.parametrize(("text", "kind"), [
    (planted.FREE_TEXT_FORMS["email"], "email"),
    (planted.FREE_TEXT_FORMS["email_urlencoded"], "email"),
    (planted.FREE_TEXT_FORMS["phone_intl"], "phone"),
    (planted.FREE_TEXT_FORMS["phone_us"], "phone"),
    (planted.FREE_TEXT_FORMS["card"], "card"),
    (planted.FREE_TEXT_FORMS["iban"], "iban"),
    (planted.FREE_TEXT_FORMS["ipv4"], "ip"),
    (planted.FREE_TEXT_FORMS["ipv6"], "ip"),
])
def test_each_pii_form_in_free_text_fails_its_expectation_without_echoing_it(
        clean_events: pa.Table, text: str, kind: str) -> None:
    col = clean_events.column_names.index("properties_json")
    values = clean_events["properties_json"].to_pylist()
    values[3] = text
    dirty = clean_events.set_column(col, "properties_json", pa.array(values, pa.string()))

    report = validate_table(dirty, EVENTS)

    assert not report.success
    failed = [f for f in report.failures if f.column == "properties_json" and f.kind == kind]
    assert failed and failed[0].unexpected_count == 1 and failed[0].rows == [3]
    serialized = json.dumps(report.to_dict())
    assert planted.find_needles(serialized) == []


def test_a_raw_address_an_unknown_column_and_a_bad_pseudonym_fail(clean_events: pa.Table) -> None:
    ip_col = clean_events.column_names.index("ip_prefix")
    bad = clean_events.set_column(ip_col, "ip_prefix", pa.array([planted.IPV4] * clean_events.num_rows))
    sid_col = bad.column_names.index("subject_id")
    subjects = bad["subject_id"].to_pylist()
    subjects[0] = planted.USER
    bad = bad.set_column(sid_col, "subject_id", pa.array(subjects, pa.string()))
    bad = bad.append_column("email", pa.array(["x"] * bad.num_rows))

    report = validate_table(bad, EVENTS)

    names = report.failed_names()
    assert "expect_table_columns_to_match_set:None" in names
    assert "expect_column_values_to_match_pattern:ip_prefix" in names
    assert "expect_column_values_to_match_pattern:subject_id" in names
    assert planted.find_needles(json.dumps(report.to_dict())) == []


def test_erased_or_restricted_subjects_must_be_absent(clean_events: pa.Table) -> None:
    someone = clean_events["subject_id"].drop_null()[0].as_py()
    report = validate_table(clean_events, EVENTS, forbidden_subjects=[someone, KeyRing(TEST_MASTER_KEY)
                                                                      .subject_id("acme", "nobody")])
    [failure] = report.failures
    assert failure.expectation == "expect_column_values_to_be_in_registered_set" and failure.unexpected_count


def test_card_detection_requires_a_luhn_valid_number() -> None:
    values = pa.array(["order 4539 1488 0343 6467", "order 4539 1488 0343 6468", "ref 1234567890123", None])
    assert detect.matches(values, "card").to_pylist() == [True, False, False, False]
    with pytest.raises(ValueError, match="unknown PII form"):
        detect.matches(values, "ssn")


def test_checks_on_distinct_values_equal_checks_on_every_row() -> None:
    texts = [planted.FREE_TEXT_FORMS["email"], "plain text", None, f"card {planted.CARD}", "ok"] * 1000
    plain = pa.array(texts, pa.string())
    row_by_row = [t is not None and (t == planted.FREE_TEXT_FORMS["email"] or planted.CARD in t)
                  for t in texts]
    assert detect.any_of(plain).to_pylist() == row_by_row                       # distinct path (5000 rows)
    assert detect.any_of(plain.dictionary_encode()).to_pylist() == row_by_row   # dictionary path
    assert detect.any_of(plain.slice(0, 10)).to_pylist() == row_by_row[:10]     # small: row by row
    unique = pa.array([f"id {i}" for i in range(3000)] + [planted.EMAIL])       # barely repeats
    assert detect.any_of(unique).to_pylist() == [False] * 3000 + [True]
