"""Alerts: one line per failure, no value in it, delivered to the configured notifier too."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pseudozone import alerts
from pseudozone.errors import PseudozoneError

RECEIVED: list[dict[str, Any]] = []


class Recorder:
    """Stands for a provider's notifier (SMTP, Slack): called with the context."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    def __call__(self, context: dict[str, Any]) -> None:
        RECEIVED.append({"channel": self.channel, **context})


def _context(exc: BaseException) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="nightly_compliance", task_id="validate_zones", map_index=-1, try_number=3)
    return {"task_instance": ti, "run_id": "scheduled__2026-12-03", "exception": exc}


def test_an_alert_names_where_and_what_kind_never_a_library_message(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(alerts.NOTIFIER_ENV, raising=False)
    line = alerts.alert("task_failed", _context(ValueError("bad value 'zelda.plantedpii@example.org'")),
                        home=str(tmp_path))
    assert line == ("alert=task_failed dag=nightly_compliance task=validate_zones"
                    " run=scheduled__2026-12-03 try=3 error=ValueError")
    written = (tmp_path / "reports" / "alerts.log").read_text()
    assert written.endswith(line + "\n") and "plantedpii" not in written
    assert (tmp_path / "reports" / "alerts.log").stat().st_mode & 0o777 == 0o600


def test_pseudozones_own_errors_keep_their_first_line(tmp_path: Path) -> None:
    exc = PseudozoneError("batch events.acme.b-0001 failed during publish (OSError)\nmore")
    line = alerts.alert_line("task_failed", _context(exc))
    assert line.endswith("error=PseudozoneError"
                         " detail=batch events.acme.b-0001 failed during publish (OSError)")


def test_the_configured_notifier_gets_the_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RECEIVED.clear()
    monkeypatch.setenv(alerts.NOTIFIER_ENV, f"{__name__}.Recorder")
    monkeypatch.setenv(alerts.NOTIFIER_KWARGS_ENV, '{"channel": "#data-platform"}')
    alerts.alert("task_failed", _context(RuntimeError("x")), home=str(tmp_path))
    assert [r["channel"] for r in RECEIVED] == ["#data-platform"] and RECEIVED[0]["run_id"]


@pytest.mark.parametrize(("path", "kwargs"), [("no.such.module.Notifier", "{}"),
                                              (f"{__name__}.Recorder", "[1]")])
def test_a_broken_notifier_setting_still_records_the_alert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture, path: str,
                                                          kwargs: str) -> None:
    monkeypatch.setenv(alerts.NOTIFIER_ENV, path)
    monkeypatch.setenv(alerts.NOTIFIER_KWARGS_ENV, kwargs)
    alerts.alert("task_failed", _context(RuntimeError("x")), home=str(tmp_path))
    assert "error=RuntimeError" in (tmp_path / "reports" / "alerts.log").read_text()
    assert "the configured notifier failed (ConfigError)" in caplog.text


def test_a_missed_deadline_is_an_alert_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(alerts.NOTIFIER_ENV, raising=False)
    monkeypatch.setenv("PSEUDOZONE_HOME", str(tmp_path))
    line = alerts.deadline_missed({"run_id": "scheduled__2026-12-03"}, dag_id="nightly_compliance")
    assert line.startswith("alert=deadline_missed") and "run=scheduled__2026-12-03" in line
