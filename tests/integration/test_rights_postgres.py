"""The request ledger and audit log on a real PostgreSQL server (started here, on loopback).

.ci/run installs the server (Debian's postgresql); a developer without it gets a skip
that says so, CI gets a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text, update

from pseudozone import ingest
from pseudozone.config import Settings
from pseudozone.rights import audit, process, requests, store
from tests import planted
from tests.conftest import append_audit_concurrently

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing: .ci/run should install 'postgresql'")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="pseudozone-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                    "--no-sync"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                        "-c", "CREATE DATABASE pseudozone"], check=True, capture_output=True)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/pseudozone"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_lake(lake: Settings, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv(store.DB_URL_ENV, postgres_url)
    # the settings fixture's ensure() ran before the URL was set and made an empty 0600 SQLite
    # ledger file; with the URL set nothing makes or uses it again
    (lake.state / "requests.db").unlink(missing_ok=True)
    engine = store.engine_for(lake)
    with engine.begin() as conn:  # a clean ledger per test
        for table in reversed(store.metadata.sorted_tables):
            conn.execute(table.delete())
    ingest.ingest_pending(lake)
    yield lake


def test_rights_lifecycle_on_postgresql(pg_lake: Settings) -> None:
    assert store.engine_for(pg_lake).dialect.name == "postgresql"
    assert not (pg_lake.state / "requests.db").exists()
    erase = requests.submit(pg_lake, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                            source="test")
    export = requests.submit(pg_lake, {"type": "export", "tenant_id": "acme", "user_id": "usr_0000004"},
                             source="test")
    bad = requests.submit(pg_lake, {"type": "forget", "tenant_id": "acme", "user_id": "x"}, source="test")
    summary = process.process_all(pg_lake, "run-pg")
    assert summary["completed"] == {"erase": 1, "export": 1}
    assert requests.get_status(pg_lake, erase.request_id).state == "completed"
    assert requests.get_status(pg_lake, export.request_id).state == "completed"
    assert requests.get_status(pg_lake, bad.request_id).reason["code"] == "unknown_type"
    assert audit.verify(pg_lake).ok
    with store.engine_for(pg_lake).begin() as conn:
        conn.execute(update(store.audit_log).where(store.audit_log.c.seq == 2).values(actor="mallory"))
    result = audit.verify(pg_lake)
    assert not result.ok and result.first_bad_seq == 2


def test_concurrent_audit_appends_keep_one_linear_chain(pg_lake: Settings) -> None:
    append_audit_concurrently(pg_lake, writers=4, each=15)
    verdict = audit.verify(pg_lake)
    assert verdict.ok and verdict.entries == 60
    with store.engine_for(pg_lake).connect() as conn:
        assert conn.execute(text("SELECT count(DISTINCT prev_hash) FROM audit_log")).scalar_one() == 60
