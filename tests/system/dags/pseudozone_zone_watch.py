"""
### pseudozone_zone_watch (integration tier only)

A consumer of pseudozone's zone Assets, as a platform team would write one: scheduled on
the event zone's Asset, so the scheduler runs it whenever ingest (`summarize`), a rights
run (`close_run`) or compaction publishes into that zone. It returns which runs updated
the Asset (XCom: DAG and run ids only). Loaded from the tier's own DAG bundle
(`tests/system/dags`), not from the repository's `dags/`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.sdk import dag, task

from pseudozone.airflow_ops import zone_asset

EVENTS_ZONE = zone_asset("events")


@dag(
    dag_id="pseudozone_zone_watch",
    schedule=[EVENTS_ZONE],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["pseudozone", "integration-tier"],
    doc_md=__doc__,
)
def pseudozone_zone_watch() -> None:
    @task(inlets=[EVENTS_ZONE])
    def note_update(triggering_asset_events: Any = None) -> list[str]:
        sources = sorted({f"{e.source_dag_id}/{e.source_run_id}"
                          for events in (triggering_asset_events or {}).values() for e in events})
        print(f"zone updated by {len(sources)} run(s)")
        return sources

    note_update()


pseudozone_zone_watch()
