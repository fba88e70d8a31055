"""nightly_compliance under dag.test(): a leak and an overdue request are reported; nothing repeats PII."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from pseudozone import ingest
from pseudozone.compliance import report
from pseudozone.config import Settings
from pseudozone.rights import requests, store
from tests import planted
from tests.dags.conftest import AIRFLOW_HOME, artifact_texts, run_dag


@pytest.fixture(scope="module")
def nightly_run(airflow_db: Path) -> Iterator[tuple[Settings, Any, str, dict[str, Any]]]:
    from pseudozone.sample import generate

    home = AIRFLOW_HOME / "nightly-lake"
    previous = os.environ.get("PSEUDOZONE_HOME")
    os.environ["PSEUDOZONE_HOME"] = str(home)
    settings = Settings.from_env(home)
    generate(settings, events=3000, tenants=2, seed=8, batch_rows=2000)
    planted.plant(settings.landing)
    ingest.ingest_pending(settings)
    # a leak that got past the gates (written straight into the zone)
    victim = sorted((settings.event_zone / "events").rglob("*.parquet"))[0]
    table = pq.read_table(victim)
    texts = table["properties_json"].to_pylist()
    texts[1] = planted.FREE_TEXT_FORMS["phone_intl"]
    pq.write_table(table.set_column(table.column_names.index("properties_json"), "properties_json",
                                    pa.array(texts, pa.string())), victim)
    # a request nobody processed in time
    late = requests.submit(settings, {"type": "export", "tenant_id": "acme", "user_id": planted.USER},
                           source="cli")
    with store.transaction(settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == late.request_id)
                     .values(due_at=store.utcnow() - dt.timedelta(days=3)))
    run, logs = run_dag("nightly_compliance")
    yield settings, run, logs, {"late": late.request_id, "victim": str(victim.relative_to(settings.zones))}
    if previous is None:
        os.environ.pop("PSEUDOZONE_HOME", None)
    else:
        os.environ["PSEUDOZONE_HOME"] = previous


def test_the_report_is_written_and_the_verdict_fails_visibly(nightly_run) -> None:  # type: ignore[no-untyped-def]
    settings, run, logs, facts = nightly_run
    # the failed verdict alerted through the DAGs' notifier: one line, no value (pseudozone.alerts)
    alert_lines = (settings.root / "reports" / "alerts.log").read_text().splitlines()
    assert [line for line in alert_lines if "dag=nightly_compliance task=verdict" in line]
    assert all("error=" in line for line in alert_lines)
    assert (settings.root / "reports" / "alerts.log").stat().st_mode & 0o777 == 0o600
    assert not planted.find_needles("\n".join(alert_lines))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states.pop("verdict") == "failed" and run.state == "failed"
    assert set(states.values()) == {"success"}, states
    assert set(states) == {"retention", "validate_zones", "verify_erasures", "request_deadlines",
                           "audit_chain", "k_anonymity", "report", "rotate_keys"}

    latest = report.latest(settings)
    assert latest is not None and latest["status"] == "fail"
    assert not [p for p in latest["problems"] if "did not finish" in p], latest["problems"]
    assert latest["audit"]["ok"] and latest["audit"]["entries"] > 0
    assert [r["request_id"] for r in latest["requests"]["overdue"]] == [facts["late"]]
    failures = [f for z in latest["validation"]["zones"] for f in z["failures"]]
    # found twice, independently: as a phone number, and as the planted subject's known phone
    found = sorted((f["file"], f["expectation"], f["column"], f["kind"] or "", f["rows"]) for f in failures)
    assert found == [
        (facts["victim"], "expect_column_values_to_be_free_of_known_values", "properties_json", "", [1]),
        (facts["victim"], "expect_column_values_to_be_free_of_pii", "properties_json", "phone", [1])]
    run_dir = report.run_dir(settings, latest["run_id"])
    assert (run_dir / "report.html").exists() and (run_dir / "data_docs" / "index.html").exists()
    # the one line for alerting: in the task log and in XCom
    assert latest["summary"].startswith("FAIL: ") and latest["summary"] in logs
    xcom = next(ti for ti in run.get_task_instances() if ti.task_id == "report").xcom_pull(task_ids="report")
    assert xcom["summary"] == latest["summary"]


def test_no_artifact_repeats_a_planted_value(nightly_run, airflow_db: Path) -> None:  # type: ignore[no-untyped-def]
    settings, _, logs, _ = nightly_run
    texts = {"logs": logs, **artifact_texts(airflow_db)}
    for path in sorted(settings.reports.rglob("*")):
        if path.is_file():
            name = f"report:{path.relative_to(settings.reports)}"
            texts[name] = path.read_bytes().decode("utf-8", "replace")
    assert any(k.startswith("report:runs/") and "data_docs/validations" in k for k in texts)
    assert "summary" in texts["table:xcom"]
    found = {k: planted.find_needles(v) for k, v in texts.items()}
    assert {k: v for k, v in found.items() if v} == {}
    assert json.loads(texts["report:latest.json"])["status"] == "fail"
