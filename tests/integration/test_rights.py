"""Rights requests end to end without Airflow: erase, restrict/unrestrict, rectify, export."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update

from pseudozone import ingest, state
from pseudozone.cli import main as cli
from pseudozone.config import Settings
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.lake import subjects
from pseudozone.rights import audit, export, process, requests, store
from tests import planted
from tests.conftest import TEST_MASTER_KEY, append_audit_concurrently

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)
OTHER_USER = "usr_0000005"  # a generated acme user (ids start at 0)


@pytest.fixture
def rlake(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


def _all_rows(settings: Settings, zone_root: Path) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for f in sorted(zone_root.rglob("*.parquet")):
        dataset = f.relative_to(zone_root).parts[0]
        out.setdefault(dataset, []).extend(tuple(sorted(r.items())) for r in pq.read_table(f).to_pylist())
    return {k: sorted(v, key=repr) for k, v in out.items()}


def _rows_of(settings: Settings, subject: str, root: Path) -> int:
    n = 0
    for f in root.rglob("*.parquet"):
        col = pq.read_table(f, columns=["subject_id"])["subject_id"]
        n += int(pc.sum(pc.fill_null(pc.equal(col, subject), False)).as_py() or 0)
    return n


def _submit(settings: Settings, kind: str, user: str = planted.USER, tenant: str = planted.TENANT,
            **extra: Any) -> requests.RequestStatus:
    return requests.submit(settings, {"type": kind, "tenant_id": tenant, "user_id": user, **extra},
                           source="test", keyring=KR)


def test_erase_removes_every_row_destroys_the_key_and_leaves_others_untouched(rlake: Settings) -> None:
    assert _rows_of(rlake, SUBJECT, rlake.zones) > 10
    other = KR.subject_id(planted.TENANT, OTHER_USER)
    before = {z: [r for rows in _all_rows(rlake, root).values() for r in rows
                  if dict(r).get("subject_id") != SUBJECT]
              for z, root in (("events", rlake.event_zone), ("pii", rlake.pii_zone))}

    status = _submit(rlake, "erase")
    assert status.state == "accepted"
    summary = process.process_all(rlake, "run-1", keyring=KR)

    assert summary["completed"] == {"erase": 1}
    assert _rows_of(rlake, SUBJECT, rlake.zones) == 0                     # independent scan
    with state.connect(rlake) as conn:
        assert Vault(KR, conn).destroyed(planted.TENANT, [SUBJECT, other]) == {SUBJECT}
    after = {z: [r for rows in _all_rows(rlake, root).values() for r in rows]
             for z, root in (("events", rlake.event_zone),)}
    assert sorted(after["events"], key=repr) == sorted(before["events"], key=repr)
    pii_after = [r for rows in _all_rows(rlake, rlake.pii_zone).values() for r in rows]
    assert sorted(map(repr, pii_after)) == sorted(map(repr, before["pii"]))
    index = pa.concat_tables([pq.read_table(p) for p in rlake.subject_index.rglob("*.parquet")])
    assert SUBJECT not in index["subject_id"].to_pylist()
    done = requests.get_status(rlake, status.request_id)
    assert done.state == "completed" and done.outcome is not None
    assert done.outcome["verified_clean"] and done.outcome["key_destroyed"]
    with store.engine_for(rlake).connect() as conn:
        payload = conn.execute(select(store.requests.c.payload_enc)
                               .where(store.requests.c.request_id == status.request_id)).scalar_one()
    assert payload is None  # raw identifier gone once completed


def test_an_erased_subject_is_not_ingested_again(rlake: Settings) -> None:
    _submit(rlake, "erase")
    process.process_all(rlake, "run-1", keyring=KR)
    again = rlake.landing / "events" / "tenant=acme" / "late-0001.parquet"
    pq.write_table(planted.events(), again)
    [result] = ingest.ingest_pending(rlake)
    assert result.status == "done" and result.rows_dropped_erased == 10 and result.rows_event == 0
    assert _rows_of(rlake, SUBJECT, rlake.zones) == 0


def test_restrict_moves_rows_routes_new_rows_and_unrestrict_restores(rlake: Settings) -> None:
    in_events = _rows_of(rlake, SUBJECT, rlake.event_zone)
    _submit(rlake, "restrict")
    process.process_all(rlake, "run-1", keyring=KR)
    assert _rows_of(rlake, SUBJECT, rlake.event_zone) == 0
    assert _rows_of(rlake, SUBJECT, rlake.restricted_zone) == in_events

    late = rlake.landing / "events" / "tenant=acme" / "late-0001.parquet"
    events = planted.events()  # new events (ids the zones do not hold: no re-delivery)
    events = events.set_column(events.column_names.index("event_id"), "event_id",
                               pa.array([f"evt_late_{i}" for i in range(events.num_rows)]))
    pq.write_table(events, late)
    [result] = ingest.ingest_pending(rlake)
    assert result.rows_restricted == 10 and result.rows_event == 0
    assert _rows_of(rlake, SUBJECT, rlake.event_zone) == 0

    _submit(rlake, "unrestrict")
    process.process_all(rlake, "run-2", keyring=KR)
    assert _rows_of(rlake, SUBJECT, rlake.event_zone) == in_events + 10
    assert _rows_of(rlake, SUBJECT, rlake.restricted_zone) == 0
    assert subjects.restricted(rlake, planted.TENANT) == set()


def test_rectify_reencrypts_pii_and_regeneralizes_event_values(rlake: Settings) -> None:
    status = _submit(rlake, "rectify", fields={"email": "zelda.new@example.net", "postal_code": "75002"})
    assert status.state == "accepted", status.reason
    process.process_all(rlake, "run-1", keyring=KR)
    pii = pa.concat_tables([pq.read_table(p) for p in rlake.pii_zone.rglob("*acme*.parquet")])
    mine = pii.filter(pc.equal(pii["subject_id"], SUBJECT)).to_pylist()
    with state.connect(rlake) as conn:
        dek = Vault(KR, conn).data_keys(planted.TENANT, [SUBJECT], create=False)[SUBJECT]
    aead = AESGCM(dek)
    emails = [decrypt_value(aead, r["email"], pii_associated_data("acme", SUBJECT, "email")) for r in mine]
    assert emails == ["zelda.new@example.net"]
    phone = decrypt_value(aead, mine[0]["phone"], pii_associated_data("acme", SUBJECT, "phone"))
    assert phone == planted.PHONE
    prof = pa.concat_tables([pq.read_table(p) for p in (rlake.event_zone / "profiles").rglob("*.parquet")])
    assert prof.filter(pc.equal(prof["subject_id"], SUBJECT))["postal_prefix"].to_pylist() == ["75"]
    assert requests.get_status(rlake, status.request_id).outcome["fields"] == ["email", "postal_code"]


def test_export_holds_that_subjects_data_only(rlake: Settings) -> None:
    status = _submit(rlake, "export")
    process.process_all(rlake, "run-1", keyring=KR)
    done = requests.get_status(rlake, status.request_id)
    assert done.state == "completed"
    blob = (rlake.root / done.outcome["archive"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == done.outcome["sha256"]
    assert blob.startswith(export.MAGIC) and not zipfile.is_zipfile(io.BytesIO(blob))  # encrypted
    with zipfile.ZipFile(io.BytesIO(export.open_archive(rlake, status.request_id, keyring=KR))) as archive:
        names = set(archive.namelist())
        assert {"profile.json", "profile.csv", "events.json", "events.csv", "server_logs.json",
                "server_logs.csv", "manifest.json", "README.txt"} <= names
        manifest = json.loads(archive.read("manifest.json"))
        for entry in manifest["files"]:
            assert hashlib.sha256(archive.read(entry["name"])).hexdigest() == entry["sha256"]
        profile = json.loads(archive.read("profile.json"))
        assert [p["email"] for p in profile] == [planted.EMAIL]
        assert [p["full_name"] for p in profile] == [planted.NAME]
        for name in ("events.json", "server_logs.json", "profile_pseudonymous.json"):
            rows = json.loads(archive.read(name))
            # the tenant's own user id, never a pseudonym (docs/adr/0010-linkage.md)
            assert rows and {r["user_id"] for r in rows} == {planted.USER}
            assert not {"subject_id", "anonymous_pid", "event_id", "session_id", "request_id"} & set(rows[0])
        assert len(json.loads(archive.read("events.json"))) == 10
        assert "subject_id" not in manifest
        everything = b"".join(archive.read(n) for n in archive.namelist())
        assert re.search(rb"v[0-9]+:[0-9a-f]{64}", everything) is None


def test_legal_hold_keeps_held_data_and_the_outcome_says_so(rlake: Settings) -> None:
    hold = requests.add_legal_hold(rlake, tenant_id="acme", dataset="server_logs", reason_code="tax_audit",
                                   reason="Zelda Plantedname's tax audit 2026", keyring=KR)
    logs_before = _rows_of(rlake, SUBJECT, rlake.event_zone / "server_logs")
    status = _submit(rlake, "erase")
    process.process_all(rlake, "run-1", keyring=KR)
    assert _rows_of(rlake, SUBJECT, rlake.event_zone / "server_logs") == logs_before > 0
    assert _rows_of(rlake, SUBJECT, rlake.event_zone / "events") == 0
    outcome = requests.get_status(rlake, status.request_id).outcome
    # the tenant sees the code; the free text (it may name a person) stays encrypted in the store
    assert outcome["retained"] == [{"dataset": "server_logs", "hold_id": hold, "reason_code": "tax_audit"}]
    assert requests.hold_reason(rlake, hold, keyring=KR) == "Zelda Plantedname's tax audit 2026"
    for path in rlake.state.rglob("*"):
        if path.is_file():
            assert b"Plantedname" not in path.read_bytes(), path.name
    assert outcome["retained_files"] and all(f.startswith("events/server_logs/")
                                             for f in outcome["retained_files"])


@pytest.mark.parametrize(("raw", "code"), [
    ({"type": "forget", "tenant_id": "acme", "user_id": "u"}, "unknown_type"),
    ({"type": "erase", "tenant_id": "nobody", "user_id": "u"}, "unknown_tenant"),
    ({"type": "erase", "tenant_id": "acme", "user_id": "  "}, "missing_user"),
    ({"type": "rectify", "tenant_id": "acme", "user_id": "u", "fields": {"ssn": "1"}}, "malformed_fields"),
    ({"type": "rectify", "tenant_id": "acme", "user_id": "u", "fields": {"birth_date": "yesterday"}},
     "malformed_fields"),
    ({"type": "erase", "tenant_id": "acme", "user_id": "u", "fields": {"email": "x"}}, "malformed_fields"),
    ({"type": "erase", "tenant_id": "acme", "user_id": "u", "why": "x"}, "malformed_request"),
    (["not", "an", "object"], "malformed_request"),
])
def test_invalid_requests_are_recorded_as_rejected_with_a_reason(
        rlake: Settings, raw: Any, code: str) -> None:
    status = requests.submit(rlake, raw, source="test", keyring=KR)
    assert status.state == "rejected" and status.reason is not None and status.reason["code"] == code
    assert requests.get_status(rlake, status.request_id).state == "rejected"


def test_inbox_door_accepts_files_and_quarantines_unreadable_ones(rlake: Settings) -> None:
    inbox = requests.inbox_dir(rlake)
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "a.json").write_text(json.dumps({"type": "export", "tenant_id": "acme",
                                              "user_id": planted.USER}))
    (inbox / "b.json").write_text("{not json " + planted.EMAIL)
    statuses = requests.intake_inbox(rlake, keyring=KR)
    assert sorted(s.state for s in statuses) == ["accepted", "rejected"]
    assert list(inbox.iterdir()) == []
    assert len(list((rlake.quarantine / "requests").glob("*.json.reason.json"))) == 1


def test_no_raw_identifier_or_value_in_the_request_db_or_audit_log(rlake: Settings) -> None:
    _submit(rlake, "rectify", fields={"email": "zelda.corrected@example.net"})
    _submit(rlake, "erase")
    requests.submit(rlake, {"type": "nope", "tenant_id": "acme", "user_id": planted.USER}, source="test")
    blob = rlake.state_db.read_bytes()
    for wal in rlake.state.glob("pseudozone.db-*"):
        blob += wal.read_bytes()
    assert planted.USER.encode() not in blob
    assert b"zelda.corrected" not in blob


def test_many_requests_rewrite_each_file_once(rlake: Settings) -> None:
    users = [f"usr_{i:07d}" for i in range(0, 40)]
    for u in users:
        _submit(rlake, "erase", user=u)
    plan = process.open_run(rlake, "run-1", keyring=KR)
    keys = [(g["tenant_id"], g["dataset"], g["batch_id"]) for g in plan["groups"]]
    assert len(keys) == len(set(keys))
    files = [f for g in plan["groups"] for f in g["files"]]
    assert len(files) == len(set(files))
    results = [process.rewrite_group(rlake, g, keyring=KR) for g in plan["groups"]]
    summary = process.close_run(rlake, plan, results, [], keyring=KR)
    assert summary["completed"] == {"erase": 40}
    with store.engine_for(rlake).connect() as conn:
        rewrites = conn.execute(select(store.audit_log).where(
            store.audit_log.c.action == "files.rewritten")).all()
    assert len(rewrites) == len(plan["groups"])


def test_killed_mid_rewrite_then_rerun_equals_uninterrupted(tmp_path: Path, master_key_env: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone import zones
    from pseudozone.sample import generate

    lakes = []
    for name in ("clean", "crashed"):
        s = Settings.from_env(tmp_path / name)
        generate(s, events=3000, tenants=2, seed=5, batch_rows=1000)
        planted.plant(s.landing)
        ingest.ingest_pending(s)
        for kind in ("erase", "restrict"):
            user = planted.USER if kind == "erase" else "usr_0000003"
            requests.submit(s, {"type": kind, "tenant_id": "acme", "user_id": user}, source="test")
        lakes.append(s)
    clean, crashed = lakes
    process.process_all(clean, "run-1")

    real = zones.write_parquet
    calls = {"n": 0}

    def dying(table: pa.Table, path: Path, **options: Any) -> Path:
        if "subject_index" not in str(path):
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt("simulated kill")
        return real(table, path, **options)

    monkeypatch.setattr(zones, "write_parquet", dying)
    with pytest.raises(KeyboardInterrupt):
        process.process_all(crashed, "run-1")
    monkeypatch.setattr(zones, "write_parquet", real)
    process.process_all(crashed, "run-2")

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.parquet"))}

    for zone in ("events", "restricted"):
        assert digest(crashed.zones / zone) == digest(clean.zones / zone), zone
    assert [r.state for r in requests.list_requests(crashed)] == ["completed", "completed"]


def test_audit_verify_detects_a_tampered_entry(rlake: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    _submit(rlake, "erase")
    process.process_all(rlake, "run-1", keyring=KR)
    assert cli(["--home", str(rlake.root), "audit", "verify"]) == 0
    with store.transaction(rlake) as conn:
        conn.execute(update(store.audit_log).where(store.audit_log.c.seq == 3)
                     .values(details='{"type":"export"}'))
    assert cli(["--home", str(rlake.root), "audit", "verify"]) == 1
    assert "BROKEN at entry 3" in capsys.readouterr().out
    db = sqlite3.connect(rlake.state_db)
    db.execute("DELETE FROM audit_log WHERE seq = 2")
    db.commit()
    db.close()
    result = audit.verify(rlake)
    assert not result.ok and result.first_bad_seq == 2


def test_caller_chosen_key_names_are_never_echoed_into_the_ledger_or_audit(rlake: Settings) -> None:
    raw = {"type": "rectify", "tenant_id": "acme", "user_id": "u1", "zelda.key@example.org": 1}
    first = requests.submit(rlake, raw, source="test", keyring=KR)
    second = requests.submit(rlake, {"type": "rectify", "tenant_id": "acme", "user_id": "u1",
                                     "fields": {"zelda.field@example.org": "x"}}, source="test", keyring=KR)
    assert first.reason["code"] == "malformed_request" and second.reason["code"] == "malformed_fields"
    with store.engine_for(rlake).connect() as conn:
        dumped = repr(conn.execute(select(store.audit_log)).all()) + repr(
            conn.execute(select(store.requests)).all())
    assert "zelda" not in dumped


def test_a_tenant_id_with_a_trailing_newline_is_refused(rlake: Settings) -> None:
    from pseudozone.errors import PseudozoneError

    with pytest.raises(PseudozoneError):
        requests.register_tenant(rlake, "acme\n")
    status = requests.submit(rlake, {"type": "erase", "tenant_id": "acme\n", "user_id": "u"}, source="test")
    assert status.reason["code"] == "unknown_tenant"


def test_concurrent_audit_appends_keep_one_linear_chain_on_sqlite(rlake: Settings) -> None:
    start = audit.verify(rlake).entries
    append_audit_concurrently(rlake, writers=4, each=10)
    verdict = audit.verify(rlake)
    assert verdict.ok and verdict.entries == start + 40


def test_an_erasure_that_left_rows_behind_fails_verification(rlake: Settings,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone.errors import PseudozoneError

    real = process._write_all

    def lossy(settings: Settings, outputs: dict[str, Any]) -> None:
        skipped = sorted(p for p in outputs if p.startswith("events/events/"))[:1]
        real(settings, {k: v for k, v in outputs.items() if k not in skipped})

    monkeypatch.setattr(process, "_write_all", lossy)
    status = _submit(rlake, "erase")
    with pytest.raises(PseudozoneError, match="failed verification"):
        process.process_all(rlake, "run-1", keyring=KR)
    failed = requests.get_status(rlake, status.request_id)
    assert failed.state == "failed" and failed.reason["code"] == "erase_incomplete"
    with state.connect(rlake) as conn:
        assert Vault(KR, conn).destroyed(planted.TENANT, [SUBJECT]) == set()  # key kept until proven
    monkeypatch.setattr(process, "_write_all", real)
    assert cli(["--home", str(rlake.root), "request", "retry", status.request_id]) == 0
    process.process_all(rlake, "run-2", keyring=KR)
    assert requests.get_status(rlake, status.request_id).state == "completed"
    assert _rows_of(rlake, SUBJECT, rlake.zones) == 0


def test_two_rectifications_in_one_run_both_apply(rlake: Settings) -> None:
    _submit(rlake, "rectify", fields={"email": "zelda.first@example.net"})
    _submit(rlake, "rectify", fields={"phone": "+44 20 7946 0000"})
    process.process_all(rlake, "run-1", keyring=KR)
    pii = pa.concat_tables([pq.read_table(p) for p in rlake.pii_zone.rglob("*acme*.parquet")])
    [mine] = pii.filter(pc.equal(pii["subject_id"], SUBJECT)).to_pylist()
    with state.connect(rlake) as conn:
        aead = AESGCM(Vault(KR, conn).data_keys(planted.TENANT, [SUBJECT], create=False)[SUBJECT])
    clear = {n: decrypt_value(aead, mine[n], pii_associated_data("acme", SUBJECT, n))
             for n in ("email", "phone")}
    assert clear == {"email": "zelda.first@example.net", "phone": "+44 20 7946 0000"}


def test_a_restrict_filed_after_an_unrestrict_in_the_same_run_wins(rlake: Settings) -> None:
    _submit(rlake, "restrict")
    process.process_all(rlake, "run-1", keyring=KR)
    _submit(rlake, "unrestrict")
    _submit(rlake, "restrict")
    process.process_all(rlake, "run-2", keyring=KR)
    assert subjects.restricted(rlake, planted.TENANT) == {SUBJECT}
    assert _rows_of(rlake, SUBJECT, rlake.event_zone) == 0


def test_requests_for_a_subject_with_no_data_end_no_data_found(rlake: Settings) -> None:
    """A mistyped user id must not look like success: the outcome says no data was found."""
    from pseudozone.compliance.report import run_nightly

    typo = "usr_00000O3"  # a letter O where a zero was meant
    statuses = [_submit(rlake, "erase", user=typo),
                _submit(rlake, "rectify", user=typo, fields={"email": "new@example.net"}),
                _submit(rlake, "export", user=typo), _submit(rlake, "erase")]
    process.process_all(rlake, "run-1", keyring=KR)
    results = [requests.get_status(rlake, s.request_id) for s in statuses]
    assert [r.state for r in results] == ["completed"] * 4
    assert [r.outcome["result"] for r in results] == ["no_data_found"] * 3 + ["done"]
    assert results[0].public_dict()["outcome"]["result"] == "no_data_found"  # what the tenant sees
    report = run_nightly(rlake, "nightly-1")
    assert "erasures 1/1 verified (1 found no data)" in report["summary"]
