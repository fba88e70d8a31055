"""What Airflow and Celery add per batch: many small batches through the ingest DAG on the two
workers, against ``pseudozone ingest`` on the same files in one process, both on S3 zones in
the tier's bucket (the CLI's under a prefix of its own). A benchmark that prints its figures
(README, "Integration tier"); it asserts the work, never a time.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from upath import UPath

from tests.system import services
from tests.system.services import ObjectStore, Stack

INGEST = "pseudonymize_ingested"
TENANTS = ("umbrella", "hooli")  # no other test of the tier lands data for them
# 12 batches: on S3 zones (moto) each batch also reads the partitions it lands in, and the tier is
# part of .ci/run (30 batches took 18 of the tier's 32.5 minutes on a loaded machine)
N_BATCHES, ROWS = 12, 200


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _land(files: list[Path], landing: Path) -> None:
    """Each file under a name starting with '_' first, then renamed: landed whole."""
    for path in files:
        target = landing / "events" / path.parent.name / f"bench-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        upload = target.with_name("_" + target.name)
        shutil.copyfile(path, upload)
        upload.rename(target)


def _rows(zones_root: UPath, tenant: str) -> int:
    """Rows of a tenant's event zone files under ``zones_root`` (a prefix of the bucket)."""
    from pseudozone import zones

    files = zones.parquet_files(zones_root / "events" / "events" / f"tenant_id={tenant}")
    return sum(zones.read_metadata(f).num_rows for f in files)


def _cli_zones(store: ObjectStore) -> UPath:
    return store.path().parent / "cli-bench" / "zones"


def test_per_batch_overhead_of_the_celery_dag(stack: Stack, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from pseudozone.config import Settings
    from pseudozone.sample import generate

    scratch = Settings.from_env(tmp_path / "generated")
    generate(scratch, events=N_BATCHES * ROWS * 5 // len(TENANTS), tenants=5, seed=31, batch_rows=ROWS)
    files = sorted(p for t in TENANTS for p in (scratch.landing / "events" / f"tenant={t}").glob("*.parquet"))
    assert len(files) == N_BATCHES

    # the DAG on the running stack (the scheduler's own catch-up run first, if this test runs alone)
    stack.wait_parsed(INGEST)
    stack.unpause(INGEST)
    services.wait_for("a run of the unpaused ingest DAG", lambda: bool(stack.dag_runs(INGEST)),
                      stack.services["scheduler"], 180, interval=1)
    stack.wait_idle(INGEST)
    before = {r["dag_run_id"] for r in stack.dag_runs(INGEST)}
    _land(files, stack.data_root / "landing")
    started = time.monotonic()
    run_id = stack.trigger(INGEST)
    run = stack.wait_run(INGEST, run_id, timeout=1800)
    dag_seconds = time.monotonic() - started
    assert run["state"] == "success", stack.failure_report(INGEST, run_id)
    runs = [r for r in stack.wait_idle(INGEST) if r["dag_run_id"] not in before]
    tis = [t for r in runs for t in stack.task_instances(INGEST, r["dag_run_id"])
           if t["task_id"] == "pseudonymize_batch" and t["state"] != "skipped"]
    assert len(tis) == N_BATCHES, stack.failure_report(INGEST, run_id)
    assert {t["state"] for t in tis} == {"success"}, stack.failure_report(INGEST, run_id)
    assert {t["hostname"] for t in tis} == set(services.WORKERS)

    # the same files, in one process, without Airflow (a root of its own, with its own SQLite state
    # database under it: an empty PSEUDOZONE_STATE_DB_URL counts as unset)
    home = tmp_path / "in-process"
    cli_zones = _cli_zones(stack.store)  # s3://pseudozone/lake/cli-bench/zones: the policy's lake/
    env = {"PSEUDOZONE_HOME": str(home), "PSEUDOZONE_STATE_DB_URL": "",
           "PSEUDOZONE_ZONES": f"s3://{cli_zones.path}"}
    stack.run([services.venv_bin("pseudozone"), "keys", "init"], env=env)
    _land(files, home / "landing")
    started = time.monotonic()
    stack.run([services.venv_bin("pseudozone"), "ingest"], env=env, timeout=1800)
    cli_seconds = time.monotonic() - started

    for tenant in TENANTS:  # the same rows published both ways, in the bucket, none on the local disk
        want = N_BATCHES * ROWS // len(TENANTS)
        assert _rows(stack.store.path(), tenant) == _rows(cli_zones, tenant) == want
    assert not (stack.data_root / "zones").exists() and not (home / "zones").exists()

    figures = {"services_started_in_s": round(stack.started_in_s, 1),
               **_figures(run, tis, dag_seconds, cli_seconds)}
    (stack.root / "overhead.json").write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print("\nintegration tier, per-batch overhead:\n" + json.dumps(figures, indent=2))


def _figures(run: dict[str, Any], tis: list[dict[str, Any]], dag_seconds: float,
             cli_seconds: float) -> dict[str, Any]:
    starts = [_ts(t["start_date"]) for t in tis]
    ends = [_ts(t["end_date"]) for t in tis]
    mapped_wall = (max(ends) - min(starts)).total_seconds()
    durations = [float(t["duration"]) for t in tis]
    waits = [(_ts(t["start_date"]) - _ts(t["queued_when"])).total_seconds() for t in tis if t["queued_when"]]
    per_worker = {}
    for name in services.WORKERS:
        mine = [t for t in tis if t["hostname"] == name]
        per_worker[name] = {"batches": len(mine), "busy_s": round(sum(float(t["duration"]) for t in mine), 1),
                            "batches_per_hour": round(3600 * len(mine) / mapped_wall)}
    return {
        "batches": len(tis), "rows_per_batch": ROWS, "workers": len(services.WORKERS), "concurrency_each": 1,
        "dag_run_s": round(dag_seconds, 1),
        "dag_run_scheduler_s": round((_ts(run["end_date"]) - _ts(run["queued_at"])).total_seconds(), 1),
        "mapped_phase_s": round(mapped_wall, 1),
        "task_duration_mean_s": round(statistics.mean(durations), 2),
        "task_duration_median_s": round(statistics.median(durations), 2),
        "queued_to_start_mean_s": round(statistics.mean(waits), 2) if waits else None,
        "per_worker": per_worker,
        "cli_ingest_s": round(cli_seconds, 1),
        "cli_per_batch_s": round(cli_seconds / len(tis), 2),
        "overhead_per_batch_s": round(statistics.mean(durations) - cli_seconds / len(tis), 2),
    }
