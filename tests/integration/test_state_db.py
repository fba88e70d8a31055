"""The single state database: one URL for the key vault, the batch ledger and the request
ledger; ``pseudozone state migrate`` for roots from before it; one transaction for a key's
destruction and its audit entry (docs/adr/0018-state-database.md)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pseudozone import ingest, state
from pseudozone.cli import main as cli
from pseudozone.config import Settings
from pseudozone.keys import KeyRing, Vault
from pseudozone.rights import audit, process, requests, store
from pseudozone.state_migrate import MigrationError, migrate
from tests import planted
from tests.conftest import TEST_MASTER_KEY
from tests.pg_server import Postgres

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)


def _used(settings: Settings) -> list[str]:
    """A lake with both kinds of state: ingested batches and data keys, finished requests, a hold."""
    ingest.ingest_pending(settings, keyring=KR)
    filed = [requests.submit(settings, {"type": kind, "tenant_id": planted.TENANT, "user_id": user},
                             source="test", keyring=KR)
             for kind, user in (("export", planted.USER), ("erase", "usr_0000005"))]
    requests.add_legal_hold(settings, tenant_id="globex", reason="case 12", reason_code="litigation")
    process.process_all(settings, "run-1", keyring=KR)
    return [f.request_id for f in filed]


def _split_the_ledger_out(settings: Settings) -> None:
    """Lay the root out as releases before the single database did: the request ledger's tables
    in ``state/requests.db``, the rest in ``state/pseudozone.db``."""
    legacy = settings.state / state.LEGACY_REQUESTS_DB
    conn = sqlite3.connect(settings.state_db)
    conn.execute(f"ATTACH DATABASE '{legacy}' AS legacy")
    for table in store.metadata.sorted_tables:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table.name,)).fetchone()[0]
        conn.execute(ddl.replace(f"CREATE TABLE {table.name}", f"CREATE TABLE legacy.{table.name}", 1))
        conn.execute(f"INSERT INTO legacy.{table.name} SELECT * FROM main.{table.name}")
    conn.commit()
    for table in reversed(store.metadata.sorted_tables):
        conn.execute(f"DROP TABLE main.{table.name}")
    conn.commit()
    conn.close()
    state._CHECKED.clear()
    store._schema.cache_clear()


def _ledger(settings: Settings) -> dict[str, object]:
    with store.engine_for(settings).connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in store.metadata.sorted_tables}


def test_a_root_with_a_separate_request_ledger_is_refused_until_migrated(
        lake: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    filed = _used(lake)
    before = _ledger(lake)
    _split_the_ledger_out(lake)
    with pytest.raises(state.StateDbError, match="pseudozone state migrate"):
        requests.get_status(lake, filed[0])
    assert cli(["--home", str(lake.root), "requests", "--json"]) == 2
    assert "state migrate" in capsys.readouterr().err

    assert cli(["--home", str(lake.root), "state", "migrate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    [moved] = result["moved"]
    assert moved["source"].endswith("requests.db") and moved["rows"]["rights_requests"] == 2
    assert result["deleted"] == [moved["source"]] and result["audited"] is True
    assert not list(lake.state.glob("requests.db*"))
    # everything is where it was, in the one database
    after = _ledger(lake)
    assert after["audit_log"] == before["audit_log"] + 1  # the move is audited
    assert {k: v for k, v in after.items() if k != "audit_log"} == \
        {k: v for k, v in before.items() if k != "audit_log"}
    assert [requests.get_status(lake, r).state for r in filed] == ["completed", "completed"]
    assert audit.verify(lake).ok
    assert [e["action"] for e in audit.entries(lake, action="state.*")] == ["state.migrated"]
    # and it works on: a new erasure, with its key destroyed beside its audit entry
    erase = requests.submit(lake, {"type": "erase", "tenant_id": planted.TENANT, "user_id": planted.USER},
                            source="test", keyring=KR)
    process.process_all(lake, "run-2", keyring=KR)
    assert requests.get_status(lake, erase.request_id).state == "completed"
    with state.connect(lake) as conn:
        assert Vault(KR, conn).destroyed(planted.TENANT, [SUBJECT]) == {SUBJECT}
    # run again: nothing left to move
    assert migrate(lake)["moved"] == []


def test_sqlite_state_moves_to_postgresql_in_one_step(lake: Settings, postgres: Postgres,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    filed = _used(lake)
    before = _ledger(lake)
    with state.connect(lake) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in state.TABLES}
    on_pg = dataclasses.replace(lake, state_db_url=postgres.create_database())
    with pytest.raises(state.StateDbError, match="local state database"):
        state.engine(on_pg)

    result = migrate(on_pg)
    [moved] = result["moved"]
    assert {t: n for t, n in moved["rows"].items() if t in state.TABLES} == \
        {t: n for t, n in counts.items() if n}
    assert not lake.state_db.exists() and not list(lake.state.glob("pseudozone.db*"))
    assert state.engine(on_pg).dialect.name == "postgresql"
    assert _ledger(on_pg)["rights_requests"] == before["rights_requests"]
    assert [requests.get_status(on_pg, r).state for r in filed] == ["completed", "completed"]
    assert audit.verify(on_pg).ok
    # the vault and the root secret came along: the master key opens the PII zone's keys
    ring = KeyRing.load(on_pg)
    assert ring.subject_id(planted.TENANT, planted.USER) == SUBJECT
    with state.connect(on_pg) as conn:
        assert Vault(ring, conn).data_keys(planted.TENANT, [SUBJECT], create=False)
    # the batch ledger came along: nothing is ingested twice
    assert ingest.ingest_pending(on_pg, keyring=ring) == []
    # a new hold gets the next id (the serial's sequence follows the copied ids)
    hold = requests.add_legal_hold(on_pg, tenant_id="globex", reason="case 13", reason_code="litigation")
    assert hold == 2


def test_a_target_that_holds_rows_already_is_refused_and_nothing_moves(
        lake: Settings, postgres: Postgres) -> None:
    _used(lake)
    url = postgres.create_database()
    elsewhere = dataclasses.replace(Settings.from_env(lake.root.parent / "other"), state_db_url=url)
    elsewhere.ensure()
    requests.register_tenant(elsewhere, "acme")  # the target's own ledger has a tenant already
    on_pg = dataclasses.replace(lake, state_db_url=url)
    with pytest.raises(MigrationError, match="already holds rows of table"):
        migrate(on_pg)
    assert lake.state_db.exists()  # the source is untouched
    with sqlite3.connect(lake.state_db) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] > 0
    with state.connect(dataclasses.replace(elsewhere)) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0  # rolled back


def test_the_old_ledger_url_alone_is_a_clear_error(settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(state.LEGACY_REQUESTS_DB_URL_ENV, "postgresql+psycopg://u:secret@db/pz")
    with pytest.raises(state.StateDbError, match="PSEUDOZONE_STATE_DB_URL") as caught:
        state.engine(settings)
    assert "secret" not in str(caught.value)
    monkeypatch.setenv(state.STATE_DB_URL_ENV, "mysql://u:secret@db/pz")
    with pytest.raises(state.StateDbError, match="SQLite or PostgreSQL") as caught:
        state.engine(settings)
    assert "secret" not in str(caught.value)


def test_a_key_is_destroyed_only_with_its_audit_entry(lake: Settings,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ingest.ingest_pending(lake, keyring=KR)
    erase = requests.submit(lake, {"type": "erase", "tenant_id": planted.TENANT, "user_id": planted.USER},
                            source="test", keyring=KR)
    real = audit.append

    def append(conn: object, action: str, **kw: object) -> object:
        if action == "key.destroyed":
            raise OSError("the disk went away")  # after the key's UPDATE, before the commit
        return real(conn, action, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(audit, "append", append)
    with pytest.raises(OSError, match="went away"):
        process.process_all(lake, "run-1", keyring=KR)
    with state.connect(lake) as conn:  # the destruction rolled back with its audit entry
        assert Vault(KR, conn).destroyed(planted.TENANT, [SUBJECT]) == set()
        assert Vault(KR, conn).data_keys(planted.TENANT, [SUBJECT], create=False)
    monkeypatch.setattr(audit, "append", real)
    process.process_all(lake, "run-2", keyring=KR)  # the rerun finishes it, once
    assert requests.get_status(lake, erase.request_id).state == "completed"
    with state.connect(lake) as conn:
        assert Vault(KR, conn).destroyed(planted.TENANT, [SUBJECT]) == {SUBJECT}
    assert [e["action"] for e in audit.entries(lake, action="key.*")] == ["key.destroyed"]
    assert audit.verify(lake).ok


def test_a_state_file_left_beside_a_configured_database_is_refused(tmp_path: Path,
                                                                   postgres: Postgres) -> None:
    settings = Settings.from_env(tmp_path / "lake")
    settings.ensure()  # the default SQLite file exists
    with sqlite3.connect(settings.state_db) as conn:
        conn.execute("CREATE TABLE batches (batch_id TEXT)")
    moved = dataclasses.replace(settings, state_db_url=postgres.create_database())
    with pytest.raises(state.StateDbError, match=r"pseudozone\.db is not in the state database"):
        requests.list_requests(moved)
