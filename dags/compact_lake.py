"""
### compact_lake

When triggered (in a window with the ingest and rights DAGs paused) merges the small files of each event- and
restricted-zone date partition (one per landing batch and subject bucket) into one
file per partition-day and bucket, or files of at most the `target_rows` param,
sorted by subject then time (`docs/adr/0007-lake-layer.md`, "Compaction").

1. `compact`: first finishes or undoes what a killed run left, then compacts every
   partition that needs it. Each partition is swapped in atomically: analysts see the
   old files or the new ones, never both, never neither. The subject index follows.
   A partition a writer changed meanwhile is rolled back and fails the task; the retry
   redoes it.

XCom carries counts only. Logic: `include/pseudozone/lake/compact.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from pseudozone.airflow_ops import POOL, ZONE_ASSETS, PseudozoneNotifier

DEFAULT_ARGS = {
    "on_failure_callback": PseudozoneNotifier(),
    "owner": "lake",
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
}


@dag(
    dag_id="compact_lake",
    # triggered, not scheduled (a deployment may schedule it): it takes each tenant's rewrite
    # lease (docs/adr/0019-writer-leases.md), so it skips a tenant a rights run holds, and a rights
    # run that starts meanwhile leaves that tenant's requests for its next run
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["pseudozone", "lake", "compaction"],
    doc_md=__doc__,
    params={
        "target_rows": Param(5_000_000, type="integer", minimum=1,
                             description="most rows per compacted file (a bigger bucket is cut into parts)"),
    },
)
def compact_lake() -> None:
    @task(task_id="compact", pool=POOL, outlets=ZONE_ASSETS)
    def run(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.compact_lake(int((params or {}).get("target_rows") or 0) or None)

    run()


dag_obj = compact_lake()

if __name__ == "__main__":
    dag_obj.test()
