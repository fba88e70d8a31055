from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest

from pseudozone import contracts
from pseudozone.config import Settings
from pseudozone.errors import ContractViolation
from pseudozone.landing import BatchRef, conform, discover, fingerprint, read_batch

LOGS = contracts.load("server_logs")
PLANTED = "zelda.planted@example.org"


def _logs(**overrides: list[object]) -> pa.Table:
    base: dict[str, list[object]] = {
        "tenant_id": ["acme", "acme"], "user_id": ["u1", "  "],
        "request_ts": ["2026-11-01T10:00:00Z", "2026-11-01 11:00:00"], "ip": ["203.0.113.9", None],
        "method": ["GET", "POST"], "path": ["/", "/x"], "status": ["200", " 404 "],
        "bytes_sent": ["10", "20"], "user_agent": ["curl", "curl"], "request_id": ["req_1", "req_2"],
    }
    base.update(overrides)
    return pa.table(base)


def test_conform_types_and_normalizes_messy_text_input() -> None:
    table = conform(_logs(), LOGS, "acme")
    assert table.column_names == LOGS.names
    assert table["status"].to_pylist() == [200, 404]
    assert table["user_id"].to_pylist() == ["u1", None]  # blank identifier → null
    assert table["request_ts"].to_pylist() == [
        dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 11, tzinfo=dt.UTC)]


def test_given_unknown_column_then_batch_is_rejected_by_position_never_by_name() -> None:
    with pytest.raises(ContractViolation) as err:
        conform(_logs(ssn=["1", "2"]), LOGS, "acme")
    assert err.value.code == "unknown_columns" and err.value.columns == []
    reason = err.value.to_reason()
    assert reason["count"] == 1 and reason["positions"] == [len(LOGS.names)]
    assert "ssn" not in json.dumps(reason) and "ssn" not in str(err.value)


def test_given_keys_that_look_like_data_then_no_key_is_echoed() -> None:
    keys: dict[str, list[object]] = {PLANTED: ["a", "b"], "4539148803436467": ["c", "d"]}
    table = _logs(**keys)
    with pytest.raises(ContractViolation) as err:
        conform(table, LOGS, "acme", fmt="jsonl")
    reason = err.value.to_reason()
    assert reason["code"] == "unknown_columns" and reason["count"] == 2
    assert reason["positions"] == [len(LOGS.names), len(LOGS.names) + 1]
    text = json.dumps(reason) + str(err.value)
    assert "zelda" not in text and "4539" not in text


def test_given_a_csv_without_header_then_missing_header_names_no_cell() -> None:
    # the first data row became the names
    row = ["acme", "usr_planted_0001", "2026-11-01T10:00:00Z", "198.51.100.77", "GET", PLANTED,
           "200", "4711", "curl", "req_1"]
    table = pa.table({name: ["x"] for name in row})
    with pytest.raises(ContractViolation) as err:
        conform(table, LOGS, "acme", fmt="csv")
    reason = err.value.to_reason()
    assert reason["code"] == "missing_header" and reason["count"] == 10
    assert reason["positions"] == list(range(10)) and reason["columns"] == []
    text = json.dumps(reason) + str(err.value)
    assert not [cell for cell in row if cell in text]


def test_given_a_duplicated_column_then_duplicate_columns_by_position() -> None:
    base = _logs()
    names = [*base.column_names, "status", PLANTED, PLANTED]
    table = pa.Table.from_arrays([*base.columns, base["status"], base["path"], base["path"]], names=names)
    with pytest.raises(ContractViolation) as err:
        conform(table, LOGS, "acme", fmt="csv")
    reason = err.value.to_reason()
    n = len(base.column_names)
    assert reason["code"] == "duplicate_columns" and reason["count"] == 2
    assert reason["positions"] == [names.index("status"), n, n + 1, n + 2]
    assert reason["columns"] == ["status"]  # a contract name may be named; the other may be data
    assert "zelda" not in json.dumps(reason) + str(err.value)


def test_given_missing_column_then_batch_is_rejected_naming_it() -> None:
    with pytest.raises(ContractViolation) as err:
        conform(_logs().drop_columns(["request_id"]), LOGS, "acme")
    assert err.value.code == "missing_columns" and err.value.columns == ["request_id"]


def test_given_wrong_type_then_error_names_column_but_never_the_value() -> None:
    with pytest.raises(ContractViolation) as err:
        conform(_logs(status=["200", "zelda@example.org"]), LOGS, "acme")
    assert err.value.code == "wrong_type" and err.value.columns == ["status"]
    assert "zelda" not in str(err.value) and "zelda" not in str(err.value.to_reason())
    assert err.value.__context__ is None  # the pyarrow message (which quotes the value) is dropped


def test_given_null_in_required_column_then_batch_is_rejected() -> None:
    with pytest.raises(ContractViolation) as err:
        conform(_logs(request_id=["req_1", None]), LOGS, "acme")
    assert err.value.code == "null_values" and err.value.rows == 1


def test_given_rows_of_another_tenant_then_batch_is_rejected() -> None:
    with pytest.raises(ContractViolation) as err:
        conform(_logs(tenant_id=["acme", "globex"]), LOGS, "acme")
    assert err.value.code == "tenant_mismatch" and err.value.rows == 1


def test_given_nested_json_where_text_is_expected_then_wrong_type() -> None:
    nested = _logs(path=[{"a": 1}, {"a": 2}])
    with pytest.raises(ContractViolation, match="wrong_type"):
        conform(nested, LOGS, "acme")


def test_discover_skips_in_flight_files_and_finished_batches(settings: Settings) -> None:
    tenant_dir = settings.landing / "events" / "tenant=acme"
    tenant_dir.mkdir(parents=True)
    for name in ("b-1.parquet", "b-2.csv", ".uploading.parquet", "_tmp.csv"):
        (tenant_dir / name).write_text("x")
    b1 = tenant_dir / "b-1.parquet"
    refs = discover(settings, done={"events.acme.b-1": fingerprint(b1)})
    assert [r.batch_id for r in refs] == ["events.acme.b-2"]
    assert refs[0].path == str(Path("events/tenant=acme/b-2.csv"))
    b1.write_text("changed")  # a done batch whose file changed is listed again
    assert [r.batch_id for r in discover(settings, done={"events.acme.b-1": (1, 1)})] == [
        "events.acme.b-1", "events.acme.b-2"]


def test_discover_lists_a_linked_file_and_skips_a_linked_folder(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.parquet").write_text("x")
    tenant_dir = settings.landing / "events" / "tenant=acme"
    tenant_dir.mkdir(parents=True)
    (tenant_dir / "link-1.parquet").symlink_to(outside / "x.parquet")
    (settings.landing / "events" / "tenant=globex").symlink_to(outside, target_is_directory=True)
    (settings.landing / "clicks").symlink_to(outside, target_is_directory=True)
    refs = discover(settings)
    assert [r.batch_id for r in refs] == ["events.acme.link-1"]
    assert "landing folder clicks is a symbolic link" in caplog.text
    assert f"landing folder {Path('events/tenant=globex')} is a symbolic link" in caplog.text
    with pytest.raises(ContractViolation) as err:
        read_batch(settings, refs[0])
    assert err.value.code == "symlink"


@pytest.mark.parametrize(("folder", "name", "code"), [
    ("things/tenant=acme", "x.parquet", "unknown_dataset"),
    ("events/acme", "x.parquet", "bad_tenant_folder"),
    ("events/tenant=acme", "x.xlsx", "unsupported_format"),
    ("events/tenant=acme", "x.parquet", "unreadable"),
])
def test_bad_landing_files_are_reported_with_a_code(settings: Settings, folder: str, name: str,
                                                    code: str) -> None:
    path = settings.landing / folder / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not really a file of that type \x00\xff")
    ref = BatchRef(batch_id="b", dataset=folder.split("/")[0], tenant_id="acme",
                   path=str(Path(folder) / name))
    with pytest.raises(ContractViolation) as err:
        read_batch(settings, ref)
    assert err.value.code == code
