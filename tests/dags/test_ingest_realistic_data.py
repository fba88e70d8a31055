"""pseudonymize_ingested under dag.test() on Faker landing data nobody on the project wrote:
every batch published, none quarantined, no planted value in the event zone or the run's logs."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import corpus
from pseudozone.config import Settings
from pseudozone.pii.normalize import normalize
from tests.dags.conftest import run_dag


def test_realistic_landing_data_goes_through_the_dag(airflow_db: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # a data root of its own: the other DAG tests' lake stays as they left it
    monkeypatch.setenv("PSEUDOZONE_HOME", str(tmp_path / "lake"))
    settings = Settings.from_env()
    truth = corpus.landing_dataset(settings.root, seed=11, profiles_per_tenant=20, events_per_tenant=150,
                                   logs_per_tenant=80, batches=1)

    dag_run, logs = run_dag("pseudonymize_ingested")

    assert dag_run.state == "success"
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "summarize")
    summary = ti.xcom_pull(task_ids="summarize")
    assert summary["by_status"] == {"done": len(truth.files)} and summary["quarantined"] == []
    texts = []
    for path in sorted(settings.event_zone.rglob("*.parquet")):
        table = pq.read_table(path)
        texts += [v for name in table.column_names if pa.types.is_string(table[name].type)
                  for v in table[name].to_pylist() if v]
    blob = "\n".join(texts).lower()
    decoded = "\n".join(normalize(t).text for t in texts).lower()
    # (a city is not searched for in free text, see pseudozone.pii.tenant)
    leaked = [p.kind for p in truth.plants if p.kind != "city" and len(p.value) >= 5
              and (p.value.lower() in blob or p.value.lower() in decoded)]
    assert leaked == []
    in_logs = [p.kind for p in truth.plants if len(p.value) >= 5 and p.value.lower() in logs.lower()]
    assert in_logs == []
