"""Airflow test setup: a throw-away AIRFLOW_HOME with a SQLite metadata DB.

The environment is set when this module is imported, before anything imports
Airflow, and the DB is migrated once per session (in a subprocess, the way a
user runs ``airflow db migrate``).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="pseudozone-airflow-"))
PSEUDOZONE_HOME = AIRFLOW_HOME / "lake"

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    "PSEUDOZONE_HOME": str(PSEUDOZONE_HOME),
    # a fixed test key, passed the way a deployment passes it: never a real secret
    "PSEUDOZONE_MASTER_KEY": base64.b64encode(bytes(range(32))).decode(),
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.airflow)


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield AIRFLOW_HOME / "airflow.db"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


def artifact_texts(db: Path) -> dict[str, str]:
    """Every place Airflow keeps things: the metadata DB (raw pages and XCom rows) and log files."""
    texts = {"metadata-db-bytes": db.read_bytes().decode("utf-8", "replace")}
    for wal in db.parent.glob(db.name + "-*"):
        texts[wal.name] = wal.read_bytes().decode("utf-8", "replace")
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            texts[f"table:{table}"] = "\n".join(repr(r) for r in rows)
    for log_file in (AIRFLOW_HOME / "logs").rglob("*"):
        if log_file.is_file():
            texts[f"log:{log_file.relative_to(AIRFLOW_HOME)}"] = log_file.read_text("utf-8", "replace")
    return texts


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_dag(dag_id: str) -> tuple[Any, str]:
    """``dag.test()`` of one DAG of this repo; returns the run and everything its tasks logged.

    Under ``dag.test()`` task logs go to logging and stdout (no log files are written), so
    both are captured for the PII hunts.
    """
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag(dag_id)
    handler = _Lines()
    logging.getLogger().addHandler(handler)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            dag_run = dag.test()
    finally:
        logging.getLogger().removeHandler(handler)
    return dag_run, "\n".join(handler.lines) + "\n" + out.getvalue()
