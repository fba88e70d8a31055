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
3. `rotate_master` (param `master`, default off): the data root's root secret is re-wrapped
   under the new master key (`PSEUDOZONE_NEW_MASTER_KEY`, the connection named by
   `PSEUDOZONE_NEW_MASTER_KEY_CONN_ID`, or the file named by `PSEUDOZONE_NEW_MASTER_KEY_FILE`,
   in the workers' environment) in one transaction; nothing else changes and the old key is
   refused from then on, so switch every worker's master key to the new one next
   (`docs/adr/0002-key-hierarchy.md`). It runs last, after the tenant's rotations; with
   `pseudonyms` off only the tenant's KEK rotation runs before it.

XCom carries counts and versions only. Logic: `include/pseudozone/rotation.py`,
`include/pseudozone/keys.py`, `include/pseudozone/master_rotation.py`.
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
        "master": Param(False, type="boolean",
                        description="then re-wrap the root secret under the new master key of the"
                                    " workers' environment (PSEUDOZONE_NEW_MASTER_KEY...)"),
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

    @task(task_id="rotate_master")
    def master(params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pseudozone import tasks

        if not (params or {}).get("master", False):
            return {"skipped": True}
        return tasks.rotate_master_key()

    pseudonyms() >> keks() >> master()


dag_obj = rotate_keys()

if __name__ == "__main__":
    dag_obj.test()
