"""Landing and quarantine retention, and erasure of the raw files (docs/adr/0011-landing-retention.md)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from pseudozone import ingest, state
from pseudozone.compliance import nightly, report
from pseudozone.config import Settings
from pseudozone.errors import ConfigError
from pseudozone.keys import KeyRing
from pseudozone.lake import layout
from pseudozone.rights import audit, process, requests, store
from pseudozone.sample import write_landing
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
OTHER_USER = "usr_0000005"  # a generated acme user
# what of the planted subject must be nowhere under the data root after its erasure
SUBJECT_NEEDLES = [planted.USER, planted.EMAIL, "zelda.plantedpii", planted.NAME, "Plantedpii", planted.PHONE]
LONG_AGO = "2026-01-01T00:00:00.000Z"


@pytest.fixture
def ingested(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _landing_files(settings: Settings) -> set[str]:
    return {str(p.relative_to(settings.landing)) for p in settings.landing.rglob("*") if p.is_file()}


def _age(settings: Settings, *, except_batches: tuple[str, ...] = ()) -> None:
    """Every done batch (but ``except_batches``) ingested long ago."""
    with state.connect(settings) as conn:
        conn.execute(f"UPDATE batches SET finished_at = ? WHERE status = 'done' AND batch_id NOT IN"
                     f" ({', '.join('?' * (len(except_batches) + 1))})", (LONG_AGO, "", *except_batches))


def _audit(settings: Settings, action: str) -> list[dict[str, Any]]:
    with store.engine_for(settings).connect() as conn:
        return [{"details": json.loads(r.details), "subject_id": r.subject_id, "request_id": r.request_id}
                for r in conn.execute(select(store.audit_log).where(store.audit_log.c.action == action))]


def _scan(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, needle) for every needle in any file under root: its bytes (any case) and, for
    Parquet files (compressed), every string cell."""
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        blob = path.read_bytes().lower()
        texts = [blob]
        if path.suffix == ".parquet":
            try:
                table = pq.read_table(path)
            except Exception:  # noqa: BLE001 - not a Parquet file after all: its bytes were searched
                table = None
            if table is not None:
                cells = [str(v) for col in table.columns for v in col.to_pylist() if v is not None]
                texts.append("\n".join(cells).encode().lower())
        for needle in needles:
            if any(needle.lower().encode() in t for t in texts):
                found.append((str(path.relative_to(root)), needle))
    return found


# -- landing retention ----------------------------------------------------------------------------


def test_retention_deletes_ingested_files_after_the_period_and_keeps_the_rest(ingested: Settings) -> None:
    s = ingested
    before = _landing_files(s)
    recent = "events.globex.events-0000"
    # a file changed since it was ingested (a new delivery), and one not ingested yet
    changed = s.landing / "server_logs" / "tenant=acme" / "server_logs-0000.parquet"
    table = pq.read_table(changed)
    pq.write_table(table.slice(1), changed)
    pending = write_landing(planted.events(), s.landing / "events" / "tenant=acme" / "late-0001", "parquet")
    _age(s, except_batches=(recent,))

    section = nightly.enforce_landing_retention(s, now=_now())

    after = _landing_files(s)
    deleted = {d["batch_id"] for d in section["deleted"]}
    assert section["landing_retention_days"] == 7 and section["quarantine_retention_days"] == 30
    assert "events.acme.planted-0000" in deleted and "profiles.acme.profiles-0000" in deleted
    assert recent not in deleted and "events/tenant=globex/events-0000.parquet" in after
    assert {d["batch_id"] for d in section["kept_changed"]} == {"server_logs.acme.server_logs-0000"}
    assert changed.exists() and pending.exists()
    assert before - after == {f"{d['dataset']}/tenant={d['tenant_id']}/{b.split('.', 2)[2]}.parquet"
                              for d in section["deleted"] for b in [d["batch_id"]]}
    entries = _audit(s, "landing.deleted")
    assert sorted(e["details"]["batch_id"] for e in entries) == sorted(deleted)
    assert not planted.find_needles(json.dumps(entries))
    assert audit.verify(s).ok
    # nothing twice; and the report says it
    assert nightly.enforce_landing_retention(s, now=_now())["deleted"] == []


def test_retention_never_deletes_through_a_folder_that_is_a_link(ingested: Settings, tmp_path: Path) -> None:
    s = ingested
    outside = tmp_path / "elsewhere" / "server_logs"
    outside.parent.mkdir()
    shutil.move(s.landing / "server_logs", outside)
    (s.landing / "server_logs").symlink_to(outside, target_is_directory=True)
    _age(s)
    section = nightly.enforce_landing_retention(s, now=_now())
    assert section["deleted"] and not [d for d in section["deleted"] if d["dataset"] == "server_logs"]
    assert (outside / "tenant=acme" / "planted-0000.parquet").exists()


def test_zero_days_deletes_every_ingested_file_at_the_next_run(ingested: Settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_LANDING_RETENTION_DAYS", "0")
    section = nightly.enforce_landing_retention(ingested, now=_now() + dt.timedelta(seconds=1))
    assert section["landing_retention_days"] == 0 and len(section["deleted"]) >= 9
    assert _landing_files(ingested) == set()
    monkeypatch.setenv("PSEUDOZONE_LANDING_RETENTION_DAYS", "-1")
    with pytest.raises(ConfigError, match="PSEUDOZONE_LANDING_RETENTION_DAYS"):
        nightly.enforce_landing_retention(ingested)


def test_a_batch_delivered_again_after_its_file_was_deleted_is_not_ingested_twice(
        ingested: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    s = ingested
    kept = {p: p.read_bytes() for p in (s.landing / "events" / "tenant=acme").iterdir()}
    zone_files = {str(p.relative_to(s.zones)): p.read_bytes()
                  for p in sorted(s.event_zone.rglob("*.parquet"))}
    monkeypatch.setenv("PSEUDOZONE_LANDING_RETENTION_DAYS", "0")
    nightly.enforce_landing_retention(s, now=_now() + dt.timedelta(seconds=1))
    assert not any(p.exists() for p in kept)

    for path, data in kept.items():  # the same files land again (new mtimes)
        path.write_bytes(data)
    results = ingest.ingest_pending(s)

    assert results and {r.status for r in results} == {"skipped"}
    assert {str(p.relative_to(s.zones)): p.read_bytes()
            for p in sorted(s.event_zone.rglob("*.parquet"))} == zone_files


# -- quarantine retention -------------------------------------------------------------------------


def _quarantine_two(s: Settings) -> tuple[Path, Path]:
    """A quarantined landing batch and an unreadable inbox request, both holding planted values."""
    bad = s.landing / "events" / "tenant=acme" / "bad-0001.csv"
    bad.write_text(f"tenant_id,user_id,secret\nacme,{planted.USER},{planted.EMAIL}\n")
    [result] = ingest.ingest_pending(s)
    assert result.status == "quarantined"
    inbox = requests.inbox_dir(s)
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "x.json").write_text("{not json " + planted.EMAIL + " " + planted.USER)
    requests.intake_inbox(s, keyring=KR)
    [(_, _, landed)] = list(layout.quarantined_files(s))
    [inboxed] = list(layout.quarantined_requests(s))
    return landed, inboxed


def test_quarantined_files_are_purged_after_their_period(ingested: Settings) -> None:
    s = ingested
    landed, inboxed = _quarantine_two(s)
    old = (_now() - dt.timedelta(days=31)).timestamp()
    os.utime(layout.reason_file(landed), (old, old))

    section = nightly.enforce_landing_retention(s, now=_now())

    assert [(p["dataset"], p["tenant_id"], p["reason_code"]) for p in section["quarantine_purged"]] \
        == [("events", "acme", "unknown_columns")]
    assert not landed.exists() and not layout.reason_file(landed).exists()
    assert inboxed.exists() and layout.reason_file(inboxed).exists()  # quarantined today
    entries = _audit(s, "quarantine.purged")
    assert len(entries) == 1 and not planted.find_needles(json.dumps(entries))
    # 30 days later the inbox request goes too
    later = nightly.enforce_landing_retention(s, now=_now() + dt.timedelta(days=30, seconds=1))
    assert [p["dataset"] for p in later["quarantine_purged"]] == [None] and not inboxed.exists()


def test_the_nightly_report_shows_landing_retention(ingested: Settings) -> None:
    _age(ingested)
    written = report.run_nightly(ingested, "nightly-landing")
    assert written["status"] == "pass", written["summary"]
    latest = report.latest(ingested)
    assert latest is not None and len(latest["retention"]["landing"]["deleted"]) >= 9
    assert " landing file(s)," in written["summary"]
    page = (ingested.root / written["html"]).read_text()
    assert "Landing files deleted in this run" in page and "events.acme.planted-0000" in page


# -- erasure ---------------------------------------------------------------------------------------


def _mixed_events() -> pa.Table:
    """The planted subject's rows, two rows of another user, and a logged-out row naming the
    planted email; the free text of the other user's second row names the planted email too."""
    mine = planted.events()
    n = 3
    others = pa.table({
        "tenant_id": ["acme"] * n, "user_id": [OTHER_USER, OTHER_USER, None],
        "anonymous_id": ["anon-other-1"] * n, "event_id": [f"evt_other_{i}" for i in range(n)],
        "event_name": ["page_view"] * n, "event_ts": pa.array([planted.TS] * n, pa.timestamp("us", tz="UTC")),
        "session_id": ["s_other"] * n, "ip": ["203.0.113.9"] * n, "user_agent": ["Mozilla/5.0"] * n,
        "page_url": ["/home", f"/share?to={planted.EMAIL}", f"/c?email={planted.EMAIL}"],
        "properties_json": ["{}", "{}", json.dumps({"name": planted.NAME})]})
    return pa.concat_tables([mine, others.cast(mine.schema)])


def test_an_erasure_leaves_nothing_of_the_subject_under_the_data_root(ingested: Settings) -> None:
    s = ingested
    landed_bad, inboxed = _quarantine_two(s)
    pending = [write_landing(_mixed_events(), s.landing / "events" / "tenant=acme" / f"late-{fmt}", fmt)
               for fmt in ("parquet", "csv", "jsonl")]
    generated = s.landing / "events" / "tenant=acme" / "events-0000.parquet"
    assert generated.exists() and _scan(s.landing, [planted.USER])  # there is something to find

    status = requests.submit(s, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                             source="test", keyring=KR)
    process.process_all(s, "run-1", keyring=KR)
    report.run_nightly(s, "after-erase")  # the report is under the data root too

    outcome = requests.get_status(s, status.request_id).outcome
    assert outcome is not None and outcome["verified_clean"]
    assert outcome["landing_files_deleted"] == 3  # the ingested planted batches
    assert outcome["landing_files_rewritten"] == 3 and outcome["landing_rows_removed"] == 3 * 12
    assert outcome["quarantine_files_deleted"] == 2
    assert not landed_bad.exists() and not inboxed.exists()
    # the independent scan: every file under the data root
    assert _scan(s.root, SUBJECT_NEEDLES) == []
    # the other subjects' data stays: ingested files, and the other user's pending rows
    assert generated.exists()
    for path in pending:
        kept = (str(pq.read_table(path)["user_id"].to_pylist()).encode() if path.suffix == ".parquet"
                else path.read_bytes())
        assert OTHER_USER.encode() in kept, path.name
    entries = _audit(s, "landing.erased") + _audit(s, "quarantine.erased")
    assert len(entries) == 8 and {e["request_id"] for e in entries} == {status.request_id}
    assert {e["details"]["action"] for e in entries} == {"deleted", "rewritten"}
    assert not planted.find_needles(json.dumps(entries)) and audit.verify(s).ok
    # the rewritten pending files are still valid deliveries: the other user's rows get in
    results = ingest.ingest_pending(s)
    assert sorted((r.batch_id, r.status, r.rows_in) for r in results) == [
        (f"events.acme.late-{fmt}", "done", 1) for fmt in ("csv", "jsonl", "parquet")]
    # and the planted batches landing again are skipped: the ledger says done
    planted.plant(s.landing)
    assert {r.status for r in ingest.ingest_pending(s)} == {"skipped"}


def test_an_ingested_file_with_the_subjects_own_rows_is_deleted_from_its_subject_column_alone(
        ingested: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone.rights import landing as rights_landing

    parsed: list[str] = []
    real = rights_landing._parse

    def spy(path: Path, dataset: str, needles: Any) -> Any:
        parsed.append(f"{dataset}/{path.name}")
        return real(path, dataset, needles)

    monkeypatch.setattr(rights_landing, "_parse", spy)
    status = requests.submit(ingested, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                             source="test", keyring=KR)
    process.process_all(ingested, "run-1", keyring=KR)
    outcome = requests.get_status(ingested, status.request_id).outcome
    assert outcome is not None and outcome["landing_files_deleted"] == 3
    planted_files = [p for p in ingested.landing.rglob("planted-0000.parquet")]
    assert planted_files == []
    # deleted from their user_id column alone (and the subject's values read from their value
    # columns alone); only the files without its own rows were searched in full
    assert [p for p in parsed if p.endswith("planted-0000.parquet")] == [], parsed
    assert _scan(ingested.landing, SUBJECT_NEEDLES) == []
