"""
### nightly_compliance

Every night (and whenever triggered) proves the lake is lawful and writes the
compliance report under `reports/compliance/` in the data root.

1. `retention`: event-zone date partitions older than their dataset's
   `retention_days` (contract; override with the `retention_days` param) are
   deleted, except under a tenant- or dataset-wide legal hold (a subject's hold keeps
   only the held subjects' rows, docs/adr/0005); so are landing files ingested more than
   `PSEUDOZONE_LANDING_RETENTION_DAYS` ago (default 7) and quarantined files older than
   `PSEUDOZONE_QUARANTINE_RETENTION_DAYS` (default 30; docs/adr/0011-landing-retention.md);
   each deletion is audited.
2. `validate_zones`: every file of the event, restricted, PII and export zones
   against its Great Expectations suite (Data Docs are written beside the report).
3. `verify_erasures` (from the same reads) and `k_anonymity` (flagged under the
   `k_anonymity_k` param); `request_deadlines` (overdue, due within 7 days) and
   `audit_chain` run from the start, whatever retention does.
4. `report`: `report.json`, `report.html` (charts) and one summary line in XCom.
5. `verdict`: fails when the report found a problem, so alerting fires.
6. `rotate_keys` (beside the others): new KEKs for every tenant with an erasure since its
   last rotation, so that no earlier backup of the data root decrypts an erased
   subject's PII (`docs/adr/0009-backups-and-erasure.md`).

XCom carries counts and the summary line only. Logic: `include/pseudozone/compliance/`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from pseudozone.airflow_ops import POOL, PseudozoneNotifier, nightly_deadline

DEFAULT_ARGS = {
    # a failed step, and the verdict of a run that found a problem, alert (pseudozone.alerts)
    "on_failure_callback": PseudozoneNotifier(),
    "owner": "compliance",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
}


@dag(
    dag_id="nightly_compliance",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    # and, when PSEUDOZONE_NIGHTLY_DEADLINE_MINUTES is set, a run still going that long after it was queued
    deadline=nightly_deadline(),
    tags=["pseudozone", "compliance", "privacy"],
    doc_md=__doc__,
    params={
        "k_anonymity_k": Param(5, type="integer", minimum=2,
                               description="flag a tenant and dataset whose smallest group is below k"),
        "retention_days": Param({}, type="object",
                                description="per-dataset override of the contracts' retention_days"),
    },
)
def nightly_compliance() -> None:
    task_ids = {"retention": "retention", "validation": "validate_zones", "erasures": "verify_erasures",
                "requests": "request_deadlines", "audit": "audit_chain", "k_anonymity": "k_anonymity"}

    def step(name: str) -> Any:
        # the steps that read every zone file share the pool of pseudozone's heavy tasks
        @task(task_id=task_ids[name], pool=POOL if name in ("validation", "k_anonymity") else None)
        def run(run_id: str | None = None, params: dict[str, Any] | None = None) -> dict[str, Any]:
            from pseudozone import tasks

            assert run_id is not None  # injected by Airflow from the run's context
            return tasks.nightly_step(name, run_id, dict(params or {}))

        return run()

    @task(trigger_rule="all_done")
    def report(run_id: str | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        assert run_id is not None
        return tasks.nightly_report(run_id)

    @task
    def verdict(written: dict[str, Any]) -> str:
        from pseudozone import tasks

        return tasks.nightly_verdict(written)

    retention, validation = step("retention"), step("validation")
    erasures, kanon = step("erasures"), step("k_anonymity")
    # what retention deletes is not validated nor counted; deadlines and the audit chain
    # are checked whatever happens to it
    retention >> validation >> erasures
    retention >> kanon
    written = report()
    [erasures, kanon, step("requests"), step("audit")] >> written
    verdict(written)  # type: ignore[arg-type]

    @task(task_id="rotate_keys")
    def rotate_keys() -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.rotate_keys_after_erasures()

    rotate_keys()


dag_obj = nightly_compliance()

if __name__ == "__main__":
    dag_obj.test()
