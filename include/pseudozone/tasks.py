"""The callables behind the DAGs' tasks: plain Python, JSON-safe in and out.

Each takes and returns ids, paths and counts only, since Airflow stores both in
XCom (the metadata database).  The DAG files call these and nothing else.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

if TYPE_CHECKING:  # types only: the heavy modules load inside the tasks
    from pseudozone.keys import KeyRing
    from pseudozone.rights.actions import GroupPlan, RunPlan

log = logging.getLogger(__name__)


def _keyring(settings: Settings) -> KeyRing:
    """The data root's key ring; a missing or different master key fails the task at once (no retry
    can fix it) before anything is written."""
    from pseudozone.errors import KeyMaterialError
    from pseudozone.keys import KeyRing

    try:
        return KeyRing.load(settings)
    except KeyMaterialError as exc:
        fail_without_retry(str(exc))
        raise


def discover_batches(home: str | None = None, stage: str | None = None) -> list[dict[str, str]]:
    """Pending batches; ``stage`` "pii" keeps the datasets with PII columns (profiles), "rest" the others.

    The ingest DAG publishes the PII stage first, so that the other datasets' free text
    is scrubbed of the subjects those batches bring (``pseudozone.pii.tenant``).
    """
    from pseudozone.ingest import has_pii, pending

    if stage not in (None, "pii", "rest"):
        raise ValueError(f"stage must be 'pii', 'rest' or None, not {stage!r}")
    settings = Settings.from_env(home)
    _keyring(settings)
    refs = [r for r in pending(settings)
            if stage is None or has_pii(r.dataset) == (stage == "pii")]
    log.info("%d pending batch(es)%s", len(refs), f" ({stage} stage)" if stage else "")
    return [r.to_dict() for r in refs]


def pseudonymize_batch(batch: dict[str, Any], home: str | None = None) -> dict[str, Any]:
    from pseudozone.ingest import process_batch
    from pseudozone.landing import BatchRef

    settings = Settings.from_env(home)
    result = process_batch(settings, BatchRef.from_dict(batch), keyring=_keyring(settings)).to_dict()
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

    settings = Settings.from_env(home)
    plan = open_run(settings, run_id, keyring=_keyring(settings))
    log.info("run %s: %d request(s), %d file group(s), %d export(s)", run_id, len(plan["requests"]),
             len(plan["groups"]), len(plan["exports"]))
    return cast("dict[str, Any]", plan)  # JSON for XCom


def rewrite_file_group(group: dict[str, Any], home: str | None = None) -> dict[str, Any]:
    from pseudozone.rights.process import rewrite_group
    from pseudozone.validation.gate import ValidationFailed

    try:
        result = rewrite_group(Settings.from_env(home), cast("GroupPlan", group))  # as open_run made it
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

    summary = close_run(Settings.from_env(home), cast("RunPlan", plan), list(results), list(exports))
    log.info("run %s closed: %s", plan["run_id"], summary)
    return summary


# -- nightly_compliance ----------------------------------------------------------------------


def _step_counts(step: str, section: dict[str, Any]) -> dict[str, Any]:
    """What a nightly step hands to XCom: counts only (the section itself is on disk)."""
    if step == "retention":
        landing = section.get("landing") or {}
        return {"deleted": len(section["deleted"]), "kept_for_hold": len(section["kept_for_hold"]),
                "trimmed_for_hold": len(section.get("trimmed_for_hold", [])),
                "landing_deleted": len(landing.get("deleted", [])),
                "quarantine_purged": len(landing.get("quarantine_purged", []))}
    if step == "validation":
        return {"files": section["files"], "rows": section["rows"], "failed_files": section["failed_files"],
                "success": section["success"]}
    if step == "erasures":
        return {"checked": section["checked"], "incomplete": len(section["incomplete"])}
    if step == "requests":
        return {"open": section["open"], "overdue": len(section["overdue"]),
                "due_soon": len(section["due_soon"])}
    if step == "audit":
        return {"ok": section["ok"], "entries": section["entries"]}
    return {"k": section["k"], "flagged": sum(1 for r in section["results"] if r["flagged"])}


def nightly_step(step: str, run_id: str, params: dict[str, Any] | None = None,
                 home: str | None = None) -> dict[str, Any]:
    from pseudozone.compliance.report import run_step

    params = params or {}
    settings = Settings.from_env(home)
    _keyring(settings)  # before any step changes anything (retention deletes)
    section = run_step(settings, run_id, step, k=int(params.get("k_anonymity_k", 5)),
                       retention_overrides=params.get("retention_days") or None)
    counts = _step_counts(step, section)
    log.info("nightly %s: %s", step, counts)
    return counts


def rotate_keys_after_erasures(home: str | None = None) -> dict[str, Any]:
    """Nightly, after the erasures of the day: rotate the KEK of every tenant with an erasure since
    its last rotation (docs/adr/0009-backups-and-erasure.md); counts only in XCom."""
    from pseudozone.keys import rotate_after_erasures

    settings = Settings.from_env(home)
    result = rotate_after_erasures(settings, _keyring(settings))
    counts = {"rotated": result["rotated"],
              "rewrapped": sum(t["rewrapped"] for t in result["tenants"].values())}
    log.info("KEK rotation after erasures: %s", counts)
    return counts


def nightly_report(run_id: str, home: str | None = None) -> dict[str, Any]:
    from pseudozone.compliance.report import write_report

    written = write_report(Settings.from_env(home), run_id)
    # the one line alerting reads (task log and XCom)
    log.info("compliance: %s", written["summary"])
    print(written["summary"])
    return written


def nightly_verdict(written: dict[str, Any]) -> str:
    """Fail the task when the report found a problem, so that Airflow's alerting fires."""
    if written["status"] != "pass":
        fail_without_retry(f"{written['summary']} (report: {written['html']})")
    return str(written["summary"])


def compact_lake(target_rows: int | None = None, home: str | None = None) -> dict[str, Any]:
    """Merge the small files of every event- and restricted-zone partition-day (counts only to XCom);
    finishes or undoes what a killed run left first. A partition a writer changed meanwhile is
    rolled back and fails the task, so that its retry redoes it."""
    from pseudozone.lake.compact import DEFAULT_TARGET_ROWS, compact

    summary = compact(Settings.from_env(home), target_rows=target_rows or DEFAULT_TARGET_ROWS)
    log.info("compaction: %s", summary)
    if summary["conflicts"]:
        raise PseudozoneError(f"{summary['conflicts']} partition(s) changed while compacted; rolled back")
    return summary


def rotate_pseudonyms(tenant: str, home: str | None = None) -> dict[str, Any]:
    """Move one tenant's pseudonyms to the next version (resumes a killed rotation); counts only
    to XCom.  A tenant with an ingest or a rights run under way fails the task (its retry waits)."""
    from pseudozone.rotation import rotate

    settings = Settings.from_env(home)
    result = rotate(settings, tenant, keyring=_keyring(settings))
    log.info("pseudonym rotation: %s", result)
    return result


def rotate_keks(tenant: str | None = None, home: str | None = None) -> dict[str, Any]:
    """New KEKs for a tenant (or all): every live data key re-wrapped, the old seeds destroyed."""
    from pseudozone.keys import rotate_keks as rotate

    settings = Settings.from_env(home)
    result = rotate(settings, _keyring(settings), tenants=[tenant] if tenant else None)
    return {"rotated": result["rotated"],
            "tenants": {t: {"version": d["version"], "rewrapped": d["rewrapped"]}
                        for t, d in result["tenants"].items()}}


def rotate_master_key(home: str | None = None) -> dict[str, Any]:
    """Re-wrap the root secret under the new master key (``$PSEUDOZONE_NEW_MASTER_KEY``, the Airflow
    connection named by ``$PSEUDOZONE_NEW_MASTER_KEY_CONN_ID`` or the file named by
    ``$PSEUDOZONE_NEW_MASTER_KEY_FILE``); versions only to XCom.  A missing or refused key fails the
    task at once (no retry can fix it); a rerun finishes a killed rotation."""
    from pseudozone.errors import KeyMaterialError
    from pseudozone.keys import load_new_master_key
    from pseudozone.master_rotation import rotate_master_key as rotate

    settings = Settings.from_env(home)
    try:
        new_master, origin = load_new_master_key()
        result = rotate(settings, new_master, origin)
    except KeyMaterialError as exc:
        fail_without_retry(str(exc))
        raise
    log.info("master key rotation: %s", result)
    return result
