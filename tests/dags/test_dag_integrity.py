"""Every DAG file imports cleanly, is tagged, retries, documents itself, and parses fast."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import REPO

DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = {"pandas", "pyarrow", "great_expectations", "cryptography", "duckdb", "numpy", "polars"}


@pytest.fixture(scope="module")
def dagbag(airflow_db):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert "pseudonymize_ingested" in dagbag.dag_ids


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_do_not_import_heavy_modules_at_top_level(path: Path) -> None:
    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # the one pseudozone module a DAG file may load while it is parsed: what it hands to
            # Airflow (Assets, pool, notifier, deadline), light by design (checked below)
            top.add(node.module if node.module == "pseudozone.airflow_ops" else node.module.split(".")[0])
    assert top.isdisjoint(HEAVY | {"pseudozone"}), top


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_a_dag_file_loads_no_heavy_module(path: Path) -> None:
    # Airflow's SDK itself may load some of these; the DAG file must add none
    code = ("import sys, runpy, airflow.sdk; before = set(sys.modules); "
            f"runpy.run_path({str(path)!r}); "
            f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {sorted(HEAVY)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_dag_is_tagged_documented_and_retries(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md, dag_id
        for task in dag.tasks:
            assert task.retries >= 2, f"{dag_id}.{task.task_id}"


def test_pseudonymize_ingested_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("pseudonymize_ingested")
    assert set(dag.task_ids) == {"discover_pii_batches", "pseudonymize_pii_batch", "discover_batches",
                                 "pseudonymize_batch", "summarize"}
    # datasets with PII are published first: the others' free text is scrubbed of their subjects
    assert "pseudonymize_pii_batch" in dag.get_task("pseudonymize_batch").upstream_task_ids
    assert dag.schedule == "@hourly"
    assert dag.max_active_runs == 1
    assert not dag.catchup


def test_process_rights_requests_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("process_rights_requests")
    assert set(dag.task_ids) == {"intake_inbox", "open_run", "groups_of", "exports_of", "rewrite_group",
                                 "export", "close_run"}
    assert dag.schedule == "*/15 * * * *"
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.get_task("close_run").trigger_rule == "none_failed"
    assert "rewrite_group" in dag.get_task("export").upstream_task_ids


def test_nightly_compliance_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("nightly_compliance")
    assert dag.schedule == "@daily" and dag.max_active_runs == 1 and not dag.catchup
    assert set(dag.params.keys()) == {"k_anonymity_k", "retention_days"}
    assert dag.get_task("validate_zones").upstream_task_ids == {"retention"}
    assert dag.get_task("verify_erasures").upstream_task_ids == {"validate_zones"}
    # the report is written whatever a step did; the verdict then fails the run if needed
    assert dag.get_task("report").trigger_rule == "all_done"
    assert dag.get_task("verdict").upstream_task_ids == {"report"}


@pytest.mark.parametrize("path", sorted((REPO / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_loading_a_plugin_loads_no_heavy_module(path: Path) -> None:
    # plugins load in every Airflow component: no heavy package that Airflow has not loaded itself
    code = ("import sys, runpy, airflow.sdk, airflow.plugins_manager; "
            "before = {m.split('.')[0] for m in sys.modules}; "
            f"runpy.run_path({str(path)!r}); "
            "new = {m.split('.')[0] for m in sys.modules} - before; "
            f"print(sorted(new & set({sorted(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_every_dag_alerts_on_failure_and_heavy_tasks_share_the_pool(dagbag) -> None:  # type: ignore[no-untyped-def]
    from pseudozone.airflow_ops import POOL, ZONE_ASSETS, PseudozoneNotifier

    heavy = {"pseudonymize_ingested": {"pseudonymize_batch", "pseudonymize_pii_batch"},
             "process_rights_requests": {"rewrite_group", "export"},
             "nightly_compliance": {"validate_zones", "k_anonymity"}, "compact_lake": {"compact"},
             "rotate_keys": {"rotate_pseudonyms"}}
    writers = {"pseudonymize_ingested": "summarize", "process_rights_requests": "close_run",
               "compact_lake": "compact", "rotate_keys": "rotate_pseudonyms"}
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(isinstance(c, PseudozoneNotifier) for c in callbacks), (dag_id, task.task_id)
            assert (task.pool == POOL) == (task.task_id in heavy[dag_id]), (dag_id, task.task_id)
            if task.task_id == writers.get(dag_id):
                assert {a.uri for a in task.outlets} == {a.uri for a in ZONE_ASSETS}


def test_the_nightly_deadline_alert_is_built_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone import airflow_ops

    monkeypatch.delenv(airflow_ops.DEADLINE_ENV, raising=False)
    assert airflow_ops.nightly_deadline() is None  # opt-in (docs/adr/0014-operations.md)
    monkeypatch.setenv(airflow_ops.DEADLINE_ENV, "180")
    alert = airflow_ops.nightly_deadline()
    assert alert is not None and alert.interval.total_seconds() == 180 * 60
    assert "pseudozone.alerts.deadline_missed" in str(alert.callback.path)
    monkeypatch.setenv(airflow_ops.DEADLINE_ENV, "soon")
    with pytest.raises(Exception, match="whole number of minutes"):
        airflow_ops.nightly_deadline()
