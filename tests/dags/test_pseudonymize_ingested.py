"""Run the whole DAG with dag.test() on planted PII, then hunt for the PII everywhere."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pseudozone.config import Settings
from tests import planted
from tests.dags.conftest import PSEUDOZONE_HOME, REPO, artifact_texts, run_dag


@pytest.fixture(scope="module")
def ingest_run(airflow_db: Path):  # type: ignore[no-untyped-def]
    from pseudozone.sample import generate

    settings = Settings.from_env(PSEUDOZONE_HOME)
    generate(settings, events=3000, tenants=2, seed=21, batch_rows=2000)
    planted.plant(settings.landing)
    bad = settings.landing / "events" / "tenant=acme" / "broken-0001.csv"
    bad.write_text("tenant_id,user_id,email_address\nacme,usr_planted_0001,zelda.plantedpii@example.org\n")

    dag_run, logs = run_dag("pseudonymize_ingested")
    return settings, dag_run, [logs]


def test_dag_run_succeeds_with_one_mapped_task_per_batch(ingest_run) -> None:  # type: ignore[no-untyped-def]
    settings, dag_run, _ = ingest_run
    assert dag_run.state == "success"
    states: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        states.setdefault(ti.task_id, []).append(ti.state)
    # profiles first (2 tenants + planted), then events and server_logs (2 × 2 + planted × 2 + broken csv)
    assert states["pseudonymize_pii_batch"] == ["success"] * 3
    assert states["pseudonymize_batch"] == ["success"] * 7
    assert states["discover_batches"] == ["success"] and states["summarize"] == ["success"]
    assert states["discover_pii_batches"] == ["success"]
    assert (settings.quarantine / "events" / "tenant_id=acme" / "broken-0001.csv").exists()
    assert list((settings.event_zone / "events").rglob("*planted-0000*.parquet"))


def test_summary_in_xcom_holds_counts_and_ids_only(ingest_run) -> None:  # type: ignore[no-untyped-def]
    _, dag_run, _ = ingest_run
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "summarize")
    summary = ti.xcom_pull(task_ids="summarize")
    assert summary["by_status"] == {"done": 9, "quarantined": 1}
    assert summary["quarantined"] == [{"batch_id": "events.acme.broken-0001", "code": "unknown_columns"}]
    assert summary["rows_in"] > 3000


def test_no_planted_pii_in_logs_xcom_or_metadata_db(ingest_run, airflow_db) -> None:  # type: ignore[no-untyped-def]
    settings, _, log_lines = ingest_run
    texts = artifact_texts(airflow_db)
    texts["captured-log-records"] = "\n".join(log_lines)
    # the hunt is looking at real artifacts: our task logs and Airflow's records of the run
    assert any("events.acme.planted-0000 done" in line for line in log_lines)
    assert any("pseudonymize_batch" in t for t in texts.values())
    assert texts["table:xcom"].count("batch_id") >= 10
    # the generated users' raw identifiers and emails, too
    raw = pq.read_table(settings.landing / "profiles" / "tenant=acme" / "profiles-0000.parquet")
    needles = planted.NEEDLES + raw["email"].to_pylist()[:50] + raw["user_id"].to_pylist()[:50]
    leaks = {name: planted.find_needles(text, needles) for name, text in texts.items()}
    assert {k: v for k, v in leaks.items() if v} == {}


def test_second_run_finds_nothing_to_do(ingest_run) -> None:  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    settings, _, _ = ingest_run
    before = sorted(p.name for p in settings.zones.rglob("*.parquet"))
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("pseudonymize_ingested")
    dag_run = dag.test()
    assert dag_run.state == "success"
    assert sorted(p.name for p in settings.zones.rglob("*.parquet")) == before


def test_the_run_updates_one_asset_per_dataset_zone(ingest_run) -> None:  # type: ignore[no-untyped-def]
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    _, dag_run, _ = ingest_run
    with create_session() as session:
        events = session.query(AssetModel.uri, AssetEvent.source_task_id).join(
            AssetEvent, AssetEvent.asset_id == AssetModel.id).filter(
            AssetEvent.source_run_id == dag_run.run_id).all()
    assert sorted(events) == [(f"pseudozone://zones/events/{d}", "summarize")
                              for d in ("events", "profiles", "server_logs")]
