"""
### pseudonymize_ingested

Pseudonymizes every pending landing batch (`landing/<dataset>/tenant=<t>/*`) into the
encrypted **PII zone** and the pseudonymous **event zone**, one mapped task per batch:
first the batches of datasets with PII columns (profiles), then the others, whose free
text is then scrubbed of the new subjects' names, emails and phones too.

* A batch that breaks its dataset contract is moved to `zones/quarantine/` with a
  machine-readable reason; its task still succeeds and the summary lists it.
* A batch that fails for any other reason fails its task (retried twice); it is never
  half-published and a re-run redoes it into the same files.
* XCom carries batch ids, paths and counts only.

Data root: `PSEUDOZONE_HOME`. Logic: `include/pseudozone/` (`pseudozone.tasks`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import dag, task

from pseudozone.airflow_ops import POOL, ZONE_ASSETS, PseudozoneNotifier

DEFAULT_ARGS = {
    "on_failure_callback": PseudozoneNotifier(),
    "owner": "data-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
}


@dag(
    dag_id="pseudonymize_ingested",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["pseudozone", "ingest", "privacy"],
    doc_md=__doc__,
)
def pseudonymize_ingested() -> None:
    @task
    def discover_batches(stage: str) -> list[dict[str, str]]:
        from pseudozone import tasks

        return tasks.discover_batches(stage=stage)

    @task(map_index_template="{{ batch['batch_id'] }}", max_active_tis_per_dagrun=2, pool=POOL)
    def pseudonymize_batch(batch: dict[str, str]) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.pseudonymize_batch(batch)

    # the zones changed: one Asset event per dataset zone
    @task(outlets=ZONE_ASSETS)
    def summarize(pii_results: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
        from pseudozone import tasks

        return tasks.summarize_ingest([*pii_results, *results])

    # profiles first: the other datasets' free text is then scrubbed of their subjects too;
    # the second stage runs whatever became of the first (each batch fails closed on its own)
    pii_batches = pseudonymize_batch.override(task_id="pseudonymize_pii_batch").expand(
        batch=discover_batches.override(task_id="discover_pii_batches")("pii"))
    batches = pseudonymize_batch.override(trigger_rule="all_done").expand(batch=discover_batches("rest"))
    pii_batches >> batches
    # Airflow resolves each XComArg to the list of mapped results at run time
    summarize(pii_batches, batches)  # type: ignore[arg-type]


dag_obj = pseudonymize_ingested()

if __name__ == "__main__":
    dag_obj.test()
