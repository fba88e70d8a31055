"""The nightly compliance run without Airflow: validation, erasures, deadlines, retention, report."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from pseudozone import ingest
from pseudozone.cli import main as cli
from pseudozone.compliance import nightly, report
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.rights import audit, process, requests, store
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)
NOW = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def published(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


def _all_text(root: Path) -> str:
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)


def _event_files_of(settings: Settings, subject: str) -> list[Path]:
    out = []
    for f in sorted(settings.event_zone.rglob("*.parquet")):
        if subject in pq.read_table(f, columns=["subject_id"])["subject_id"].to_pylist():
            out.append(f)
    return out


def test_a_clean_lake_passes_and_the_report_is_written_as_json_html_and_data_docs(
        published: Settings, capsys: Any) -> None:
    written = report.run_nightly(published, "nightly-1", now=NOW)

    assert written["status"] == "pass", written["summary"]
    assert written["summary"].startswith("PASS: ")
    latest = report.latest(published)
    assert latest is not None and latest["run_id"] == "nightly-1"
    zones_checked = {(z["zone"], z["dataset"]) for z in latest["validation"]["zones"]}
    assert {("events", "events"), ("events", "profiles"), ("events", "server_logs"),
            ("pii", "profiles")} <= zones_checked
    assert latest["validation"]["rows"] > 4000 and latest["audit"]["ok"]
    run = report.run_dir(published, "nightly-1")
    page = (run / "report.html").read_text()
    assert page.count("<svg") >= 2 and "PASS" in page  # no requests yet: no request charts
    assert (run / "data_docs" / "index.html").exists()
    assert any((run / "data_docs" / "validations").rglob("*.html"))
    # no suite is named with a '#': every link to it would break
    assert not [p for p in (run / "data_docs").rglob("*") if "#" in p.name]
    assert "%23" not in (run / "data_docs" / "index.html").read_text()

    report.run_nightly(published, "nightly-2", now=NOW + dt.timedelta(days=1))
    assert [h["run_id"] for h in report.latest(published)["history"]] == ["nightly-1", "nightly-2"]  # type: ignore[index]
    capsys.readouterr()
    assert cli(["--home", str(published.root), "report"]) == 0
    assert capsys.readouterr().out.startswith("PASS: ")


def test_an_overdue_request_and_an_incomplete_erasure_are_flagged(published: Settings) -> None:
    held_back = {f: f.read_bytes() for f in _event_files_of(published, SUBJECT)[:1]}
    requests.submit(published, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                    source="test", keyring=KR)
    process.process_all(published, "run-erase", keyring=KR)
    # a copy of the subject's rows comes back (restored from a backup, say)
    for path, data in held_back.items():
        path.write_bytes(data)
    waiting = requests.submit(published, {"type": "export", "tenant_id": "acme", "user_id": "usr_0000004"},
                              source="test", keyring=KR)
    with store.transaction(published) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == waiting.request_id)
                     .values(due_at=NOW - dt.timedelta(days=2)))

    written = report.run_nightly(published, "nightly-bad", now=NOW)
    latest = report.latest(published)
    assert latest is not None

    assert written["status"] == "fail"
    [overdue] = latest["requests"]["overdue"]
    assert overdue["request_id"] == waiting.request_id and overdue["days"] == 2
    [incomplete] = latest["erasures"]["incomplete"]
    assert incomplete["subject"] == SUBJECT
    assert any("still in 1 file(s)" in p for p in incomplete["problems"])
    failed = [z for z in latest["validation"]["zones"] if not z["success"]]
    assert [(z["zone"], z["dataset"], z["tenant_id"]) for z in failed] == [("events", "events", "acme")]
    assert failed[0]["failures"][0]["expectation"] == "expect_column_values_to_be_in_registered_set"
    page = (report.run_dir(published, "nightly-bad") / "report.html").read_text()
    assert waiting.request_id in page and incomplete["request_id"] in page and "FAIL" in page
    assert page.count("<svg") == 3
    assert planted.find_needles(_all_text(published.reports)) == []


def test_a_leak_into_the_zones_is_found_and_no_report_artifact_repeats_it(published: Settings) -> None:
    [victim] = sorted((published.event_zone / "events").rglob("*.parquet"))[:1]
    table = pq.read_table(victim)
    texts = table["properties_json"].to_pylist()
    texts[2] = planted.FREE_TEXT_FORMS["email"]
    texts[4] = planted.FREE_TEXT_FORMS["card"]
    pq.write_table(table.set_column(table.column_names.index("properties_json"), "properties_json",
                                    pa.array(texts, pa.string())), victim)
    [pii_file] = sorted((published.pii_zone / "profiles").rglob("*.parquet"))[:1]
    pii = pq.read_table(pii_file)
    emails = pii["email"].to_pylist()
    emails[0] = planted.EMAIL.encode()
    pq.write_table(pii.set_column(pii.column_names.index("email"), "email", pa.array(emails, pa.binary())),
                   pii_file)

    report.run_nightly(published, "nightly-leak", now=NOW)
    latest = report.latest(published)
    assert latest is not None and latest["status"] == "fail"

    failures = {(f["file"], f["column"], f["kind"]): f for z in latest["validation"]["zones"]
                for f in z["failures"]}
    rel = str(victim.relative_to(published.zones))
    assert failures[(rel, "properties_json", "email")]["rows"] == [2]
    assert failures[(rel, "properties_json", "card")]["rows"] == [4]
    assert (str(pii_file.relative_to(published.zones)), "email", None) in failures
    # JSON, HTML, Data Docs and the saved sections: counts, columns and rows only
    assert planted.find_needles(_all_text(published.reports)) == []


def test_retention_deletes_only_expired_partitions_audits_it_and_respects_holds(published: Settings) -> None:
    requests.add_legal_hold(published, tenant_id="globex", reason="litigation 2026-17", dataset="events")
    dates_before = {p.name for p in (published.event_zone / "events").glob("tenant_id=*/date=*")}
    # keep 25 days before 2026-11-29: partitions before 2026-11-04 are expired
    section = nightly.enforce_retention(published, now=NOW, overrides={"events": 25})

    deleted = {(d["tenant_id"], d["date"]) for d in section["deleted"] if d["dataset"] == "events"}
    assert deleted and all(date < "2026-11-04" for _, date in deleted)
    assert {t for t, _ in deleted} == {"acme"}  # globex is under a hold
    assert {k["tenant_id"] for k in section["kept_for_hold"]} == {"globex"}
    left = {p.name for p in (published.event_zone / "events" / "tenant_id=acme").glob("date=*")}
    assert left and all(name >= "date=2026-11-04" for name in left)
    globex = {p.name for p in (published.event_zone / "events" / "tenant_id=globex").glob("date=*")}
    assert globex <= dates_before and any(name < "date=2026-11-04" for name in globex)
    # server_logs keep 90 days: nothing of them is old enough
    assert not [d for d in section["deleted"] if d["dataset"] == "server_logs"]

    with store.engine_for(published).connect() as conn:
        entries = [json.loads(r.details) for r in conn.execute(
            select(store.audit_log).where(store.audit_log.c.action == "retention.deleted"))]
    assert sorted((e["tenant_id"], e["date"]) for e in entries if e["dataset"] == "events") == sorted(deleted)
    assert audit.verify(published).ok
    index = pa.concat_tables([pq.read_table(f) for f in published.subject_index.rglob("*.parquet")])
    assert not [p for p in index["path"].to_pylist()
                if p.startswith("events/events/tenant_id=acme/date=2026-11-0")
                and p.split("date=")[1][:10] < "2026-11-04"]
    # nothing is deleted twice
    assert nightly.enforce_retention(published, now=NOW, overrides={"events": 25})["deleted"] == []


def test_nightly_survives_an_empty_lake(settings: Settings) -> None:
    written = report.run_nightly(settings, "empty", now=NOW)
    assert written["status"] == "pass" and "0 file(s)" in written["summary"]
    shutil.rmtree(settings.reports)
    assert cli(["--home", str(settings.root), "report"]) == 2


def test_an_erasure_deletes_earlier_exports_and_passes_reverification(published: Settings) -> None:
    export = requests.submit(published, {"type": "export", "tenant_id": "acme", "user_id": planted.USER},
                             source="test", keyring=KR)
    process.process_all(published, "run-export", keyring=KR)
    archive = published.exports / "acme" / f"{export.request_id}.zip.enc"
    assert archive.exists()
    erase = requests.submit(published, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                            source="test", keyring=KR)
    process.process_all(published, "run-erase", keyring=KR)

    assert not archive.exists()
    assert requests.get_status(published, erase.request_id).outcome["export_archives_deleted"] == [
        export.request_id]
    report.run_nightly(published, "nightly-after-erase", now=NOW)
    latest = report.latest(published)
    assert latest is not None and latest["erasures"] == {"checked": 1, "incomplete": [], "no_data_found": 0}
    assert latest["status"] == "pass", latest["problems"]


def test_an_erasure_kept_under_a_dataset_hold_passes_and_does_not_block_later_rewrites(
        published: Settings) -> None:
    requests.add_legal_hold(published, tenant_id="acme", dataset="server_logs", reason="tax audit 2026")
    requests.submit(published, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                    source="test", keyring=KR)
    requests.submit(published, {"type": "export", "tenant_id": "acme", "user_id": "usr_0000004"},
                    source="test", keyring=KR)
    process.process_all(published, "run-held", keyring=KR)
    # the held server logs stay; the key is gone (the profile is not held)
    assert any(SUBJECT in pq.read_table(f, columns=["subject_id"])["subject_id"].to_pylist()
               for f in (published.event_zone / "server_logs").rglob("*.parquet"))
    # a later rewrite of the same batches, for someone else, is not stopped by the kept rows
    requests.submit(published, {"type": "restrict", "tenant_id": "acme", "user_id": "usr_0000003"},
                    source="test", keyring=KR)
    assert process.process_all(published, "run-later", keyring=KR)["completed"] == {"restrict": 1}

    report.run_nightly(published, "nightly-held", now=NOW)
    latest = report.latest(published)
    assert latest is not None and latest["status"] == "pass", latest["problems"]
    assert latest["erasures"] == {"checked": 1, "incomplete": [], "no_data_found": 0}
    exports = [z for z in latest["validation"]["zones"] if z["zone"] == "exports"]
    assert exports and exports[0]["success"] and exports[0]["rows"] > 0
    restricted = [z for z in latest["validation"]["zones"] if z["zone"] == "restricted"]
    assert restricted and all(z["success"] for z in restricted)


def test_the_report_lists_holds_restrictions_quarantined_batches_and_late_completions(
        published: Settings) -> None:
    requests.add_legal_hold(published, tenant_id="acme", dataset="server_logs", reason_code="tax_audit",
                            reason="Zelda Plantedname's audit", keyring=KR)
    for kind, user in (("restrict", "usr_0000004"), ("export", "usr_0000005")):
        requests.submit(published, {"type": kind, "tenant_id": "acme", "user_id": user}, source="test",
                        keyring=KR)
    process.process_all(published, "run-1", keyring=KR)
    with store.transaction(published) as conn:  # the export was completed two days after its deadline
        conn.execute(update(store.requests).where(store.requests.c.type == "export")
                     .values(due_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)))
    bad = published.landing / "events" / "tenant=acme" / "bad-0001.csv"
    bad.write_text("tenant_id,user_id,mystery\nacme,usr_1,x\n")
    ingest.ingest_pending(published)

    written = report.run_nightly(published, "nightly-standing", now=NOW)
    latest = report.latest(published)
    assert latest is not None
    reqs = latest["requests"]
    assert [(h["dataset"], h["scope"], h["reason_code"]) for h in reqs["holds"]] == [
        ("server_logs", "all subjects", "tax_audit")]
    assert reqs["restrictions"] == {"acme": 1}
    assert [q["batches"] for q in reqs["quarantined"]] == [1]
    [late] = reqs["completed_late"]
    assert late["type"] == "export" and late["days"] >= 1
    assert "1 completed late; 1 batch(es) quarantined; 1 hold(s), 1 restriction(s)" in written["summary"]
    page = (report.run_dir(published, "nightly-standing") / "report.html").read_text()
    assert "Active legal holds" in page and "tax_audit" in page and "Quarantined landing batches" in page
    assert "Plantedname" not in _all_text(published.reports)
