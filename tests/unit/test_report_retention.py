"""Old nightly report runs are pruned after PSEUDOZONE_REPORT_RETENTION_DAYS; their audit heads are kept."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pseudozone.compliance import report
from pseudozone.config import Settings
from pseudozone.errors import ConfigError

NOW = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)


def _head(n: int) -> dict[str, Any]:
    return {"entries": n, "hash": f"{n:064x}"}


def _run(settings: Settings, run_id: str, age_days: float, *, finished: bool = True,
         audit: dict[str, Any] | None = None) -> Path:
    """A run's directory as the nightly run leaves it (sections, report, Data Docs), ``age_days``
    old: by its report's ``generated_at`` when it finished, by its files' mtimes when it did not."""
    when = NOW - dt.timedelta(days=age_days)
    run = report.run_dir(settings, run_id)
    docs = run / "data_docs" / "validations" / "s" / "1"
    docs.mkdir(parents=True)
    (docs / "page.html").write_text("<html>validation</html>")
    (run / "data_docs" / "index.html").write_text("<html>index</html>")
    section = audit if audit is not None else {"ok": True, "entries": 5, "head": _head(5), "problem": None}
    (run / "audit.json").write_text(json.dumps(section))
    if finished:
        (run / "report.json").write_text(json.dumps({
            "run_id": run_id, "generated_at": when.isoformat(timespec="seconds"), "status": "pass",
            "audit": section}))
        (run / "report.html").write_text("<html>report</html>")
    else:  # an unfinished run has no report: its age is its files' mtimes
        stamp = when.timestamp()
        for path in [*run.rglob("*"), run]:
            os.utime(path, (stamp, stamp))
    return run


def _anchors(settings: Settings) -> list[dict[str, Any]]:
    path = settings.reports / report.ANCHORS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runs_past_the_retention_go_with_their_data_docs_and_their_audit_heads_stay(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(report.REPORT_RETENTION_ENV, raising=False)
    old = _run(settings, "scheduled__2026-07-01", 151, audit={"ok": True, "entries": 3, "head": _head(3),
                                                            "problem": None})
    broken = _run(settings, "scheduled__2026-08-01", 120, audit={
        "ok": False, "entries": 7, "head": _head(7), "problem": "entry 4: hash mismatch"})
    unfinished = _run(settings, "manual__2026-08-15", 106, finished=False,
                      audit={"ok": True, "entries": 9, "head": _head(9), "problem": None})
    edge_kept = _run(settings, "scheduled__2026-09-01", 89)
    recent = _run(settings, "scheduled__2026-11-20", 9)
    history = settings.reports / "history.jsonl"
    history.write_text('{"run_id": "scheduled__2026-07-01", "status": "pass"}\n')
    pinned = _run(settings, "scheduled__2026-05-01", 212)  # the run latest.json names
    (settings.reports / "latest.json").write_text(json.dumps({"run_id": "scheduled__2026-05-01"}))

    pruned = report.prune_runs(settings, keep="scheduled__2026-11-29", now=NOW)

    assert sorted(pruned) == sorted(p.name for p in (old, broken, unfinished))
    assert not old.exists() and not broken.exists() and not unfinished.exists()  # Data Docs with them
    assert edge_kept.exists() and recent.exists() and pinned.exists()
    assert history.read_text() == '{"run_id": "scheduled__2026-07-01", "status": "pass"}\n'
    anchors = {a["run"]: a for a in _anchors(settings)}
    assert set(anchors) == set(pruned)
    assert anchors[old.name]["head"] == _head(3) and anchors[old.name]["audit_ok"] is True
    assert anchors[old.name]["generated_at"] == "2026-07-01T02:00:00+00:00"
    assert anchors[broken.name]["audit_ok"] is False and anchors[broken.name]["problem"] == (
        "entry 4: hash mismatch")
    assert anchors[unfinished.name]["head"] == _head(9) and anchors[unfinished.name]["status"] is None

    # nothing is pruned or anchored twice
    assert report.prune_runs(settings, keep="scheduled__2026-11-29", now=NOW) == []
    assert len(_anchors(settings)) == 3

    # a shorter retention from the environment; the run reporting now is never pruned
    monkeypatch.setenv(report.REPORT_RETENTION_ENV, "5")
    assert report.prune_runs(settings, keep=recent.name, now=NOW) == [edge_kept.name]
    assert recent.exists() and pinned.exists()
    assert [a["run"] for a in _anchors(settings)][-1] == edge_kept.name


def test_each_report_prunes_and_a_bad_setting_is_refused(settings: Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    stale = _run(settings, "scheduled__2026-01-01", 332)
    monkeypatch.setenv(report.REPORT_RETENTION_ENV, "30")
    written = report.write_report(settings, "scheduled__2026-11-29", now=NOW)
    assert written["runs_pruned"] == 1 and not stale.exists()
    assert report.run_dir(settings, "scheduled__2026-11-29").exists()
    assert [a["run"] for a in _anchors(settings)] == [stale.name]
    # 0 keeps the latest run only
    monkeypatch.setenv(report.REPORT_RETENTION_ENV, "0")
    report.write_report(settings, "scheduled__2026-11-30", now=NOW + dt.timedelta(days=1))
    assert sorted(p.name for p in (settings.reports / "runs").iterdir()) == ["scheduled__2026-11-30"]

    monkeypatch.setenv(report.REPORT_RETENTION_ENV, "ninety")
    with pytest.raises(ConfigError, match=report.REPORT_RETENTION_ENV):
        report.report_retention_days()
    monkeypatch.delenv(report.REPORT_RETENTION_ENV)
    assert report.report_retention_days() == 90
