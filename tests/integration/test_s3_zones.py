"""Zones on object storage: the same lake on a real S3 API (moto's server on loopback).

``PSEUDOZONE_ZONES=s3://bucket/prefix`` puts every zone (and the subject index) in a bucket
while landing and reports stay under the local data root.  Each test runs the pipeline on
S3 zones with PostgreSQL as the state database (tests/pg_server.py) and, where it can,
beside a lake with local zones and SQLite state fed the same landing files: the two must
hold the same files, under the same names, with the same rows (zone file names are
deterministic, ADR 0001).
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from upath import UPath

from pseudozone import contracts, ingest, query, state, zones
from pseudozone.config import Settings, SettingsError
from pseudozone.keys import KeyRing
from pseudozone.lake import compact, layout
from pseudozone.rights import export, process, requests
from pseudozone.sample import generate
from tests import planted
from tests.conftest import TEST_MASTER_KEY
from tests.pg_server import Postgres
from tests.s3_server import client

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh bucket on the S3 server and the standard AWS settings that reach it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"pz-{uuid.uuid4().hex[:12]}"
    client("s3", s3_endpoint).create_bucket(Bucket=bucket)
    yield bucket


def _lake(root: Path, zones_url: str | None, state_db_url: str | None = None) -> Settings:
    settings = dataclasses.replace(Settings.from_env(root, zones=zones_url), state_db_url=state_db_url)
    settings.ensure()
    generate(settings, events=3000, tenants=2, seed=11, batch_rows=1500)
    planted.plant(settings.landing)
    # a batch the contract refuses, naming the planted subject: quarantined, and later erased
    bad = settings.landing / "events" / f"tenant={planted.TENANT}" / "broken-0001.csv"
    header = ",".join(contracts.load("events").names)
    bad.write_text(f"{header},extra\n{planted.TENANT},{planted.USER}," + ",".join(["x"] * 9)
                   + f",{planted.EMAIL}\n")
    return settings


@pytest.fixture
def twin(tmp_path: Path, s3_env: str, master_key_env: None, postgres: Postgres) -> tuple[Settings, Settings]:
    """(lake with S3 zones and its state on PostgreSQL, lake with local zones and SQLite state)
    with the same landing files."""
    remote = _lake(tmp_path / "s3", f"s3://{s3_env}/pz/zones", postgres.create_database())
    local = _lake(tmp_path / "local", None)
    assert state.engine(remote).dialect.name == "postgresql" and not remote.state_db.exists()
    return remote, local


def _content(settings: Settings) -> dict[str, list[Any]]:
    """Every zone file (by its path under the zones root) with its rows, sorted; PII-zone rows
    by subject only (their values are encrypted under random nonces and data keys)."""
    out: dict[str, list[Any]] = {}
    for zone in layout.ZONES:
        root = layout.zone_root(settings, zone)
        for f in zones.parquet_files(root):
            rows = zones.read_table(f, columns=["subject_id"] if zone == layout.PII else None).to_pylist()
            out[layout.relative(f, settings.zones)] = sorted((sorted(r.items()) for r in rows), key=repr)
    return out


def _index(settings: Settings) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for tenant in ("acme", "globex", planted.TENANT):
        for dataset, batch, f in layout.index_files(settings, tenant):
            out[f"{dataset}/{tenant}/{batch}"] = sorted(zones.read_table(f).to_pylist(), key=repr)
    return out


def _objects(bucket_url: str) -> list[str]:
    root = UPath(bucket_url, use_listings_cache=False)
    return [layout.relative(p, root) for p in zones.parquet_files(root)]


def test_a_url_as_data_root_is_a_clear_error_not_a_local_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match="PSEUDOZONE_HOME must be a local directory"):
        Settings.from_env("s3://bucket/pz")
    assert not (tmp_path / "s3:").exists()


def test_ingest_on_s3_zones_writes_what_local_zones_hold(twin: tuple[Settings, Settings],
                                                        s3_env: str) -> None:
    remote, local = twin
    got_remote = ingest.ingest_pending(remote, keyring=KR)
    got_local = ingest.ingest_pending(local, keyring=KR)
    assert [(r.batch_id, r.status) for r in got_remote] == [(r.batch_id, r.status) for r in got_local]
    assert {r.status for r in got_remote} == {"done", "quarantined"}  # the broken batch is refused
    content = _content(remote)
    assert content and content == _content(local)
    assert _index(remote) == _index(local)
    # nothing of the zones on the local disk: only state, landing and staging are there
    assert not (remote.root / "zones").exists()
    assert not [p for p in (remote.root / "staging").rglob("*") if p.is_file()]
    objects = _objects(f"s3://{s3_env}/pz/zones")
    assert any(o.startswith("events/") for o in objects) and any(o.startswith("pii/") for o in objects)
    # the quarantined batch and its reason are in the bucket, beside the zones
    quarantined = list(layout.quarantined_files(remote))
    assert quarantined and all(zones.is_remote(p) for _, _, p in quarantined)
    assert all(layout.reason_file(p).exists() for _, _, p in quarantined)
    # a rerun finds nothing pending (the ledger is local, the lake remote)
    assert ingest.ingest_pending(remote, keyring=KR) == []


def test_analyst_queries_read_s3_zones_like_local_ones(twin: tuple[Settings, Settings]) -> None:
    remote, local = twin
    ingest.ingest_pending(remote, keyring=KR)
    ingest.ingest_pending(local, keyring=KR)
    sql = ("SELECT tenant_id, date, count(*) AS n, count(DISTINCT subject_id) AS s FROM events "
           "GROUP BY ALL ORDER BY ALL")
    assert query.datasets(remote) == query.datasets(local)
    assert query.run(remote, sql) == query.run(local, sql)
    month = "SELECT count(*) FROM events WHERE date >= DATE '2026-01-01' AND tenant_id = 'acme'"
    assert query.run(remote, month) == query.run(local, month)
    # the connection still reads no file itself: a PII-zone path is refused
    with pytest.raises(Exception, match=r"(?i)permission|disabled|not allowed"):
        query.run(remote, f"SELECT * FROM read_parquet('{remote.pii_zone}/**/*.parquet')")


def test_every_rights_request_applies_to_s3_zones(twin: tuple[Settings, Settings]) -> None:
    remote, local = twin
    outcomes: dict[str, list[Any]] = {}
    for settings in (remote, local):
        ingest.ingest_pending(settings, keyring=KR)
        filed = [requests.submit(settings, {"type": kind, "tenant_id": planted.TENANT,
                                            "user_id": user, **extra}, source="test", keyring=KR)
                 for kind, user, extra in (
                     ("export", planted.USER, {}),
                     ("restrict", "usr_0000003", {}),
                     ("rectify", "usr_0000004", {"fields": {"email": "new.address@example.org"}}),
                     ("erase", "usr_0000005", {}),
                     ("erase", "usr_nobody_at_all", {}),
                 )]
        process.process_all(settings, "run-1", keyring=KR)
        done = [requests.get_status(settings, s.request_id) for s in filed]
        assert [d.state for d in done] == ["completed"] * len(done), [d.outcome for d in done]
        outcomes[str(settings.root)] = [(d.type, d.outcome.get("result")) for d in done]
        unrestrict = requests.submit(settings, {"type": "unrestrict", "tenant_id": planted.TENANT,
                                                "user_id": "usr_0000003"}, source="test", keyring=KR)
        process.process_all(settings, "run-2", keyring=KR)
        assert requests.get_status(settings, unrestrict.request_id).state == "completed"
    assert outcomes[str(remote.root)] == outcomes[str(local.root)]
    assert _content(remote) == _content(local)
    assert _index(remote) == _index(local)
    erased = KR.subject_id(planted.TENANT, "usr_0000005")
    for zone in layout.ZONES:
        for f in zones.parquet_files(layout.zone_root(remote, zone)):
            col = zones.read_table(f, columns=["subject_id"])["subject_id"]
            assert not pc.any(pc.fill_null(pc.equal(col, erased), False)).as_py(), f
    # the export archive is an object in the bucket, readable with its key
    export_request = next(r for r in requests.list_requests(remote, tenant_id=planted.TENANT)
                          if r.type == "export")
    archive = layout.export_file(remote, planted.TENANT, export_request.request_id)
    assert zones.is_remote(archive) and archive.is_file()
    with zipfile.ZipFile(io.BytesIO(export.open_archive(remote, export_request.request_id, keyring=KR))) as z:
        assert [p["email"] for p in json.loads(z.read("profile.json"))] == [planted.EMAIL]


def test_the_nightly_run_passes_on_s3_zones(twin: tuple[Settings, Settings]) -> None:
    from pseudozone.compliance import report

    remote, _ = twin
    ingest.ingest_pending(remote, keyring=KR)
    requests.submit(remote, {"type": "erase", "tenant_id": planted.TENANT, "user_id": planted.USER},
                    source="test", keyring=KR)
    process.process_all(remote, "run-1", keyring=KR)
    written = report.run_nightly(remote, "nightly-s3")
    assert written["status"] == "pass", written["summary"]
    latest = report.latest(remote)
    assert latest is not None and latest["audit"]["ok"]
    checked = {(z["zone"], z["dataset"]) for z in latest["validation"]["zones"]}
    assert {("events", "events"), ("pii", "profiles")} <= checked
    assert latest["validation"]["rows"] > 3000
    text = "\n".join(p.read_text("utf-8", "replace") for p in report.run_dir(remote, "nightly-s3").rglob("*")
                     if p.is_file())
    for value in (planted.EMAIL, planted.NAME, planted.USER):
        assert value not in text
    # the erasure reached the quarantined batch in the bucket as well
    assert not list(layout.quarantined_files(remote, planted.TENANT))


QUERIES = [
    "SELECT tenant_id, date, event_name, count(*) AS n, count(DISTINCT subject_id) AS s FROM events "
    "GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM events WHERE tenant_id = 'acme' ORDER BY ALL",
    "SELECT tenant_id, date, count(*) FROM server_logs GROUP BY ALL ORDER BY ALL",
]


def _results(settings: Settings) -> list[Any]:
    return [query.run(settings, q) for q in QUERIES]


def _no_unit_records(settings: Settings) -> bool:
    return not [k for k in settings.zones.fs.find(settings.zones.path) if f"/{zones.UNIT_PREFIX}" in k]


@pytest.fixture(scope="module")
def compacted_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A local lake of the same landing files, ingested and compacted: what S3 must equal."""
    local = _lake(tmp_path_factory.mktemp("reference"), None)
    ingest.ingest_pending(local, keyring=KR)
    before = _results(local)
    compact.compact(local, target_rows=400)
    assert _results(local) == before
    return {"results": before, "content": _content(local), "index": _index(local)}


# few units: the kill tests stay quick
KILL_SCOPE: dict[str, Any] = {"datasets": ["server_logs"], "target_rows": 400}


@pytest.fixture(scope="module")
def scoped_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """As ``compacted_reference``, compacting only ``KILL_SCOPE``."""
    local = _lake(tmp_path_factory.mktemp("scoped"), None)
    ingest.ingest_pending(local, keyring=KR)
    before = _results(local)
    compact.compact(local, **KILL_SCOPE)
    return {"results": before, "content": _content(local), "index": _index(local)}


@pytest.fixture
def s3_lake(tmp_path: Path, s3_env: str, master_key_env: None) -> Settings:
    settings = _lake(tmp_path / "s3", f"s3://{s3_env}/pz/zones")
    ingest.ingest_pending(settings, keyring=KR)
    return settings


def test_compaction_on_s3_zones_gives_the_local_result(s3_lake: Settings,
                                                       compacted_reference: dict[str, Any]) -> None:
    assert _results(s3_lake) == compacted_reference["results"]
    summary = compact.compact(s3_lake, target_rows=400)
    assert summary["partitions"] > 0 and summary["files_out"] < summary["files_in"]
    assert _content(s3_lake) == compacted_reference["content"]
    assert _index(s3_lake) == compacted_reference["index"]
    assert _results(s3_lake) == compacted_reference["results"]
    assert _no_unit_records(s3_lake)
    assert compact.compact(s3_lake, target_rows=400)["partitions"] == 0  # nothing left to do


class Killed(Exception):
    pass


# one step of each recovery branch: rolled back (before and after the outputs are written), rolled
# forward with the inputs' check, rolled forward past it (tests/integration/test_compaction.py
# kills after every step on a local disk)
@pytest.mark.parametrize("step", ["manifest", "staged", "exchanged", "unindexed"])
def test_a_compaction_killed_after_any_step_on_s3_converges(
        s3_lake: Settings, scoped_reference: dict[str, Any], step: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def kill(at: str, unit: str) -> None:
        if at == step:
            seen.append(unit)
            if len(seen) == 2:  # the second unit: one is done already
                raise Killed(at)

    monkeypatch.setattr(compact, "_after", kill)
    with pytest.raises(Killed):
        compact.compact(s3_lake, **KILL_SCOPE)
    # a reader between the kill and the rerun sees every row once
    assert _results(s3_lake) == scoped_reference["results"]
    monkeypatch.setattr(compact, "_after", lambda at, unit: None)
    summary = compact.compact(s3_lake, **KILL_SCOPE)
    assert summary["rolled_forward"] + summary["rolled_back"] == 1
    assert _content(s3_lake) == scoped_reference["content"]
    assert _index(s3_lake) == scoped_reference["index"]
    assert _no_unit_records(s3_lake)


def test_an_input_replaced_during_an_s3_compaction_rolls_the_unit_back(
        s3_lake: Settings, scoped_reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    replaced: list[str] = []

    def rewrite_an_input(at: str, unit: str) -> None:
        if at == "exchanged" and not replaced:
            [record] = [k for k in s3_lake.zones.fs.find(s3_lake.zones.path) if unit in k and "/_unit-" in k]
            m = json.loads(s3_lake.zones.fs.cat_file(record))
            part = compact.Unit(m["zone"], m["dataset"], m["tenant"], m["day"]).partition(s3_lake)
            victim = part / sorted(m["inputs"])[0]
            # a concurrent rewrite: the same rows in other bytes (the same bytes keep the ETag,
            # and an unchanged input is no conflict)
            zones.write_parquet(zones.read_table(victim), victim, compression_level=9)
            replaced.append(victim.path)

    monkeypatch.setattr(compact, "_after", rewrite_an_input)
    summary = compact.compact(s3_lake, **KILL_SCOPE)
    assert summary["conflicts"] == 1 and replaced
    assert _results(s3_lake) == scoped_reference["results"]
    assert _no_unit_records(s3_lake)
    monkeypatch.setattr(compact, "_after", lambda at, unit: None)
    assert compact.compact(s3_lake, **KILL_SCOPE)["partitions"] == 1
    assert _content(s3_lake) == scoped_reference["content"]
    assert _index(s3_lake) == scoped_reference["index"]


def test_retention_trims_a_held_partition_on_s3_as_on_a_local_disk(twin: tuple[Settings, Settings]) -> None:
    """Every events partition expires; those holding the held subject's rows are trimmed to
    them (a partition rewrite under the unit record), the others deleted."""
    import datetime as dt

    from pseudozone.compliance import nightly

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    sections = []
    for settings in twin:
        ingest.ingest_pending(settings, keyring=KR)
        requests.add_legal_hold(settings, tenant_id=planted.TENANT, user_id=planted.USER,
                                reason="case 2026-77", reason_code="litigation", keyring=KR)
        sections.append(nightly.enforce_retention(settings, now=later, overrides={"events": 1}))
    remote, local = twin
    assert sections[0]["trimmed_for_hold"] and sections[0]["deleted"]
    assert [(t["date"], t["rows_kept"]) for t in sections[0]["trimmed_for_hold"]] == \
        [(t["date"], t["rows_kept"]) for t in sections[1]["trimmed_for_hold"]]
    assert _content(remote) == _content(local)
    assert _index(remote) == _index(local)
    assert _no_unit_records(remote)
    kept = query.run(remote, "SELECT DISTINCT subject_id FROM events WHERE tenant_id = 'acme'")[1]
    assert kept == [(SUBJECT,)]


def test_pseudonym_rotation_on_s3_zones_gives_the_local_result(twin: tuple[Settings, Settings]) -> None:
    from pseudozone import rotation

    for settings in twin:
        ingest.ingest_pending(settings, keyring=KR)
        # a keyring of its own: a rotation makes the keyring it is given use the new version
        summary = rotation.rotate(settings, planted.TENANT, keyring=KeyRing(TEST_MASTER_KEY), helpers=0)
        assert summary["partitions"] > 0
    remote, local = twin
    assert _content(remote) == _content(local)
    assert _index(remote) == _index(local)
    assert _no_unit_records(remote)
    subjects = query.run(remote, "SELECT DISTINCT split_part(subject_id, ':', 1) FROM events "
                                 "WHERE tenant_id = 'acme' AND subject_id IS NOT NULL")[1]
    assert subjects == [("v2",)]


def test_zones_credentials_can_come_from_an_airflow_connection(tmp_path: Path, s3_endpoint: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``PSEUDOZONE_ZONES_CONN_ID``: key, secret and endpoint from a connection, none from the
    environment (an endpoint nobody answers there proves which one is used)."""
    from types import SimpleNamespace

    from airflow.sdk import BaseHook

    from pseudozone import config

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"pz-{uuid.uuid4().hex[:12]}"
    client("s3", s3_endpoint).create_bucket(Bucket=bucket)
    asked: list[str] = []

    def get_connection(conn_id: str) -> SimpleNamespace:
        asked.append(conn_id)
        return SimpleNamespace(login="conn-key-id", password="conn-secret",
                               extra_dejson={"endpoint_url": s3_endpoint})

    monkeypatch.setattr(BaseHook, "get_connection", staticmethod(get_connection))
    monkeypatch.setenv(config.ZONES_CONN_ENV, "pz_zones")
    config._connection_options.cache_clear()
    try:
        settings = Settings.from_env(tmp_path / "root", zones=f"s3://{bucket}/zones")
        zones.write_bytes(b"{}", settings.quarantine / "probe.json")
        assert (settings.quarantine / "probe.json").read_bytes() == b"{}"
        assert asked == ["pz_zones"]  # read once per process, not per path

        def broken(conn_id: str) -> SimpleNamespace:
            raise RuntimeError("secret-bearing message from the hook")

        monkeypatch.setattr(BaseHook, "get_connection", staticmethod(broken))
        monkeypatch.setenv(config.ZONES_CONN_ENV, "missing_conn")
        with pytest.raises(SettingsError, match="'missing_conn'") as caught:
            _ = settings.zones
        assert "secret-bearing" not in str(caught.value)
    finally:
        config._connection_options.cache_clear()
