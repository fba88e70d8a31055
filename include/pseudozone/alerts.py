"""Alerts when a DAG's task fails or the nightly run misses its deadline (docs/adr/0014-operations.md).

``alert`` writes one line per alert to the log (ERROR) and to ``reports/alerts.log`` under
the data root (owner-only, appended), and hands the same context to the notifier a platform
configures (``PSEUDOZONE_ALERT_NOTIFIER``: the import path of an Airflow notifier class, such
as the SMTP or Slack provider's, with ``PSEUDOZONE_ALERT_NOTIFIER_KWARGS`` as JSON).

A line names the DAG, task, run, try and the error's type; the error's message only when it
is one of pseudozone's own (``PseudozoneError``: they name files, ids and counts, never a
value). A library's message may quote a value, so it is never repeated.  No import here
needs Airflow: the Airflow notifier around it is ``pseudozone.notifiers``.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pseudozone.config import Settings
from pseudozone.errors import ConfigError, PseudozoneError

log = logging.getLogger(__name__)

NOTIFIER_ENV = "PSEUDOZONE_ALERT_NOTIFIER"
NOTIFIER_KWARGS_ENV = "PSEUDOZONE_ALERT_NOTIFIER_KWARGS"
ALERTS_FILE = "alerts.log"


def _name(obj: Any, attribute: str) -> str | None:
    value = getattr(obj, attribute, None)
    return None if value is None else str(value)


def alert_line(kind: str, context: Mapping[str, Any]) -> str:
    """One line for an alert: where it happened and what kind of error (no value)."""
    dag = context.get("dag")
    ti = context.get("task_instance") or context.get("ti")
    dag_run = context.get("dag_run")
    parts = {
        "alert": kind,
        "dag": _name(dag, "dag_id") or _name(ti, "dag_id") or _name(dag_run, "dag_id"),
        "task": _name(ti, "task_id"),
        "map_index": None if _name(ti, "map_index") in (None, "-1") else _name(ti, "map_index"),
        "run": context.get("run_id") or _name(dag_run, "run_id"),
        "try": _name(ti, "try_number"),
    }
    exc = context.get("exception")
    if exc is not None:
        parts["error"] = type(exc).__name__
        if isinstance(exc, PseudozoneError):
            parts["detail"] = str(exc).splitlines()[0][:300]
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def alerts_path(settings: Settings) -> Path:
    return settings.root / "reports" / ALERTS_FILE


def _write(settings: Settings, line: str) -> None:
    path = alerts_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(f"{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} {line}\n")


def configured_notifier() -> Any | None:
    """The platform's notifier (``PSEUDOZONE_ALERT_NOTIFIER``), made with its JSON kwargs; None when unset."""
    path = os.environ.get(NOTIFIER_ENV, "").strip()
    if not path:
        return None
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{NOTIFIER_ENV}={path!r} does not name an importable class "
                          "(is its provider package installed?)") from None
    raw = os.environ.get(NOTIFIER_KWARGS_ENV, "").strip() or "{}"
    try:
        kwargs = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{NOTIFIER_KWARGS_ENV} must be a JSON object") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{NOTIFIER_KWARGS_ENV} must be a JSON object")
    return cls(**kwargs)


def alert(kind: str, context: Mapping[str, Any], home: str | None = None) -> str:
    """Log, record and forward one alert; returns its line.  Never raises: an alert that
    cannot be delivered is logged, and the task's own failure stands."""
    line = alert_line(kind, context)
    log.error("pseudozone alert: %s", line)
    try:
        _write(Settings.from_env(home), line)
    except OSError as exc:
        log.error("pseudozone alert not written to %s (%s)", ALERTS_FILE, type(exc).__name__)
    try:
        notifier = configured_notifier()
        if notifier is not None:
            notifier(dict(context))
    except Exception as exc:  # noqa: BLE001 - a broken notifier must not hide the alert
        log.error("pseudozone alert: the configured notifier failed (%s)", type(exc).__name__)
    return line


def deadline_missed(context: Mapping[str, Any] | None = None, **kwargs: Any) -> str:
    """The nightly run's ``DeadlineAlert`` callback: alert that it has not finished in time."""
    return alert("deadline_missed", {**(context or {}), **kwargs})
