"""rotate_keys under dag.test(): one tenant's pseudonyms move to version 2, its KEK is rotated,
another tenant is untouched, and no PII reaches Airflow's metadata or the task logs."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pyarrow.parquet as pq

from pseudozone import ingest, state
from pseudozone.config import Settings
from tests import planted
from tests.dags.conftest import AIRFLOW_HOME, REPO, artifact_texts


def test_rotate_keys_moves_one_tenant_to_version_2(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from pseudozone.sample import generate

    home = AIRFLOW_HOME / "rotate-lake"
    previous = os.environ.get("PSEUDOZONE_HOME")
    os.environ["PSEUDOZONE_HOME"] = str(home)
    try:
        settings = Settings.from_env(home)
        generate(settings, events=1500, tenants=2, seed=5, batch_rows=1500)
        planted.plant(settings.landing)
        ingest.ingest_pending(settings)
        dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("rotate_keys")
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run = dag.test(run_conf={"tenant": planted.TENANT})
    finally:
        if previous is not None:
            os.environ["PSEUDOZONE_HOME"] = previous
    assert run.state == "success", out.getvalue()[-3000:]
    assert state.pseudonym_versions(settings) == {planted.TENANT: 2}
    prefixes: dict[str, set[str]] = {}
    for f in settings.event_zone.rglob("*.parquet"):
        tenant = next(p.split("=", 1)[1] for p in f.parts if p.startswith("tenant_id="))
        subjects = pq.read_table(f, columns=["subject_id"])["subject_id"].to_pylist()
        prefixes.setdefault(tenant, set()).update(s.partition(":")[0] for s in subjects if s)
    assert prefixes[planted.TENANT] == {"v2"} and all(v == {"v1"} for t, v in prefixes.items()
                                                     if t != planted.TENANT)
    texts = {**artifact_texts(airflow_db), "task-output": out.getvalue()}
    leaks = {where: found for where, text in texts.items() if (found := planted.find_needles(text))}
    assert leaks == {}
