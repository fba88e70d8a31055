"""Run the nightly steps, keep their sections, and write the compliance report.

Layout under the data root::

    reports/compliance/runs/<run>/<step>.json     each step's section, as it finished
    reports/compliance/runs/<run>/report.json     the whole report
    reports/compliance/runs/<run>/report.html     the same for people, with charts
    reports/compliance/runs/<run>/data_docs/      Great Expectations Data Docs of the run
    reports/compliance/latest.json                the latest report
    reports/compliance/history.jsonl              one line per run (validation over time)
    reports/compliance/audit_anchors.jsonl        the audit head of each pruned run

A run's directory is pruned ``PSEUDOZONE_REPORT_RETENTION_DAYS`` (default 90) after the
run (``prune_runs``, after each report): its audit chain head, an anchor of the chain
(ADR 0004) found nowhere else, is first kept in ``audit_anchors.jsonl``; ``history.jsonl``,
``latest.json`` and the latest run are never pruned.

The DAG runs each step as a task that writes its section here and hands Airflow
only counts; ``write_report`` assembles the sections.  ``run_nightly`` does the
same in one process (``pseudozone compliance run``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pseudozone import zones
from pseudozone.compliance import html, nightly
from pseudozone.config import Settings
from pseudozone.errors import ConfigError, PseudozoneError

log = logging.getLogger(__name__)

STEPS = ("retention", "validation", "erasures", "requests", "audit", "k_anonymity")
HISTORY_KEPT = 30
REPORT_RETENTION_ENV = "PSEUDOZONE_REPORT_RETENTION_DAYS"
DEFAULT_REPORT_RETENTION_DAYS = 90
ANCHORS = "audit_anchors.jsonl"


def run_dir(settings: Settings, run_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id)[:120] or "run"
    return settings.reports / "runs" / safe


def save_section(settings: Settings, run_id: str, step: str, section: dict[str, Any]) -> Path:
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    return zones.write_json(section, run_dir(settings, run_id) / f"{step}.json")


def load_section(settings: Settings, run_id: str, step: str) -> dict[str, Any] | None:
    path = run_dir(settings, run_id) / f"{step}.json"
    if not path.exists():
        return None
    section: dict[str, Any] = json.loads(path.read_text())
    return section


def run_step(settings: Settings, run_id: str, step: str, *, now: dt.datetime | None = None, k: int = 5,
             retention_overrides: dict[str, int] | None = None,
             rows_per_run: int = nightly.ROWS_PER_RUN) -> dict[str, Any]:
    """Run one nightly step, save its section; returns the section."""
    settings.ensure()  # zone modes; the first call of a process sweeps a killed writer's temp files
    # a section left by an earlier attempt of this step must not be reported if this one fails
    (run_dir(settings, run_id) / f"{step}.json").unlink(missing_ok=True)
    if step == "retention":
        section = nightly.enforce_retention(settings, now=now, overrides=retention_overrides)
    elif step == "validation":
        section = nightly.validate_zones(settings, rows_per_run=rows_per_run,
                                         data_docs=run_dir(settings, run_id) / "data_docs")
    elif step == "erasures":
        validation = load_section(settings, run_id, "validation")
        if validation is None:
            raise PseudozoneError("erasures are verified from the validation step's reads; run it first")
        section = nightly.verify_erasures(settings, validation.get("erased_found", {}))
    elif step == "requests":
        section = nightly.deadlines(settings, now=now)
    elif step == "audit":
        section = nightly.audit_chain(settings)
    elif step == "k_anonymity":
        section = nightly.reidentification_risk(settings, k=k)
    else:
        raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    save_section(settings, run_id, step, section)
    return section


def assemble(settings: Settings, run_id: str, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The report from the saved sections: status, summary line, problems, history."""
    sections = {step: load_section(settings, run_id, step) for step in STEPS}
    problems: list[str] = []
    warnings: list[str] = []
    missing = [s for s, v in sections.items() if v is None]
    if missing:
        problems.append(f"step(s) did not finish: {', '.join(missing)}")
    validation = sections["validation"] or {}
    erasures = sections["erasures"] or {}
    reqs = sections["requests"] or {}
    audit_section = sections["audit"] or {}
    retention = sections["retention"] or {}
    kanon = sections["k_anonymity"] or {}
    landing = retention.get("landing") or {}
    failed_sections = [z for z in validation.get("zones", []) if not z.get("success")]
    if failed_sections:
        problems.append(f"{validation.get('failed_files', 0)} file(s) failed validation in "
                        + ", ".join(sorted({f"{z['zone']}/{z['dataset']}/{z['tenant_id']}"
                                            for z in failed_sections})))
    incomplete = erasures.get("incomplete", [])
    if incomplete:
        problems.append(f"{len(incomplete)} completed erasure(s) are not complete: "
                        + ", ".join(e["request_id"] for e in incomplete))
    overdue = reqs.get("overdue", [])
    if overdue:
        problems.append(f"{len(overdue)} request(s) are overdue: "
                        + ", ".join(r["request_id"] for r in overdue))
    late = reqs.get("completed_late", [])
    if late:
        warnings.append(f"{len(late)} request(s) were completed after their deadline: "
                        + ", ".join(r["request_id"] for r in late))
    quarantined = sum(q.get("batches", 0) for q in reqs.get("quarantined", []))
    if quarantined:
        warnings.append(f"{quarantined} landing batch(es) are quarantined (zones/quarantine), by reason: "
                        + ", ".join(f"{q['dataset']}/{q['tenant_id']} {q['reason_code']} x{q['batches']}"
                                    for q in reqs.get("quarantined", [])))
    if audit_section and not audit_section.get("ok"):
        problems.append(f"the audit log chain is broken ({audit_section.get('problem')})")
    flagged = [r for r in kanon.get("results", []) if r.get("flagged")]
    if flagged:
        warnings.append(f"k-anonymity below k={kanon.get('k')} in "
                        + ", ".join(f"{r['dataset']}/{r['tenant_id']}" for r in flagged))
    status = "fail" if problems else "pass"
    summary = (f"{status.upper()}: {validation.get('files', 0)} file(s), {validation.get('rows', 0)} row(s)"
               f" validated, {validation.get('failed_files', 0)} failed; erasures"
               f" {erasures.get('checked', 0) - len(incomplete) - erasures.get('no_data_found', 0)}"
               f"/{erasures.get('checked', 0) - erasures.get('no_data_found', 0)} verified"
               f" ({erasures.get('no_data_found', 0)} found no data);"
               f" requests {len(overdue)} overdue, {len(reqs.get('due_soon', []))} due within 7 days,"
               f" {len(late)} completed late; {quarantined} batch(es) quarantined;"
               f" {len(reqs.get('holds', []))} hold(s), {sum(reqs.get('restrictions', {}).values())}"
               f" restriction(s);"
               f" audit chain {'ok' if audit_section.get('ok') else 'BROKEN'};"
               f" retention deleted {len(retention.get('deleted', []))} partition(s),"
               f" {retention.get('rows_deleted_by_trim', 0)} row(s) of"
               f" {retention.get('partitions_trimmed_for_hold', 0)} partition(s) trimmed to held subjects,"
               f" {len(landing.get('deleted', []))} landing file(s),"
               f" {len(landing.get('quarantine_purged', []))} quarantined file(s);"
               f" k-anonymity {len(flagged)} flagged")
    generated = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    entry = {"generated_at": generated, "run_id": run_id, "status": status,
             "files": validation.get("files", 0), "failed_files": validation.get("failed_files", 0),
             "rows": validation.get("rows", 0)}
    earlier = [h for h in _history(settings) if h.get("run_id") != run_id]
    history = [*earlier[-(HISTORY_KEPT - 1):], entry]
    shown_validation = {k: v for k, v in validation.items() if k != "erased_found"}
    if shown_validation.get("data_docs"):
        # the HTML report links it from its own directory
        shown_validation["data_docs"] = "data_docs/index.html"
    return {"generated_at": generated, "run_id": run_id, "status": status, "summary": summary,
            "problems": problems + [f"Warning: {w}" for w in warnings], "validation": shown_validation,
            "erasures": erasures, "requests": reqs, "audit": audit_section, "retention": retention,
            "k_anonymity": kanon, "history": history}


def _history(settings: Settings) -> list[dict[str, Any]]:
    path = settings.reports / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(settings: Settings, run_id: str, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Assemble and write report.json, report.html, latest.json and the history line; then
    prune earlier runs past the report retention (``prune_runs``)."""
    report = assemble(settings, run_id, now=now)
    target = run_dir(settings, run_id)
    zones.write_json(report, target / "report.json")
    page = html.render(report)
    zones.write_bytes(page.encode("utf-8"), target / "report.html")
    zones.write_json(report, settings.reports / "latest.json")
    lines = [h for h in _history(settings) if h.get("run_id") != run_id] + [report["history"][-1]]
    zones.write_bytes("".join(json.dumps(h, sort_keys=True) + "\n" for h in lines).encode(),
                      settings.reports / "history.jsonl")
    pruned = prune_runs(settings, keep=run_id, now=now)
    return {"status": report["status"], "summary": report["summary"], "runs_pruned": len(pruned),
            "json": settings.shown(target / "report.json"),
            "html": settings.shown(target / "report.html")}


def report_retention_days() -> int:
    """``PSEUDOZONE_REPORT_RETENTION_DAYS`` (default 90): how long a nightly run's directory
    (report, sections, Data Docs) is kept after the run; 0 keeps the latest run only."""
    raw = os.environ.get(REPORT_RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_REPORT_RETENTION_DAYS
    if not raw.isdigit():
        raise ConfigError(f"{REPORT_RETENTION_ENV} must be a whole number of days, 0 or more")
    return int(raw)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _run_time(run: Path, report: dict[str, Any] | None) -> dt.datetime:
    """When a run was: its report's ``generated_at``, else the newest mtime of its files (a run
    that never reached its report)."""
    if report is not None and isinstance(report.get("generated_at"), str):
        try:
            return dt.datetime.fromisoformat(report["generated_at"]).astimezone(dt.UTC)
        except ValueError:
            pass
    newest = run.lstat().st_mtime
    for dirpath, dirs, files in os.walk(run):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return dt.datetime.fromtimestamp(newest, dt.UTC)


def _anchors(settings: Settings) -> list[dict[str, Any]]:
    path = settings.reports / ANCHORS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prune_runs(settings: Settings, *, keep: str | None = None, now: dt.datetime | None = None,
               days: int | None = None) -> list[str]:
    """Delete run directories (report, sections, Data Docs) older than the report retention;
    returns the pruned runs' directory names.

    Never pruned: the run ``keep`` (the one reporting now), the run ``latest.json`` names,
    ``history.jsonl`` (one line per run) and ``latest.json``.  A run's audit section holds the
    audit chain's head at that run, an anchor of the chain kept nowhere else (ADR 0004: a
    truncation after the last checkpoint shows only against an earlier report's head), so it
    is appended to ``audit_anchors.jsonl`` (written and synced) before its run is deleted.
    """
    days = report_retention_days() if days is None else days
    cutoff = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC) - dt.timedelta(days=days)
    runs_root = settings.reports / "runs"
    if not runs_root.is_dir():
        return []
    current = latest(settings)
    spared = {run_dir(settings, r).name for r in (keep, (current or {}).get("run_id")) if r}
    anchored = {a.get("run") for a in _anchors(settings)}
    new_anchors: list[dict[str, Any]] = []
    expired: list[Path] = []
    for run in sorted(runs_root.iterdir()):
        if run.is_symlink() or not run.is_dir() or run.name in spared:
            continue
        report = _read_json(run / "report.json")
        when = _run_time(run, report)
        if when >= cutoff:
            continue
        audit_section = (report or {}).get("audit") or _read_json(run / "audit.json")
        if audit_section and run.name not in anchored:
            new_anchors.append({
                "run": run.name, "run_id": (report or {}).get("run_id", run.name),
                "generated_at": when.isoformat(timespec="seconds"), "status": (report or {}).get("status"),
                "audit_ok": audit_section.get("ok"), "head": audit_section.get("head"),
                "problem": audit_section.get("problem")})
        expired.append(run)
    if not expired:
        return []
    if new_anchors:
        # the anchors first, synced: a crash after this leaves a run to prune again, never a
        # pruned run without its anchor
        lines = _anchors(settings) + new_anchors
        zones.write_bytes("".join(json.dumps(a, sort_keys=True) + "\n" for a in lines).encode(),
                          settings.reports / ANCHORS)
    for run in expired:
        shutil.rmtree(run)
    zones.fsync_dirs({runs_root})
    log.info("report retention: %d run(s) older than %d day(s) pruned", len(expired), days)
    return [r.name for r in expired]


def latest(settings: Settings) -> dict[str, Any] | None:
    path = settings.reports / "latest.json"
    if not path.exists():
        return None
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def run_nightly(settings: Settings, run_id: str, *, now: dt.datetime | None = None, k: int = 5,
                retention_overrides: dict[str, int] | None = None,
                rows_per_run: int = nightly.ROWS_PER_RUN,
                on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every step in order, in this process, then the report (what the DAG does, without Airflow);
    ``on_step`` is called with each step's name once it has run (the CLI's progress)."""
    for step in STEPS:
        run_step(settings, run_id, step, now=now, k=k, retention_overrides=retention_overrides,
                 rows_per_run=rows_per_run)
        if on_step:
            on_step(step)
    return write_report(settings, run_id, now=now)
