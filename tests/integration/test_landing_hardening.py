"""Landing that cannot be tricked (issue 12): header lines, duplicate names, data as keys,
symlinks, poison batches.

Each case plants recognizable fake PII where a name or a path would be, and hunts for it
in the reason files, the log records and the results (what goes to XCom).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import contracts, ingest, landing, state, tasks
from pseudozone.config import Settings
from pseudozone.errors import ConfigError, PseudozoneError
from tests import planted

PLANTED = "zelda.planted@example.org"
NEEDLES = [PLANTED, *planted.NEEDLES]


@pytest.fixture
def landed(settings: Settings, master_key_env: None, caplog: pytest.LogCaptureFixture) -> Settings:
    """A landing zone with the planted batch of each dataset (all of them ingestible)."""
    caplog.set_level(logging.DEBUG)
    planted.plant(settings.landing)
    return settings


def _tenant_dir(settings: Settings, dataset: str, tenant: str = planted.TENANT) -> Path:
    path = settings.landing / dataset / f"tenant={tenant}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _profile_rows() -> list[list[str]]:
    row = planted.profiles().to_pylist()[0]
    return [["" if v is None else str(v) for v in row.values()],
            [planted.TENANT, "usr_planted_0002", PLANTED, "Zelda Second", "+44 20 7946 0998", planted.STREET,
             planted.CITY, "10115", "DE", "1991-01-01", "2026-11-03T09:30:00Z", "false", "{}"]]


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _reason_texts(settings: Settings) -> str:
    return "\n".join(p.read_text() for p in sorted(settings.quarantine.rglob("*.reason.json")))


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


def _assert_nothing_leaked(settings: Settings, caplog: pytest.LogCaptureFixture, *results: Any) -> None:
    texts = {"reason files": _reason_texts(settings), "log records": _log_text(caplog),
             "results": json.dumps([r if isinstance(r, dict) else r.to_dict() for r in results], default=str)}
    for where, text in texts.items():
        assert planted.find_needles(text, NEEDLES) == [], where


def _by_id(results: list[ingest.BatchResult]) -> dict[str, ingest.BatchResult]:
    return {r.batch_id: r for r in results}


def test_headerless_csv_is_quarantined_and_no_cell_of_its_row_is_echoed(
        landed: Settings, caplog: pytest.LogCaptureFixture) -> None:
    source = _tenant_dir(landed, "profiles") / "noheader-0001.csv"
    source.write_text(_csv(_profile_rows()))

    results = _by_id(ingest.ingest_pending(landed))

    bad = results["profiles.acme.noheader-0001"]
    assert bad.status == "quarantined" and bad.reason is not None
    assert bad.reason["code"] == "missing_header"
    assert bad.reason["count"] == 13 and bad.reason["positions"] == list(range(13))
    assert bad.reason["columns"] == []
    assert sum(r.status == "done" for r in results.values()) == 3
    assert "profiles.acme.noheader-0001 quarantined (missing_header)" in caplog.text
    summary = tasks.summarize_ingest([r.to_dict() for r in results.values()])
    _assert_nothing_leaked(landed, caplog, *results.values(), summary)
    # the file itself is kept, whole, for a human
    moved = landed.quarantine / "profiles" / "tenant_id=acme" / "noheader-0001.csv"
    assert PLANTED in moved.read_text()


def test_the_task_result_of_a_headerless_csv_names_no_cell(
        landed: Settings, caplog: pytest.LogCaptureFixture) -> None:
    source = _tenant_dir(landed, "profiles") / "noheader-0002.csv"
    source.write_text(_csv(_profile_rows()))
    batch = next(r for r in ingest.pending(landed) if r.batch_id == "profiles.acme.noheader-0002")

    xcom = tasks.pseudonymize_batch(batch.to_dict(), home=str(landed.root))

    assert xcom["status"] == "quarantined" and xcom["reason"]["code"] == "missing_header"
    _assert_nothing_leaked(landed, caplog, xcom)


def test_a_header_cell_that_is_data_is_counted_never_named(
        landed: Settings, caplog: pytest.LogCaptureFixture) -> None:
    names = contracts.load("profiles").names
    source = _tenant_dir(landed, "profiles") / "extra-0001.csv"
    rows = _profile_rows()
    source.write_text(_csv([[*names, PLANTED], [*rows[0], "x"], [*rows[1], "y"]]))

    [bad] = [r for r in ingest.ingest_pending(landed) if r.batch_id == "profiles.acme.extra-0001"]

    assert bad.reason is not None and bad.reason["code"] == "unknown_columns"
    assert bad.reason["count"] == 1 and bad.reason["positions"] == [len(names)]
    _assert_nothing_leaked(landed, caplog, bad)


def test_json_keys_that_look_like_data_are_quarantined_without_echo(
        landed: Settings, caplog: pytest.LogCaptureFixture) -> None:
    record = planted.server_logs().slice(0, 1).to_pylist()[0]
    record["request_ts"] = "2026-11-03T09:30:00Z"
    record.update({PLANTED: "a", "+44 20 7946 0999": "b", "4539148803436467": 1})
    (_tenant_dir(landed, "server_logs") / "keys-0001.jsonl").write_text(json.dumps(record) + "\n")

    [bad] = [r for r in ingest.ingest_pending(landed) if r.batch_id == "server_logs.acme.keys-0001"]

    assert bad.status == "quarantined" and bad.reason is not None
    assert bad.reason["code"] == "unknown_columns" and bad.reason["count"] == 3
    _assert_nothing_leaked(landed, caplog, bad)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_a_duplicated_column_name_is_quarantined_and_the_queue_moves_on(
        landed: Settings, caplog: pytest.LogCaptureFixture, fmt: str) -> None:
    names = contracts.load("profiles").names
    rows = _profile_rows()
    source = _tenant_dir(landed, "profiles") / f"dup-0001.{fmt}"
    if fmt == "csv":
        source.write_text(_csv([[*names, "email"], [*rows[0], PLANTED], [*rows[1], PLANTED]]))
    elif fmt == "parquet":
        table = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
        table = pa.Table.from_arrays([*table.columns, table["email"]], names=[*names, "email"])
        pq.write_table(table, source)
    else:
        text = json.dumps(dict(zip(names, rows[0], strict=True)))
        source.write_text(text[:-1] + f', "email": "{PLANTED}"}}\n')

    results = _by_id(ingest.ingest_pending(landed))  # no KeyError: quarantined at once
    bad = results["profiles.acme.dup-0001"]

    assert bad.status == "quarantined" and bad.reason is not None
    assert bad.reason["code"] == "duplicate_columns"
    assert bad.reason["count"] == 1
    if fmt != "jsonl":
        assert bad.reason["positions"] == [names.index("email"), len(names)]
    assert [r.status for r in results.values()].count("done") == 3
    _assert_nothing_leaked(landed, caplog, *results.values())


def _outside_batch(tmp_path: Path) -> Path:
    """A valid events batch outside the data root, full of planted PII."""
    outside = tmp_path / "outside" / "secret-0001.parquet"
    outside.parent.mkdir(parents=True)
    pq.write_table(planted.events(), outside)
    return outside


def _nothing_of(settings: Settings, stem: str) -> None:
    assert not [p for p in settings.zones.rglob(f"*{stem}*") if "quarantine" not in p.parts]


def test_a_symlinked_file_is_quarantined_and_never_read(
        landed: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    outside = _outside_batch(tmp_path)
    before = outside.read_bytes()
    tenant_dir = _tenant_dir(landed, "events")
    (tenant_dir / "secret-0001.parquet").symlink_to(outside)
    (tenant_dir / "inside-0001.parquet").symlink_to(tenant_dir / "planted-0000.parquet")
    (tenant_dir / "dangling-0001.parquet").symlink_to(tmp_path / "nowhere.parquet")
    results = _by_id(ingest.ingest_pending(landed))

    for stem in ("secret-0001", "inside-0001", "dangling-0001"):
        res = results[f"events.acme.{stem}"]
        assert res.status == "quarantined" and res.reason is not None and res.reason["code"] == "symlink"
        assert not (tenant_dir / f"{stem}.parquet").is_symlink()  # the link was moved, as a link
        moved = landed.quarantine / "events" / "tenant_id=acme" / f"{stem}.parquet"
        assert moved.is_symlink()
        _nothing_of(landed, stem)
    assert results["events.acme.planted-0000"].status == "done"
    assert outside.read_bytes() == before
    with state.connect(landed) as conn:  # not even hashed: the ledger holds no digest of its bytes
        digest = conn.execute("SELECT sha256 FROM batches WHERE batch_id = 'events.acme.secret-0001'"
                              ).fetchone()[0]
    assert digest != hashlib.sha256(before).hexdigest()
    _assert_nothing_leaked(landed, caplog, *results.values())


@pytest.mark.parametrize("level", ["tenant", "dataset"])
def test_a_symlinked_folder_is_skipped_with_a_warning_and_never_read(
        landed: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path, level: str) -> None:
    outside = _outside_batch(tmp_path)
    if level == "tenant":
        link = landed.landing / "events" / "tenant=globex"
        link.symlink_to(outside.parent, target_is_directory=True)
        pq.write_table(planted.events().set_column(0, "tenant_id", pa.array(["globex"] * 10)),
                       outside.with_name("globex-0001.parquet"))
    else:
        (outside.parent / f"tenant={planted.TENANT}").mkdir()
        pq.write_table(planted.events(), outside.parent / f"tenant={planted.TENANT}" / "deep-0001.parquet")
        link = landed.landing / "clicks"
        link.symlink_to(outside.parent, target_is_directory=True)
    before = {p: p.read_bytes() for p in outside.parent.rglob("*") if p.is_file()}

    refs = ingest.pending(landed)
    results = ingest.ingest_pending(landed)

    assert not [r for r in refs if r.batch_id.startswith(("events.globex", "clicks."))]
    assert {r.status for r in results} == {"done"} and len(results) == 3
    assert f"landing folder {link.relative_to(landed.landing)} is a symbolic link" in caplog.text
    assert {p: p.read_bytes() for p in outside.parent.rglob("*") if p.is_file()} == before
    assert link.is_symlink()  # reported and left alone
    for stem in ("globex-0001", "deep-0001", "secret-0001"):
        _nothing_of(landed, stem)
    assert not list(landed.quarantine.rglob("*.reason.json"))


def test_a_batch_reference_under_a_symlinked_folder_is_refused(
        landed: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    # a reference made before the folder was swapped for a link (a stale XCom, say)
    outside = _outside_batch(tmp_path)
    (landed.landing / "events" / "tenant=globex").symlink_to(outside.parent, target_is_directory=True)
    pq.write_table(planted.events().set_column(0, "tenant_id", pa.array(["globex"] * 10)),
                   outside.with_name("globex-0001.parquet"))
    ref = {"batch_id": "events.globex.globex-0001", "dataset": "events", "tenant_id": "globex",
           "path": "events/tenant=globex/globex-0001.parquet"}

    result = tasks.pseudonymize_batch(ref, home=str(landed.root))

    assert result["status"] == "quarantined" and result["reason"]["code"] == "outside_landing"
    assert outside.with_name("globex-0001.parquet").exists()  # not ours: not moved
    _nothing_of(landed, "globex-0001")


def _poison_read(monkeypatch: pytest.MonkeyPatch, stem: str, error: type[Exception] | list[type[Exception]],
                 step: str = "read") -> None:
    """The batch ``stem`` fails with ``error`` (a message full of PII) in ``step``; the others run."""
    errors = list(error) if isinstance(error, list) else None
    target = "read_batch" if step == "read" else "_plan_batch"
    real = getattr(ingest, target)

    def failing(settings: Settings, ref: Any, *args: Any) -> Any:
        if ref.batch_id.endswith(stem):
            kind = errors.pop(0) if errors else error
            assert isinstance(kind, type)
            raise kind(f"cannot parse {PLANTED} {planted.PHONE}")
        return real(settings, ref, *args)

    monkeypatch.setattr(ingest, target, failing)


def _ledger_row(settings: Settings, batch_id: str) -> tuple[str, int, str | None]:
    with state.connect(settings) as conn:
        row = conn.execute("SELECT status, attempts, reason_code FROM batches WHERE batch_id = ?",
                           (batch_id,)).fetchone()
    return str(row[0]), int(row[1]), row[2]


@pytest.mark.parametrize("step", ["read", "transform"])
def test_a_poison_batch_is_quarantined_after_the_retries(
        landed: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        step: str) -> None:
    pq.write_table(planted.events(), _tenant_dir(landed, "events") / "poison-0001.parquet")
    _poison_read(monkeypatch, "poison-0001", RuntimeError, step)

    for attempt in (1, 2):
        with pytest.raises(PseudozoneError, match=f"failed during {step}"):
            ingest.ingest_pending(landed)
        assert _ledger_row(landed, "events.acme.poison-0001")[:2] == ("processing", attempt)
    results = _by_id(ingest.ingest_pending(landed))

    poison = results["events.acme.poison-0001"]
    assert poison.status == "quarantined" and poison.reason is not None
    assert poison.reason["code"] == "poison_batch"
    assert poison.reason["details"] == [{"step": step, "error": "RuntimeError", "attempts": 3}]
    assert _ledger_row(landed, "events.acme.poison-0001") == ("quarantined", 3, "poison_batch")
    assert (landed.quarantine / "events" / "tenant_id=acme" / "poison-0001.parquet").exists()
    assert {r.status for b, r in results.items() if b != "events.acme.poison-0001"} == {"done"}
    assert ingest.pending(landed) == []  # the queue is free
    _nothing_of(landed, "poison-0001")
    _assert_nothing_leaked(landed, caplog, *results.values())


def test_the_airflow_task_quarantines_a_poison_batch_on_its_last_retry(
        landed: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pq.write_table(planted.events(), _tenant_dir(landed, "events") / "poison-0002.parquet")
    _poison_read(monkeypatch, "poison-0002", RuntimeError)
    batch = next(r for r in ingest.pending(landed) if r.batch_id.endswith("poison-0002")).to_dict()

    for _ in range(2):  # the first try and the first retry fail the task
        with pytest.raises(PseudozoneError):
            tasks.pseudonymize_batch(batch, home=str(landed.root))
    xcom = tasks.pseudonymize_batch(batch, home=str(landed.root))

    assert xcom["status"] == "quarantined" and xcom["reason"]["code"] == "poison_batch"
    _assert_nothing_leaked(landed, caplog, xcom)


def test_a_failure_of_the_machine_is_never_poison(landed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    pq.write_table(planted.events(), _tenant_dir(landed, "events") / "disk-0001.parquet")
    _poison_read(monkeypatch, "disk-0001", OSError)  # disk full, permissions: not the batch's fault
    for _ in range(4):
        with pytest.raises(PseudozoneError):
            ingest.ingest_pending(landed)
    assert _ledger_row(landed, "events.acme.disk-0001")[:2] == ("processing", 4)


def test_a_batch_failing_differently_each_time_is_not_poison(
        landed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    pq.write_table(planted.events(), _tenant_dir(landed, "events") / "flaky-0001.parquet")
    _poison_read(monkeypatch, "flaky-0001", [RuntimeError, ValueError, RuntimeError, ValueError])
    for _ in range(4):
        with pytest.raises(PseudozoneError):
            ingest.ingest_pending(landed)
    assert _ledger_row(landed, "events.acme.flaky-0001")[:2] == ("processing", 1)


def test_a_corrected_delivery_of_a_poison_batch_starts_its_count_again(
        landed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    read_batch = ingest.read_batch
    source = _tenant_dir(landed, "events") / "poison-0003.parquet"
    pq.write_table(planted.events(), source)
    _poison_read(monkeypatch, "poison-0003", RuntimeError)
    for _ in range(2):
        with pytest.raises(PseudozoneError):
            ingest.ingest_pending(landed)
    assert _by_id(ingest.ingest_pending(landed))["events.acme.poison-0003"].status == "quarantined"
    monkeypatch.setattr(ingest, "read_batch", read_batch)

    pq.write_table(planted.events("evt_fixed").slice(0, 5), source)  # (planted ids are published)
    [again] = ingest.ingest_pending(landed)

    assert again.status == "done" and again.rows_event == 5
    assert _ledger_row(landed, "events.acme.poison-0003") == ("done", 1, None)


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look unchanged for ``seconds`` (its mtime; its ctime is now, so the settle
    check is driven through the clock below)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_a_file_still_being_written_is_not_pending_until_it_settles(
        landed: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landing.SETTLE_ENV, "60")
    names = contracts.load("profiles").names
    rows = _profile_rows()
    source = _tenant_dir(landed, "profiles") / "upload-0001.csv"
    full = _csv([names, *rows])
    source.write_text(full[: len(full) // 2])  # half uploaded: the second row is cut

    results = _by_id(ingest.ingest_pending(landed))
    assert "profiles.acme.upload-0001" not in results and source.exists()

    source.write_text(full)  # the upload finishes
    clock = time.time_ns()
    monkeypatch.setattr(landing.time, "time_ns", lambda: clock + 61 * 10**9)
    done = _by_id(ingest.ingest_pending(landed))["profiles.acme.upload-0001"]

    assert done.status == "done" and done.rows_in == 2
    assert not list(landed.quarantine.rglob("*upload-0001*"))


def test_a_success_marker_lands_the_files_it_covers_at_once(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landing.SETTLE_ENV, "3600")
    tenant_dir = _tenant_dir(settings, "events")
    for name in ("a-0001.parquet", "b-0001.parquet"):
        pq.write_table(planted.events(), tenant_dir / name)
    assert landing.discover(settings) == []  # not settled, no marker

    (tenant_dir / "_SUCCESS").touch()
    _age(tenant_dir / "a-0001.parquet", 20)
    _age(tenant_dir / "b-0001.parquet", 20)
    assert [r.batch_id for r in landing.discover(settings)] == ["events.acme.a-0001", "events.acme.b-0001"]

    # a file written after the marker waits for the next marker, whatever its age
    pq.write_table(planted.events(), tenant_dir / "c-0001.parquet")
    _age(tenant_dir / "_SUCCESS", 10)
    assert [r.batch_id for r in landing.discover(settings, settle=0)] == [
        "events.acme.a-0001", "events.acme.b-0001"]
    (tenant_dir / "_SUCCESS").touch()
    assert len(landing.discover(settings)) == 3


def test_the_settle_time_must_be_a_number(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(landing.SETTLE_ENV, "soon")
    with pytest.raises(ConfigError, match=landing.SETTLE_ENV):
        landing.discover(settings)
