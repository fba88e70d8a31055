from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from pseudozone.cli import main


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(bytes(32)).decode())


def test_generate_ingest_status_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "lake")
    assert main(["--home", home, "generate", "--events", "3000", "--tenants", "2"]) == 0
    assert main(["--home", home, "ingest"]) == 0
    out = capsys.readouterr().out
    assert "6 batch(es): 6 done, 0 quarantined" in out
    assert main(["--home", home, "status"]) == 0
    assert re.search(r"^events\s+events\s+\d+\s+3000\s*$", capsys.readouterr().out, re.M)
    assert main(["--home", home, "query", "SELECT count(*) AS n FROM events"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].strip() == "3000"


def test_query_cannot_read_the_pii_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "lake"
    main(["--home", str(home), "generate", "--events", "500", "--tenants", "1"])
    main(["--home", str(home), "ingest"])
    capsys.readouterr()
    pii = next((home / "zones" / "pii").rglob("*.parquet"))
    code = main(["--home", str(home), "query", f"SELECT * FROM read_parquet('{pii}')"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pseudozone: error: query failed" in err and "Traceback" not in err


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "query", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pseudozone: error: the event zone") and "Traceback" not in err


def _snapshot(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under the zones and landing, with its size and modification time."""
    return {str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
            for top in ("zones", "landing") for p in (home / top).rglob("*") if p.is_file()}


def _ledger(home: Path) -> list[tuple[object, ...]]:
    import sqlite3

    conn = sqlite3.connect(home / "state" / "pseudozone.db")
    try:
        return conn.execute("SELECT batch_id, status, attempts FROM batches ORDER BY batch_id").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("command", [["ingest"], ["ingest", "--workers", "2"], ["rights", "process"],
                                     ["compliance", "run"], ["keys", "check"],
                                     ["request", "erase", "--tenant", "acme", "--user", "usr_0000002"]])
def test_given_a_different_master_key_then_every_command_stops_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        command: list[str]) -> None:
    import shutil

    home = tmp_path / "lake"
    main(["--home", str(home), "generate", "--events", "600", "--tenants", "1"])
    assert main(["--home", str(home), "ingest"]) == 0
    assert main(["--home", str(home), "request", "erase", "--tenant", "acme",
                 "--user", "usr_0000001"]) == 0
    # a batch still to ingest, so that a run would have work to do
    landed = next((home / "landing" / "events").rglob("*.parquet"))
    shutil.copy(landed, landed.with_name("late-0001.parquet"))
    capsys.readouterr()
    before, ledger = _snapshot(home), _ledger(home)

    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(b"\x01" * 32).decode())
    assert main(["--home", str(home), *command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not this data root's key" in err and "Traceback" not in err
    assert _snapshot(home) == before and _ledger(home) == ledger


def test_given_the_key_file_lost_then_ingest_stops_and_no_key_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY")
    home = tmp_path / "lake"
    main(["--home", str(home), "generate", "--events", "300", "--tenants", "1"])
    assert main(["--home", str(home), "ingest"]) == 0  # the embedded default made a key file
    key_file = tmp_path / "lake.keys" / "master.key"  # the key directory, beside the root (ADR 0009)
    key_file.unlink()
    capsys.readouterr()
    assert main(["--home", str(home), "ingest"]) == 2
    assert "missing, but this data root already holds" in capsys.readouterr().err
    assert not key_file.exists()


def test_keys_init_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY")
    home = str(tmp_path / "lake")
    assert main(["--home", home, "keys", "init"]) == 0
    assert (tmp_path / "lake.keys" / "master.key").exists()
    assert not (tmp_path / "lake" / "state" / "master.key").exists()  # never inside the data root
    assert main(["--home", home, "keys", "check"]) == 0
    assert main(["--home", home, "keys", "init"]) == 2
    assert "already holds" in capsys.readouterr().err


def test_a_task_with_a_different_key_fails_before_discovering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone import tasks

    home = tmp_path / "lake"
    main(["--home", str(home), "generate", "--events", "300", "--tenants", "1"])
    assert main(["--home", str(home), "ingest"]) == 0
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(b"\x02" * 32).decode())
    # AirflowFailException where Airflow is importable (no retry), else PseudozoneError
    with pytest.raises(Exception, match="not this data root's key"):
        tasks.discover_batches(str(home))


def test_given_set_without_equals_then_the_value_is_not_echoed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "lake")
    code = main(["--home", home, "request", "rectify", "--tenant", "acme", "--user", "usr_1",
                 "--set", "email=ok@example.org", "--set", "zelda.planted@example.org"])
    err = capsys.readouterr().err
    assert code == 2 and "--set number 2 has no '='" in err
    assert "zelda.planted" not in err


def test_given_a_full_disk_then_it_is_named_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from pseudozone import report

    def full(*_args: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "lake" / "state"))

    monkeypatch.setattr(report, "status_text", full)
    assert main(["--home", str(tmp_path / "lake"), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pseudozone: error: no space left on the device: ") and err.count("\n") == 1


def test_given_a_state_database_error_then_neither_statement_nor_parameters_are_shown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from pseudozone import report

    def broken(*_args: object) -> str:
        raise OperationalError("INSERT INTO requests VALUES (?)", ("zelda.planted@example.org",),
                               sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(report, "status_text", broken)
    assert main(["--home", str(tmp_path / "lake"), "status"]) == 2
    err = capsys.readouterr().err
    assert err == "pseudozone: error: state database: database or disk is full\n"


def test_holds_are_listed_without_their_reason_lifted_and_audited(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "lake")
    main(["--home", home, "generate", "--events", "300", "--tenants", "1"])
    assert main(["--home", home, "ingest"]) == 0
    assert main(["--home", home, "hold", "add", "--tenant", "acme", "--dataset", "events", "--code",
                 "litigation", "--reason", "Zelda Plantedname v. Acme"]) == 0
    assert main(["--home", home, "hold", "add", "--tenant", "acme", "--reason", " "]) == 2
    capsys.readouterr()
    assert main(["--home", home, "hold", "list", "--json"]) == 0
    [held] = json.loads(capsys.readouterr().out)
    assert held["reason_code"] == "litigation" and held["dataset"] == "events" and held["lifted_at"] is None
    assert main(["--home", home, "hold", "lift", str(held["hold_id"]), "--code", "litigation"]) == 0
    assert main(["--home", home, "hold", "lift", str(held["hold_id"])]) == 2  # lifted already
    capsys.readouterr()
    assert main(["--home", home, "hold", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no open hold left
    assert main(["--home", home, "hold", "list", "--all"]) == 0
    listing = capsys.readouterr().out
    assert "litigation" in listing and "Plantedname" not in listing
    assert main(["--home", home, "audit", "show", "--action", "hold.*", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in shown] == ["hold.added", "hold.lifted"]
    assert "Plantedname" not in json.dumps(shown)
    assert main(["--home", home, "audit", "show", "--tenant", "acme", "--limit", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["--home", home, "audit", "verify"]) == 0


def test_keys_check_never_makes_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY")
    home = tmp_path / "mistyped"
    assert main(["--home", str(home), "keys", "check"]) == 2
    assert "no master key is configured" in capsys.readouterr().err
    assert not any(tmp_path.rglob("master.key"))
