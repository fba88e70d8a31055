"""The callables behind the DAGs' tasks: plain Python, JSON-safe in and out.

Each takes and returns ids, paths and counts only, since Airflow stores both in
XCom (the metadata database).  The DAG files call these and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

log = logging.getLogger(__name__)


def discover_batches(home: str | None = None) -> list[dict[str, str]]:
    from pseudozone.ingest import pending

    refs = pending(Settings.from_env(home))
    log.info("%d pending batch(es)", len(refs))
    return [r.to_dict() for r in refs]


def pseudonymize_batch(batch: dict[str, Any], home: str | None = None) -> dict[str, Any]:
    from pseudozone.ingest import process_batch
    from pseudozone.landing import BatchRef

    result = process_batch(Settings.from_env(home), BatchRef.from_dict(batch)).to_dict()
    if (result.get("reason") or {}).get("code") == "validation_failed":
        fail_without_retry(f"batch {result['batch_id']}: {result['reason']['detail']}; the batch is"
                           f" quarantined ({result['files'][0]}) and nothing of it was published")
    return result


def fail_without_retry(message: str) -> None:
    """Fail the task at once: a validation failure is not transient, retrying cannot fix it."""
    log.error("%s", message)
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:  # called outside Airflow
        raise PseudozoneError(message) from None
    raise AirflowFailException(message)


def summarize_ingest(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    for res in results:
        by_status[res["status"]] = by_status.get(res["status"], 0) + 1
    quarantined = [{"batch_id": r["batch_id"], "code": (r.get("reason") or {}).get("code")}
                   for r in results if r["status"] == "quarantined"]
    summary = {
        "batches": len(results),
        "by_status": by_status,
        "rows_in": sum(r["rows_in"] for r in results),
        "rows_event": sum(r["rows_event"] for r in results),
        "rows_pii": sum(r["rows_pii"] for r in results),
        "quarantined": quarantined,
    }
    for q in quarantined:
        log.warning("batch %s was quarantined (%s); see zones/quarantine", q["batch_id"], q["code"])
    log.info("ingest summary: %s", summary)
    return summary


# -- process_rights_requests ---------------------------------------------------------------


def intake_request_inbox(home: str | None = None) -> dict[str, int]:
    from pseudozone.rights.requests import intake_inbox

    statuses = intake_inbox(Settings.from_env(home))
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    log.info("inbox: %d request file(s): %s", len(statuses), counts)
    return counts


def open_rights_run(run_id: str, home: str | None = None) -> dict[str, Any]:
    from pseudozone.rights.process import open_run

    plan = open_run(Settings.from_env(home), run_id)
    log.info("run %s: %d request(s), %d file group(s), %d export(s)", run_id, len(plan["requests"]),
             len(plan["groups"]), len(plan["exports"]))
    return plan


def rewrite_file_group(group: dict[str, Any], home: str | None = None) -> dict[str, Any]:
    from pseudozone.rights.process import rewrite_group
    from pseudozone.validation.gate import ValidationFailed

    try:
        result = rewrite_group(Settings.from_env(home), group)
    except ValidationFailed as exc:
        fail_without_retry(f"group {group['group_id']}: {exc.detail}; nothing of it was published,"
                           " its requests stay in progress (see zones/quarantine/rights)")
        raise
    log.info("group %s: %d file(s) rewritten", result["group_id"], len(result["files"]))
    return result


def export_subject(request_id: str, home: str | None = None) -> dict[str, Any]:
    from pseudozone.rights.export import export_request

    result = export_request(Settings.from_env(home), request_id)
    log.info("export %s written (%d files)", request_id, len(result["files"]))
    return result


def close_rights_run(plan: dict[str, Any], results: list[dict[str, Any]], exports: list[dict[str, Any]],
                     home: str | None = None) -> dict[str, Any]:
    from pseudozone.rights.process import close_run

    summary = close_run(Settings.from_env(home), plan, list(results), list(exports))
    log.info("run %s closed: %s", plan["run_id"], summary)
    return summary
