"""What the DAGs hand to Airflow's own operations features (docs/adr/0014-operations.md).

Only glue, imported by the DAG files at parse time (nothing heavy):

- ``ZONE_ASSETS``: one Asset per event-zone dataset (``pseudozone://zones/events/<dataset>``).
  Ingest, the rights run and compaction update the ones they write, so that a DAG can be
  scheduled on them and the Assets page shows when each zone last changed.
- ``POOL``: the pool of pseudozone's heavy tasks (batch ingest, file-group rewrites,
  exports, validation, compaction); its size is the platform's (``airflow pools set``).
- ``PseudozoneNotifier``: the ``on_failure_callback`` of every DAG (``pseudozone.alerts``).
- ``nightly_deadline``: the ``DeadlineAlert`` of the nightly run, when configured.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, BaseNotifier
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference, SyncCallback

from pseudozone import alerts, contracts
from pseudozone.errors import ConfigError

POOL_ENV = "PSEUDOZONE_POOL"
DEADLINE_ENV = "PSEUDOZONE_NIGHTLY_DEADLINE_MINUTES"
DEFAULT_POOL = "pseudozone"

POOL = os.environ.get(POOL_ENV, "").strip() or DEFAULT_POOL


def zone_asset(dataset: str) -> Asset:
    """The Asset of one dataset's event zone (its restricted and PII zones change with it)."""
    return Asset(name=f"pseudozone.events.{dataset}", uri=f"pseudozone://zones/events/{dataset}",
                 group="pseudozone")


ZONE_ASSETS = [zone_asset(d) for d in sorted(contracts.available())]


class PseudozoneNotifier(BaseNotifier):
    """Alert on a failure: one line in the log and ``reports/alerts.log``, then the platform's
    notifier (``PSEUDOZONE_ALERT_NOTIFIER``, e.g. the SMTP or Slack provider's), if configured."""

    def __init__(self, kind: str = "task_failed") -> None:
        super().__init__()
        self.kind = kind

    def notify(self, context: Any) -> None:
        alerts.alert(self.kind, context)


def nightly_deadline() -> DeadlineAlert | None:
    """Alert when a nightly run has not finished ``PSEUDOZONE_NIGHTLY_DEADLINE_MINUTES`` after it
    was queued; None (no deadline) while the setting is unset.

    Opt-in because Airflow 3.3.2's ``airflow dags test`` fails on a DAG that carries a
    ``DeadlineAlert`` (its lookup of the stored alert binds a dict where a UUID belongs), and
    ``make demo`` runs the nightly DAG that way (docs/adr/0014-operations.md).
    """
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{DEADLINE_ENV} must be a whole number of minutes, at least 1")
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=int(raw)),
                         callback=SyncCallback("pseudozone.alerts.deadline_missed"))
