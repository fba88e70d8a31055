"""The state database (request ledger, audit log, key vault, batch ledger) on a real PostgreSQL
server (tests/pg_server.py, on loopback).

.ci/run installs the server (Debian's postgresql); a developer without it gets a skip
that says so, CI gets a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text, update

from pseudozone import ingest, state
from pseudozone.config import Settings
from pseudozone.rights import audit, process, requests, store
from tests import planted
from tests.conftest import append_audit_concurrently
from tests.pg_server import Postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def postgres_url(postgres: Postgres) -> str:
    return postgres.create_database()


@pytest.fixture
def pg_lake(lake: Settings, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv(state.STATE_DB_URL_ENV, postgres_url)
    # the settings fixture's ensure() ran before the URL was set and made an empty 0600 SQLite
    # state file; with the URL set nothing makes or uses it again (and it is refused while there)
    lake.state_db.unlink(missing_ok=True)
    with store.transaction(lake) as conn:  # a clean state database per test
        for table in reversed(store.metadata.sorted_tables):
            conn.execute(table.delete())
        for name in state.TABLES:
            conn.exec_driver_sql(f"DELETE FROM {name}")
    ingest.ingest_pending(lake)
    yield lake


def test_rights_lifecycle_on_postgresql(pg_lake: Settings) -> None:
    assert store.engine_for(pg_lake).dialect.name == "postgresql"
    assert not pg_lake.state_db.exists()
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
