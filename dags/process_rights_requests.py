"""
### process_rights_requests

Applies queued data-subject rights requests (erase, rectify, restrict, unrestrict,
export, object, unobject) to the zones, in batches.

1. `intake_inbox`: JSON request files dropped in `requests/inbox/` join the queue
   (the CLI and the REST endpoint of the `pseudozone_rights` plugin write to it directly).
2. `open_run`: every accepted request (and any left in progress by a failed run) is
   planned with the subject index: the files holding each subject, grouped by landing
   batch, so each file is rewritten once per run whatever the number of requests.
3. `rewrite_group` (one mapped task per batch), then `export` (one per export request).
4. `close_run`: verifies by scanning the zones, destroys erased subjects' data keys,
   completes the requests; fails visibly if any verification fails.

XCom carries request ids, pseudonyms, paths and counts only. Logic:
`include/pseudozone/rights/`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from pseudozone.airflow_ops import POOL, ZONE_ASSETS, PseudozoneNotifier

DEFAULT_ARGS = {
    "on_failure_callback": PseudozoneNotifier(),
    "owner": "compliance",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
}


@dag(
    dag_id="process_rights_requests",
    schedule="*/15 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["pseudozone", "rights", "privacy"],
    doc_md=__doc__,
)
def process_rights_requests() -> None:
    @task
    def intake_inbox() -> dict[str, int]:
        from pseudozone import tasks

        return tasks.intake_request_inbox()

    @task
    def open_run(run_id: str | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        assert run_id is not None  # injected by Airflow from the run's context
        return tasks.open_rights_run(run_id)

    @task
    def groups_of(plan: dict[str, Any]) -> list[dict[str, Any]]:
        return list(plan["groups"])

    @task
    def exports_of(plan: dict[str, Any]) -> list[str]:
        return list(plan["exports"])

    @task(map_index_template="{{ group['group_id'] }}", max_active_tis_per_dagrun=2, pool=POOL)
    def rewrite_group(group: dict[str, Any]) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.rewrite_file_group(group)

    # exports run after the rewrites, so they show the state the run leaves behind
    @task(map_index_template="{{ request_id }}", trigger_rule="none_failed", pool=POOL)
    def export(request_id: str) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.export_subject(request_id)

    @task(trigger_rule="none_failed", outlets=ZONE_ASSETS)
    def close_run(plan: dict[str, Any], results: list[dict[str, Any]],
                  exports: list[dict[str, Any]]) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.close_rights_run(plan, list(results or []), list(exports or []))

    plan = open_run()
    intake_inbox() >> plan
    # Airflow resolves each XComArg to the upstream task's value at run time
    rewritten = rewrite_group.expand(group=groups_of(plan))  # type: ignore[arg-type]
    exported = export.expand(request_id=exports_of(plan))  # type: ignore[arg-type]
    rewritten >> exported
    close_run(plan, rewritten, exported)  # type: ignore[arg-type]


dag_obj = process_rights_requests()

if __name__ == "__main__":
    dag_obj.test()
