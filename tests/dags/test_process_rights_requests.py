"""process_rights_requests under dag.test(): every request type through the DAG, no PII left behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pseudozone import ingest
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.rights import audit, requests
from tests import planted
from tests.dags.conftest import AIRFLOW_HOME, artifact_texts, run_dag

NEW_EMAIL = "zelda.rectified@example.net"


def _run_dag() -> tuple[Any, str]:
    return run_dag("process_rights_requests")


@pytest.fixture(scope="module")
def rights_run(airflow_db: Path) -> Iterator[tuple[Settings, Any, str, dict[str, str]]]:
    from pseudozone.sample import generate

    home = AIRFLOW_HOME / "rights-lake"
    previous = os.environ.get("PSEUDOZONE_HOME")
    os.environ["PSEUDOZONE_HOME"] = str(home)
    settings = Settings.from_env(home)
    generate(settings, events=3000, tenants=2, seed=4, batch_rows=2000)
    planted.plant(settings.landing)
    ingest.ingest_pending(settings)
    from fastapi.testclient import TestClient

    from pseudozone.cli import main as cli
    from pseudozone.rights.api import create_app

    # door 1, the CLI
    assert cli(["request", "erase", "--tenant", "acme", "--user", planted.USER]) == 0
    assert cli(["request", "rectify", "--tenant", "acme", "--user", "usr_0000005",
                "--set", f"email={NEW_EMAIL}"]) == 0
    # door 2, the REST endpoint of the plugin
    token = requests.register_tenant(settings, "acme")
    with TestClient(create_app(lambda: settings)) as client:
        response = client.post("/requests", headers={"Authorization": f"Bearer {token}"},
                               json={"type": "restrict", "user_id": "usr_0000003"})
    assert response.status_code == 202, response.text
    # door 3, the inbox folder
    inbox = requests.inbox_dir(settings)
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / "export-1.json").write_text(json.dumps(
        {"type": "export", "tenant_id": "acme", "user_id": "usr_0000007"}))
    run, logs = _run_dag()
    ids = {r.type: r.request_id for r in requests.list_requests(settings)}
    yield settings, run, logs, ids
    if previous is None:
        os.environ.pop("PSEUDOZONE_HOME", None)
    else:
        os.environ["PSEUDOZONE_HOME"] = previous


def test_every_task_succeeds_and_every_request_completes(rights_run) -> None:  # type: ignore[no-untyped-def]
    settings, run, _, ids = rights_run
    assert run.state == "success"
    assert set(ids) == {"erase", "rectify", "restrict", "export"}
    assert {requests.get_status(settings, i).state for i in ids.values()} == {"completed"}
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert sum(1 for (t, _) in states if t == "rewrite_group") >= 2
    assert sum(1 for (t, _) in states if t == "export") == 1
    all_requests = requests.list_requests(settings)
    assert [r.state for r in all_requests] == ["completed"] * 4
    assert {r.type for r in all_requests} == {"erase", "restrict", "rectify", "export"}
    export = next(r for r in all_requests if r.type == "export")
    assert (settings.root / export.outcome["archive"]).exists()


def test_effects_on_the_zones(rights_run) -> None:  # type: ignore[no-untyped-def]
    settings, _, _, _ = rights_run
    kr = KeyRing.load(settings)
    erased = kr.subject_id("acme", planted.USER)
    restricted = kr.subject_id("acme", "usr_0000003")

    assert _count(settings.zones, erased) == 0
    assert _count(settings.event_zone, restricted) == 0 and _count(settings.restricted_zone, restricted) > 0
    assert audit.verify(settings).ok


def test_no_pii_in_logs_xcom_or_metadata_db(rights_run, airflow_db: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, logs, _ = rights_run
    texts = {"logs": logs, **artifact_texts(airflow_db)}
    assert "group_id" in texts["table:xcom"] and "files.rewritten" not in texts["table:xcom"]
    needles = [*planted.NEEDLES, "usr_0000003", "usr_0000005", "usr_0000007", NEW_EMAIL]
    found = {k: planted.find_needles(v, needles) for k, v in texts.items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_unrestrict_through_the_dag_and_an_idle_run(rights_run) -> None:  # type: ignore[no-untyped-def]
    settings, _, _, _ = rights_run
    subject = KeyRing.load(settings).subject_id("acme", "usr_0000003")
    restricted = _count(settings.restricted_zone, subject)
    status = requests.submit(settings, {"type": "unrestrict", "tenant_id": "acme",
                                        "user_id": "usr_0000003"}, source="cli")
    run, _ = _run_dag()
    assert run.state == "success"
    assert requests.get_status(settings, status.request_id).state == "completed"
    assert _count(settings.event_zone, subject) == restricted
    assert _count(settings.restricted_zone, subject) == 0
    idle, _ = _run_dag()
    assert idle.state == "success"


def _count(root: Path, subject: str) -> int:
    return sum(int(pc.sum(pc.fill_null(pc.equal(pq.read_table(f, columns=["subject_id"])["subject_id"],
                                                   subject), False)).as_py() or 0)
               for f in root.rglob("*.parquet"))
