from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pseudozone import cli
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
    (tmp_path / "landing").mkdir()  # a data root, nothing ingested yet
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
    (tmp_path / "lake" / "state").mkdir(parents=True)
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
    (tmp_path / "lake" / "state").mkdir(parents=True)
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
    home = tmp_path / "lake"
    (home / "landing").mkdir(parents=True)
    assert main(["--home", str(home), "keys", "check"]) == 2
    assert "no master key is configured" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "mistyped"), "keys", "check"]) == 2
    assert "data root" in capsys.readouterr().err
    assert not any(tmp_path.rglob("master.key")) and not (tmp_path / "mistyped").exists()


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"pseudozone {importlib.metadata.version('pseudozone')}\n"


def test_global_options_may_follow_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home, elsewhere = str(tmp_path / "lake"), str(tmp_path / "elsewhere")
    assert main(["generate", "--home", home, "--events", "200", "--tenants", "1"]) == 0
    assert (tmp_path / "lake" / "landing").is_dir()
    capsys.readouterr()
    assert main(["--home", home, "status", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["status", "--json", "--home", home, "-v"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    # given at both places, the subcommand's wins; given before only, it is kept
    assert main(["--home", elsewhere, "status", "--home", home, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["root"] == str(Path(home).resolve())
    assert main(["--home", home, "hold", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "elsewhere").exists()


def test_table_commands_print_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "lake")
    main(["--home", home, "generate", "--events", "400", "--tenants", "1"])
    assert main(["--home", home, "ingest"]) == 0
    assert main(["--home", home, "request", "erase", "--tenant", "acme", "--user", "usr_0000001"]) == 0
    capsys.readouterr()

    assert main(["--home", home, "status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    events = [z for z in shown["zones"] if z["zone"] == "events" and z["dataset"] == "events"]
    assert [z["rows"] for z in events] == [400]
    assert {b["status"] for b in shown["batches"]} == {"done"}

    sql = "SELECT event_name, count(*) AS n, min(date) AS first_day FROM events GROUP BY 1 ORDER BY 1"
    assert main(["--home", home, "query", sql, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["n"] for r in rows) == 400 and all(set(r) == {"event_name", "n", "first_day"} for r in rows)
    assert main(["--home", home, "query", sql]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(rows) + 2  # the table: header, rule, rows
    assert main(["--home", home, "query", "SELECT 1 AS a, 2 AS a", "--json"]) == 2
    assert "distinct column names" in capsys.readouterr().err

    assert main(["--home", home, "requests", "--json"]) == 0
    [filed] = json.loads(capsys.readouterr().out)
    assert filed["tenant_id"] == "acme" and filed["type"] == "erase" and filed["state"] == "accepted"
    assert "usr_0000001" not in json.dumps(filed)  # ids and states only, as the table
    assert main(["--home", home, "requests", "--state", "failed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


READ_ONLY = [["status"], ["status", "--json"], ["query", "SELECT 1"], ["report"], ["requests"],
             ["request", "status", "r-1"], ["hold", "list"], ["audit", "show"], ["audit", "verify"],
             ["keys", "check"]]


@pytest.mark.parametrize("command", READ_ONLY)
def test_a_read_only_command_on_a_missing_root_is_a_clear_error_and_makes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        command: list[str]) -> None:
    missing = tmp_path / "mistyped"
    assert main(["--home", str(missing), *command]) == 2
    assert capsys.readouterr().err == (f"pseudozone: error: data root {missing} does not exist"
                                       " (set PSEUDOZONE_HOME or --home)\n")
    monkeypatch.setenv("PSEUDOZONE_HOME", str(missing))
    assert main(command) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--home", str(tmp_path / "empty"), *command]) == 2
    assert "holds no pseudozone state" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty"]


def test_read_only_commands_make_nothing_under_a_root(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "lake"
    assert main(["--home", str(home), "generate", "--events", "100", "--tenants", "1"]) == 0
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for command in (["status"], ["requests", "--json"], ["hold", "list"], ["audit", "show", "--json"]):
        assert main(["--home", str(home), *command]) == 0, command
    assert main(["--home", str(home), "request", "status", "r-1"]) == 2
    assert "no request 'r-1'" in capsys.readouterr().err
    assert main(["--home", str(home), "keys", "check"]) == 2
    assert "no state database" in capsys.readouterr().err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not (home / "state").exists()


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("pseudozone",)
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                assert helps.get(name), f"{' '.join(path)} {name}: subcommand without help"
                yield from _parsers(child, (*path, name))


def test_every_subcommand_and_option_has_help_with_its_default() -> None:
    walked = list(_parsers(cli.build_parser()))
    assert len(walked) > 30
    for name, parser in walked:
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{label}: no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in text, f"{label}: default not shown"
        assert "--home" in text and "--verbose" in text, f"{name}: no global options"


def test_ingest_shows_progress_on_a_terminal_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    home = str(tmp_path / "lake")
    main(["--home", home, "generate", "--events", "300", "--tenants", "1"])
    capsys.readouterr()
    monkeypatch.setattr(cli, "_stderr_is_tty", lambda: True)
    assert main(["--home", home, "ingest"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 3 and all(re.match(r"pseudozone ingest: batch \d/3 done \(", ln) for ln in lines)
    assert lines[-1].startswith("pseudozone ingest: batch 3/3 done")
    assert "3 batch(es): 3 done" in captured.out
    monkeypatch.setattr(cli, "_stderr_is_tty", lambda: False)  # a pipe or a log: no progress
    other = str(tmp_path / "other")
    main(["--home", other, "generate", "--events", "300", "--tenants", "1"])
    assert main(["--home", other, "ingest"]) == 0
    captured = capsys.readouterr()
    assert "3 batch(es): 3 done" in captured.out and captured.err == ""


def test_generated_data_ends_yesterday_unless_a_start_pins_it(tmp_path: Path) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def days_of(home: Path) -> tuple[dt.date, dt.date]:
        table = pa.concat_tables([pq.read_table(p, columns=["event_ts"])
                                  for p in sorted((home / "landing" / "events").rglob("*.parquet"))])
        bounds = pc.min_max(pc.cast(table["event_ts"], pa.date32())).as_py()
        return bounds["min"], bounds["max"]

    today = dt.datetime.now(dt.UTC).date()
    assert main(["--home", str(tmp_path / "now"), "generate", "--events", "300", "--tenants", "1"]) == 0
    first, last = days_of(tmp_path / "now")
    assert first >= today - dt.timedelta(days=7) and last < today
    assert main(["--home", str(tmp_path / "pinned"), "generate", "--events", "300", "--tenants", "1",
                 "--start", "2026-11-01", "--days", "2"]) == 0
    assert days_of(tmp_path / "pinned") >= (dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    assert days_of(tmp_path / "pinned")[1] <= dt.date(2026, 11, 2)
