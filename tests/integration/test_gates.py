"""Publish gates: a batch or rewrite that would publish PII is stopped, quarantined, and publishes nothing."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import cli, contracts, ingest, landing, ledger, state
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.validation import gate
from pseudozone.validation.known import KnownValues
from tests import planted
from tests.conftest import TEST_MASTER_KEY

FORM_KIND = {"email": "email", "email_urlencoded": "email", "phone_intl": "phone", "phone_us": "phone",
             "phone_urlencoded": "phone", "card": "card", "card_plain": "card", "iban": "iban",
             "ipv4": "ip", "ipv6": "ip"}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _land(settings: Settings, dataset: str, table: pa.Table, name: str = "gate-0001.parquet") -> Path:
    target = settings.landing / dataset / f"tenant={planted.TENANT}" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)
    return target


def _clean_events(n: int = 8) -> pa.Table:
    table = planted.events("evt_gate").slice(0, n)  # not the published planted ids
    for column, value in (("user_agent", "curl/8.5.0"), ("page_url", "/home"), ("properties_json", "{}")):
        table = table.set_column(table.column_names.index(column), column, pa.array([value] * n))
    return table


def _with(table: pa.Table, column: str, row: int, value: str) -> pa.Table:
    values = table[column].to_pylist()
    values[row] = value
    return table.set_column(table.column_names.index(column), column, pa.array(values, pa.string()))


def _reason(settings: Settings) -> dict[str, Any]:
    [path] = sorted(settings.quarantine.rglob("*.reason.json"))
    reason: dict[str, Any] = json.loads(path.read_text())
    return reason


@pytest.fixture
def published(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


@pytest.mark.parametrize("form", sorted(FORM_KIND))
def test_the_gate_stops_each_free_text_form_the_scrubber_missed(
        published: Settings, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    # simulate a scrubber regression: free text reaches the event table unchanged (its scan,
    # and the evidence the gate may reuse, is that of a scrubber that works)
    real = ingest.scrub.scrub_with_evidence

    def replaces_nothing(col: pa.ChunkedArray, **kw: Any) -> tuple[pa.Array, Any]:
        return col.combine_chunks(), real(col, **kw)[1]

    monkeypatch.setattr(ingest.scrub, "scrub_with_evidence", replaces_nothing)
    before = _tree(published.zones)
    _land(published, "events", _with(_clean_events(), "properties_json", 3, planted.FREE_TEXT_FORMS[form]))

    [result] = ingest.ingest_pending(published)

    assert result.status == "quarantined" and result.reason is not None
    assert result.reason["code"] == "validation_failed"
    failures = [f for r in result.reason["validation"] for f in r["failures"]]
    hit = [f for f in failures if f["column"] == "properties_json" and f["kind"] == FORM_KIND[form]]
    assert hit and hit[0]["rows"] == [3] and hit[0]["file"].endswith("gate-0001.parquet")
    assert _tree(published.zones / "events") == {k.removeprefix("events/"): v for k, v in before.items()
                                                 if k.startswith("events/")}
    assert not any((published.zones / "pii").rglob("*gate-0001*"))
    with state.connect(published) as conn:
        assert ledger.get(conn, result.batch_id).status == "quarantined"
    assert planted.find_needles(json.dumps(_reason(published))) == []


def _formats_not_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    # simulate a conform regression: the contract's column formats are not checked at ingest
    monkeypatch.setattr(landing, "_check_formats", lambda columns, contract: None)


def test_pii_in_a_column_the_scrubber_does_not_touch_is_stopped(
        published: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # session_id has a format: an email does not fit it, so the contract rejects the batch
    _land(published, "events", _with(_clean_events(), "session_id", 5, planted.EMAIL))

    [result] = ingest.ingest_pending(published)

    assert result.reason is not None and result.reason["code"] == "format_mismatch"
    assert result.reason["columns"] == ["session_id"] and result.reason["rows_at"] == [5]
    assert not any(published.event_zone.rglob("*gate-0001*"))

    # were formats not enforced at ingest, the gate's format check would stop a kept column's
    # value (event_name); a linkable one (session_id) reaches the event zone as a pseudonym only
    _formats_not_enforced(monkeypatch)
    _land(published, "events", _with(_clean_events(), "event_name", 5, planted.EMAIL), "gate-0002.parquet")
    [result] = ingest.ingest_pending(published)
    assert result.reason is not None and result.reason["code"] == "validation_failed"
    assert "event_name" in result.reason["columns"]
    assert not any(published.event_zone.rglob("*gate-0002*"))
    _land(published, "events", _with(_clean_events(), "session_id", 5, planted.EMAIL), "gate-0003.parquet")
    [result] = ingest.ingest_pending(published)
    assert result.status == "done"
    [written] = published.event_zone.rglob("*gate-0003*")
    sessions = pq.read_table(written)["session_id"].to_pylist()
    assert planted.link_id(planted.EMAIL, "session_id") in sessions
    assert planted.find_needles("\n".join(map(str, sessions))) == []


def _two_profiles() -> pa.Table:
    # row 1's free text names row 0's subject
    first = planted.profiles()
    second = first.set_column(1, "user_id", pa.array(["usr_gate_0002"]))
    for column, value in (("email", "someone.else@example.net"), ("full_name", "Quinn Otherperson"),
                          ("phone", "+44 20 7946 0111"), ("street_address", "Elsewhere 1"),
                          ("city", "Othertown"),
                          ("attributes_json", f'{{"referred_by": "{planted.NAME.upper()}"}}')):
        second = second.set_column(second.column_names.index(column), column, pa.array([value]))
    return pa.concat_tables([first, second])


def test_another_rows_subject_is_scrubbed_from_free_text(lake: Settings) -> None:
    _land(lake, "profiles", _two_profiles(), "two-0001.parquet")
    results = ingest.ingest_pending(lake)
    assert {r.status for r in results} == {"done"}
    [path] = (lake.event_zone / "profiles").rglob("*two-0001*.parquet")
    texts = pq.read_table(path)["attributes_json"].to_pylist()
    assert texts[1] == '{"referred_by": "[pii]"}'
    assert all(planted.find_needles(t) == [] for t in texts)


def test_another_rows_subject_the_scrubber_missed_is_stopped_through_keyed_hashes(
        published: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # a scrubber regression: known values are no longer replaced; the gate still finds them
    real = ingest.scrub.scrub_with_evidence
    monkeypatch.setattr(ingest.scrub, "scrub_with_evidence",
                        lambda col, **kw: real(col, regions=kw["regions"]))
    _land(published, "profiles", _two_profiles())

    [result] = ingest.ingest_pending(published)

    assert result.reason is not None and result.reason["code"] == "validation_failed"
    [failure] = [f for r in result.reason["validation"] for f in r["failures"]]
    assert failure["expectation"] == "expect_column_values_to_be_free_of_known_values"
    assert failure["column"] == "attributes_json" and failure["rows"] == [0, 1]  # its own and the other
    assert planted.find_needles(json.dumps(result.reason)) == []


def test_the_cli_exits_1_and_the_task_fails_without_retry(published: Settings, capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _formats_not_enforced(monkeypatch)  # else event_name's format rejects these at ingest
    _land(published, "events", _with(_clean_events(), "event_name", 0, planted.IBAN))
    assert cli.main(["--home", str(published.root), "ingest"]) == 1
    assert "publish gate stopped 1 batch" in capsys.readouterr().err

    from pseudozone import tasks

    _land(published, "events", _with(_clean_events(), "event_name", 0, planted.CARD), "gate-0002.parquet")
    [batch] = tasks.discover_batches(str(published.root))
    with pytest.raises(Exception) as caught:
        tasks.pseudonymize_batch(batch, str(published.root))
    assert type(caught.value).__name__ == "AirflowFailException"
    assert "quarantined" in str(caught.value) and planted.find_needles(str(caught.value)) == []


def test_forbidden_subjects_and_plaintext_in_the_pii_zone_fail_the_gate() -> None:
    events = contracts.load("events")
    profiles = contracts.load("profiles")
    ring = KeyRing(TEST_MASTER_KEY)
    erased, kept = ring.subject_id("acme", "gone"), ring.subject_id("acme", "kept")
    table = pa.table({"subject_id": [kept, erased], "anonymous_pid": [None, None],
                      "event_id": [planted.link_id("evt_1"), planted.link_id("evt_2")],
                      "event_name": ["view", "view"], "event_ts": pa.array([planted.TS] * 2),
                      "session_id": [planted.link_id("s_1", "session_id")] * 2,
                      "ip_prefix": ["198.51.100.0/24", None],
                      "user_agent": ["x", "y"], "page_url": ["/", "/"], "properties_json": ["{}", "{}"]})
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(events, events=[("e.parquet", table)], forbidden=[erased])
    [failure] = caught.value.reports[0].failures
    assert failure.rows == [1] and failure.column == "subject_id"

    # restricted zone: only restricted subjects
    with pytest.raises(gate.ValidationFailed):
        gate.check(events, restricted=[("r.parquet", table)], restricted_subjects=[kept])

    ciphertext = bytes(range(40))
    nonce_then_plaintext = bytes(range(12)) + planted.NAME.encode()
    pii = pa.table({"subject_id": [kept, kept], "user_id": [ciphertext, ciphertext],
                    "email": [ciphertext, planted.EMAIL.encode()], "full_name": [nonce_then_plaintext, None],
                    "phone": [ciphertext, None], "street_address": [ciphertext, None], "city": [None, None]},
                   schema=pa.schema([("subject_id", pa.string())] + [
                       (c, pa.binary()) for c in ("user_id", "email", "full_name", "phone", "street_address",
                                                  "city")]))
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(profiles, pii=[("p.parquet", pii)])
    assert caught.value.reports[0].failed_names() == ["expect_column_values_to_be_ciphertext:email",
                                                      "expect_column_values_to_be_ciphertext:full_name"]
    assert planted.find_needles(json.dumps(caught.value.to_reason())) == []


def test_known_values_never_leave_the_process() -> None:
    known = KnownValues([planted.NAME, planted.EMAIL])
    with pytest.raises(TypeError, match="never serialized"):
        pickle.dumps(known)
    assert known.found_in(pa.array(["hi ZELDA plantedpii ørsted", "zelda", None])).to_pylist() == [
        True, False, False]


def test_a_failing_gate_leaves_no_staging_and_a_corrected_delivery_goes_through(
        published: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _formats_not_enforced(monkeypatch)  # else event_name's format rejects the IP at ingest
    bad = _land(published, "events", _with(_clean_events(), "event_name", 2, planted.IPV4))
    [result] = ingest.ingest_pending(published)
    assert result.status == "quarantined" and not bad.exists()
    assert result.reason is not None and result.reason["code"] == "validation_failed"
    assert not any(published.staging.rglob("*.parquet"))
    _land(published, "events", _clean_events(), "gate-0001.parquet")
    [again] = ingest.ingest_pending(published)
    assert again.status == "done"
    assert gate.check(contracts.load("events")) == []  # nothing to publish, nothing to check


def test_a_rewrite_that_would_keep_an_erased_subject_publishes_nothing(
        published: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone.rights import process, requests, store

    ring = KeyRing(TEST_MASTER_KEY)
    requests.submit(published, {"type": "erase", "tenant_id": planted.TENANT, "user_id": planted.USER},
                    source="test", keyring=ring)
    before = _tree(published.zones)
    # simulate a rewrite bug: the erased subject's rows are kept
    monkeypatch.setattr(process, "_drop_subjects", lambda table, *_subjects: table)

    with pytest.raises(gate.ValidationFailed):
        process.process_all(published, "run-gate", keyring=ring)

    after = _tree(published.zones)
    assert {k: v for k, v in after.items() if not k.startswith("quarantine/")} == before
    reasons = sorted((published.quarantine / "rights").rglob("*.reason.json"))
    assert reasons
    reason = json.loads(reasons[0].read_text())
    assert reason["code"] == "validation_failed" and "subject_id" in reason["columns"]
    assert planted.find_needles(json.dumps(reason)) == []
    with store.engine_for(published).connect() as conn:
        states = [r.state for r in conn.execute(store.requests.select())]
        events = [r.action for r in conn.execute(store.audit_log.select())]
    assert states == ["in_progress"] and "validation.failed" in events

    monkeypatch.undo()
    summary = process.process_all(published, "run-gate-2", keyring=ring)
    assert summary["completed"] == {"erase": 1}


def test_several_files_at_once_and_a_metric_error_fails_closed_without_its_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = contracts.load("profiles")
    row = planted.profiles()
    ring = KeyRing(TEST_MASTER_KEY)
    known = KnownValues([planted.NAME, planted.STREET])
    event = ingest.build_event_table(row, profiles, ring, planted.TENANT, known=known)
    event = ingest._plain_take(event, pa.array([0]))
    other = event.set_column(event.column_names.index("attributes_json"), "attributes_json",
                             pa.array([f'{{"note": "ask {planted.NAME.upper()}"}}']))
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(profiles, events=[("a.parquet", event), ("b.parquet", other)], known=known)
    [failure] = caught.value.reports[0].failures
    assert (failure.file, failure.rows, failure.column) == ("b.parquet", [0], "attributes_json")

    def broken(self: KnownValues, values: pa.Array) -> pa.Array:
        raise ValueError(f"cannot parse {planted.EMAIL}")

    monkeypatch.setattr(KnownValues, "found_in", broken)
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(profiles, events=[("a.parquet", event)], known=known)
    kinds = {f.kind for f in caught.value.reports[0].failures}
    assert kinds == {"error:ValueError"}
    assert planted.find_needles(json.dumps(caught.value.to_reason())) == []
    results = gate.validator().context.validation_results_store
    stored = json.dumps([str(results.get(k)) for k in results.list_keys()])
    assert planted.find_needles(stored) == []


def test_a_raw_id_in_a_linkable_column_fails_the_gate() -> None:
    events = contracts.load("events")
    subject = KeyRing(TEST_MASTER_KEY).subject_id("acme", "u1")
    table = pa.table({"subject_id": [subject] * 2, "anonymous_pid": [None] * 2,
                      "event_id": [planted.link_id("evt_1"), "0f8fad5bd9cb469fa16570867728950e"],
                      "event_name": ["view"] * 2, "event_ts": pa.array([planted.TS] * 2),
                      "session_id": [planted.link_id("s_1", "session_id"), "9f86d081884c7d65"],
                      "ip_prefix": ["198.51.100.0/24"] * 2, "user_agent": ["x"] * 2, "page_url": ["/"] * 2,
                      "properties_json": ["{}"] * 2})
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(events, events=[("f.parquet", table)])
    assert sorted((f.name(), f.rows) for r in caught.value.reports for f in r.failures) == [
        ("expect_column_values_to_match_pattern:event_id", [1]),
        ("expect_column_values_to_match_pattern:session_id", [1])]


def test_a_rewrite_checks_every_rows_subject_and_the_changed_rows_in_full() -> None:
    events = contracts.load("events")
    ring = KeyRing(TEST_MASTER_KEY)
    kept, moved = ring.subject_id("acme", "kept"), ring.subject_id("acme", "moved")
    table = pa.table({"subject_id": [kept, moved, moved], "anonymous_pid": [None] * 3,
                      "event_id": [planted.link_id(f"evt_{i}") for i in (1, 2, 3)],
                      "event_name": ["view"] * 3, "event_ts": pa.array([planted.TS] * 3),
                      "session_id": [planted.link_id("s_1", "session_id")] * 3,
                      "ip_prefix": ["198.51.100.0/24"] * 3, "user_agent": ["x"] * 3, "page_url": ["/"] * 3,
                      "properties_json": ["{}", "{}", planted.FREE_TEXT_FORMS["iban"]]})
    # rows of subjects the rewrite did not touch are only checked for their subject
    assert gate.check(events, events=[("f.parquet", table)], changed={kept})
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(events, events=[("f.parquet", table)], changed={moved})
    [failure] = [f for r in caught.value.reports for f in r.failures]
    assert (failure.file, failure.column, failure.kind, failure.rows) == ("f.parquet", "properties_json",
                                                                          "iban", [2])
    with pytest.raises(gate.ValidationFailed):
        gate.check(events, events=[("f.parquet", table)], changed={kept}, forbidden=[kept])


@pytest.mark.parametrize(("event_id", "event_name", "found"), [
    ("usr_gate_0002", "page_view", "expect_column_values_to_be_free_of_known_values:event_id"),
    ("0f8fad5bd9cb469fa16570867728950e", "zelda.planted",
     "expect_column_values_to_be_free_of_known_values:event_name"),
    ("DE89-3704-0044-0532-0130-00", "page_view", "expect_column_values_to_be_free_of_pii:event_id:iban"),
    ("0f8fad5bd9cb469fa16570867728950e", "tel:0301234567",
     "expect_column_values_to_be_free_of_pii:event_name:phone"),
    ("0f8fad5bd9cb469fa16570867728950e", "ip-10.0.0.1",
     "expect_column_values_to_be_free_of_pii:event_name:ip"),
])
def test_a_formatted_keep_column_is_still_checked_where_its_format_admits_more_than_pure_ids(
        event_id: str, event_name: str, found: str) -> None:
    # the bundled contract's ids are linkable (pseudonyms in the event zone): a contract that
    # keeps them as they are has them checked by their format and scanned where it admits more
    bundled = contracts.available()["events"].read_text(encoding="utf-8")
    events = contracts.parse_contract(bundled.replace("linkable: true", "linkable: false"), "events.yaml")
    subject = KeyRing(TEST_MASTER_KEY).subject_id("acme", "u1")
    table = pa.table({"subject_id": [subject], "anonymous_pid": [None], "event_id": [event_id],
                      "event_name": [event_name], "event_ts": pa.array([planted.TS]),
                      "session_id": ["9f86d081884c7d65"], "ip_prefix": ["198.51.100.0/24"],
                      "user_agent": ["x"], "page_url": ["/"], "properties_json": ["{}"]})
    known = KnownValues(["usr_gate_0002", "Zelda Planted"])
    with pytest.raises(gate.ValidationFailed) as caught:
        gate.check(events, events=[("f.parquet", table)], known=known)
    assert [f.name() for r in caught.value.reports for f in r.failures] == [found]
    clean = table.set_column(table.column_names.index("event_name"), "event_name", pa.array(["page_view"]))
    clean = clean.set_column(clean.column_names.index("event_id"), "event_id",
                             pa.array(["0f8fad5bd9cb469fa16570867728950e"]))
    assert gate.check(events, events=[("f.parquet", clean)], known=known)
