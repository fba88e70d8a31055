"""
### rotate_keys

When triggered for one tenant, rotates its keys (`docs/adr/0015-pseudonym-rotation.md`,
`docs/adr/0009-backups-and-erasure.md`):

1. `rotate_pseudonyms` (param `pseudonyms`, default on): the tenant's pseudonyms move from
   version N to N+1. Every event- and restricted-zone partition is rewritten (swapped in
   atomically, as compaction does), the PII zone re-encrypted under the new subject ids, the
   state and request ledger re-keyed. The tenant's batches and requests wait meanwhile; a
   tenant with an ingest or rights run under way fails the task, and its retry tries again.
   A killed run is resumed by the retry.
2. `rotate_keks`: a new KEK for the tenant; every live data key is re-wrapped and the old KEK
   seeds destroyed, without touching the data.

XCom carries counts only. Logic: `include/pseudozone/rotation.py`, `include/pseudozone/keys.py`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from pseudozone.airflow_ops import POOL, ZONE_ASSETS, PseudozoneNotifier

DEFAULT_ARGS = {
    "on_failure_callback": PseudozoneNotifier(),
    "owner": "keys",
    "retries": 2,
    "retry_delay": timedelta(minutes=10),
}


@dag(
    dag_id="rotate_keys",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["pseudozone", "keys"],
    doc_md=__doc__,
    params={
        "tenant": Param(type="string", minLength=1, pattern="^[A-Za-z0-9_-]+$",
                        description="the tenant whose keys are rotated"),
        "pseudonyms": Param(True, type="boolean",
                            description="also move the tenant's pseudonyms to the next version"),
    },
)
def rotate_keys() -> None:
    @task(task_id="rotate_pseudonyms", pool=POOL, outlets=ZONE_ASSETS)
    def pseudonyms(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        p = params or {}
        if not p.get("pseudonyms", True):
            return {"skipped": True}
        return tasks.rotate_pseudonyms(str(p["tenant"]))

    @task(task_id="rotate_keks")
    def keks(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.rotate_keks(str((params or {})["tenant"]))

    pseudonyms() >> keks()


dag_obj = rotate_keys()

if __name__ == "__main__":
    dag_obj.test()
