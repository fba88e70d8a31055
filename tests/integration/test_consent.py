"""Consent and objection: the purpose-scoped views and shares leave out who opted out or objected.

End to end without Airflow: ingest records the profiles' consent column, rights runs record
and withdraw objections, and the analyst's views (``marketing.events``, ``analytics.events``,
``third_party.events``) and the third-party share follow (docs/adr/0013-consent-and-objection.md).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import ingest, query, state
from pseudozone.cli import main as cli
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.rights import process, requests, store
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)
COOKIE = KR.pseudonymize(planted.TENANT, "anonymous_id", ["anon-planted-1"])[0]


@pytest.fixture
def clake(lake: Settings) -> Settings:
    """The ingested lake, plus three logged-out rows of the planted subject's cookie."""
    n = 3
    table = planted.events("evt_logged_out").slice(0, n)
    table = table.set_column(table.column_names.index("user_id"), "user_id",
                             pa.array([None] * n, pa.string()))
    for column, value in (("user_agent", "curl/8.5.0"), ("page_url", "/home"), ("properties_json", "{}")):
        table = table.set_column(table.column_names.index(column), column, pa.array([value] * n))
    target = lake.landing / "events" / f"tenant={planted.TENANT}" / "planted-0001.parquet"
    pq.write_table(table, target)
    results = ingest.ingest_pending(lake, keyring=KR)
    assert {r.status for r in results} == {"done"}
    return lake


def _count(settings: Settings, sql: str) -> int:
    _, rows = query.run(settings, sql)
    return int(rows[0][0])  # type: ignore[call-overload]


def _mine(settings: Settings, view: str) -> int:
    """The planted subject's rows in ``view``, logged in or logged out with its cookie."""
    cookie = "" if "profiles" in view else f" OR (subject_id IS NULL AND anonymous_pid = '{COOKIE}')"
    return _count(settings, f"SELECT count(*) FROM {view} WHERE subject_id = '{SUBJECT}'{cookie}")


def _file(settings: Settings, kind: str, **extra: str) -> requests.RequestStatus:
    status = requests.submit(settings, {"type": kind, "tenant_id": planted.TENANT, "user_id": planted.USER,
                                        **extra}, source="test", keyring=KR)
    assert status.state == "accepted", status.reason
    return status


def _run(settings: Settings, run: str) -> None:
    process.process_all(settings, run, keyring=KR)


def test_the_marketing_views_hold_only_subjects_who_opted_in(clake: Settings) -> None:
    everyone = _count(clake, "SELECT count(*) FROM profiles")
    opted_in = _count(clake, "SELECT count(*) FROM profiles WHERE marketing_opt_in")
    assert 0 < opted_in < everyone  # the generated profiles answer both ways
    assert _count(clake, "SELECT count(*) FROM marketing.profiles") == opted_in
    assert _count(clake, "SELECT count(*) FROM marketing.profiles WHERE NOT marketing_opt_in") == 0
    # an event is a marketing one only when its subject said yes (or its cookie's subjects all did)
    assert _count(clake, "SELECT count(*) FROM marketing.events e WHERE subject_id IS NOT NULL AND NOT"
                         " EXISTS (SELECT 1 FROM profiles p WHERE p.subject_id = e.subject_id"
                         " AND p.marketing_opt_in)") == 0
    assert _mine(clake, "marketing.events") == _mine(clake, "events") == 13
    # no consent-based purpose uses the rows of a cookie nobody logged in with
    assert _count(clake, "SELECT count(*) FROM marketing.events WHERE subject_id IS NULL AND anonymous_pid"
                         " NOT IN (SELECT anonymous_pid FROM events WHERE subject_id IS NOT NULL)") == 0
    # purposes resting on objection use everything while nobody objected
    everything = _count(clake, "SELECT count(*) FROM events")
    for purpose in ("analytics", "third_party"):
        assert _count(clake, f"SELECT count(*) FROM {purpose}.events") == everything


def test_an_objection_leaves_its_purpose_and_its_withdrawal_brings_the_subject_back(clake: Settings) -> None:
    status = _file(clake, "object", purpose="analytics")
    _run(clake, "run-1")
    done = requests.get_status(clake, status.request_id)
    assert done.state == "completed" and done.outcome is not None
    assert done.outcome["purpose"] == "analytics" and done.outcome["objection"] == "recorded"
    assert _mine(clake, "analytics.events") == 0 and _mine(clake, "analytics.profiles") == 0
    # its logged-out rows too, and nobody else's
    others = _count(clake, "SELECT count(*) FROM events") - _mine(clake, "events")
    assert _count(clake, "SELECT count(*) FROM analytics.events") == others
    # the other purposes are not affected; the data itself is not changed
    assert _mine(clake, "marketing.events") == _mine(clake, "third_party.events") == 13
    assert _mine(clake, "events") == 13

    _file(clake, "unobject", purpose="analytics")
    _run(clake, "run-2")
    assert _mine(clake, "analytics.events") == 13 and _mine(clake, "analytics.profiles") == 1


def test_an_objection_and_its_withdrawal_in_one_run_end_as_the_latest_says(clake: Settings) -> None:
    _file(clake, "object", purpose="marketing")
    _file(clake, "unobject", purpose="marketing")
    _file(clake, "object", purpose="third_party")
    _run(clake, "run-1")
    assert _mine(clake, "marketing.events") == 13 and _mine(clake, "third_party.events") == 0


def test_an_opt_out_delivered_later_takes_the_subject_out_of_marketing(clake: Settings) -> None:
    table = planted.profiles()
    table = table.set_column(table.column_names.index("marketing_opt_in"), "marketing_opt_in",
                             pa.array([False]))
    pq.write_table(table, clake.landing / "profiles" / f"tenant={planted.TENANT}" / "optout-0001.parquet")
    [result] = ingest.ingest_pending(clake, keyring=KR)
    assert result.status == "done"
    assert _mine(clake, "marketing.events") == 0 and _mine(clake, "marketing.profiles") == 0
    assert _mine(clake, "analytics.events") == 13
    # a delivery without an answer (null) changes nothing; a yes brings it back
    for name, value in (("unknown-0001", None), ("optin-0001", True)):
        table = table.set_column(table.column_names.index("marketing_opt_in"), "marketing_opt_in",
                                 pa.array([value], pa.bool_()))
        pq.write_table(table, clake.landing / "profiles" / f"tenant={planted.TENANT}" / f"{name}.parquet")
        ingest.ingest_pending(clake, keyring=KR)
        assert _mine(clake, "marketing.events") == (13 if value else 0)


def test_a_third_party_share_leaves_out_who_objected(clake: Settings, tmp_path: Path) -> None:
    _file(clake, "object", purpose="third_party")
    _run(clake, "run-1")
    out = tmp_path / "share" / "events.parquet"
    assert cli(["--home", str(clake.root), "share", "--purpose", "third_party", "--dataset", "events",
                "--tenant", planted.TENANT, "--out", str(out)]) == 0
    shared = pq.read_table(out)
    assert SUBJECT not in shared["subject_id"].to_pylist()
    assert COOKIE not in shared["anonymous_pid"].to_pylist()
    tenant_rows = _count(clake, f"SELECT count(*) FROM events WHERE tenant_id = '{planted.TENANT}'")
    assert shared.num_rows == tenant_rows - 13
    assert set(shared["tenant_id"].to_pylist()) == {planted.TENANT}
    with pytest.raises(SystemExit):  # not a purpose: argparse says which ones are
        cli(["--home", str(clake.root), "share", "--purpose", "nobody", "--dataset", "events",
             "--out", str(out)])


@pytest.mark.parametrize(("raw", "code"), [
    ({"type": "object"}, "malformed_purpose"),
    ({"type": "object", "purpose": "profit"}, "malformed_purpose"),
    ({"type": "erase", "purpose": "marketing"}, "malformed_purpose"),
])
def test_an_objection_names_a_known_purpose(clake: Settings, raw: dict[str, str], code: str) -> None:
    status = requests.submit(clake, {**raw, "tenant_id": planted.TENANT, "user_id": planted.USER},
                             source="test", keyring=KR)
    assert status.state == "rejected" and status.reason is not None and status.reason["code"] == code


def test_an_objection_for_a_subject_without_data_is_kept_for_later_data(clake: Settings) -> None:
    status = requests.submit(clake, {"type": "object", "tenant_id": planted.TENANT, "user_id": "usr_new",
                                     "purpose": "analytics"}, source="test", keyring=KR)
    _run(clake, "run-1")
    outcome = requests.get_status(clake, status.request_id).outcome
    assert outcome is not None and outcome["result"] == "no_data_found" and outcome["objection"] == "recorded"
    with store.engine_for(clake).connect() as conn:
        assert conn.execute(store.objections.select()).all()


def test_an_erasure_deletes_the_subjects_consent_and_objections(clake: Settings) -> None:
    _file(clake, "object", purpose="analytics")
    _run(clake, "run-1")
    _file(clake, "erase")
    _run(clake, "run-2")
    with store.engine_for(clake).connect() as conn:
        assert conn.execute(store.objections.select()).all() == []
    with state.connect(clake) as sconn:
        mine = sconn.execute("SELECT count(*) FROM consent WHERE subject_id = ?", (SUBJECT,)).fetchone()
        assert mine[0] == 0
        assert sconn.execute("SELECT count(*) FROM consent").fetchone()[0] > 0  # others' stay
    everything = _count(clake, "SELECT count(*) FROM events")
    assert _count(clake, "SELECT count(*) FROM analytics.events") == everything


def test_an_analysts_query_reads_the_register_without_writing_anything(
        clake: Settings, tmp_path: Path) -> None:
    import shutil

    # an event zone alone (what an analyst is granted): no consent known, no objection known
    alone = Settings.from_env(tmp_path / "analyst")
    shutil.copytree(clake.event_zone, alone.event_zone)
    everything = _count(alone, "SELECT count(*) FROM events")
    assert _count(alone, "SELECT count(*) FROM marketing.events") == 0
    assert _count(alone, "SELECT count(*) FROM analytics.events") == everything
    assert not alone.state.exists()
    # on the full root the register is read, not written: the state files keep their bytes
    before = {p: p.read_bytes() for p in clake.state.glob("*.db")}
    assert _count(clake, "SELECT count(*) FROM marketing.events") > 0
    assert {p: p.read_bytes() for p in clake.state.glob("*.db")} == before
