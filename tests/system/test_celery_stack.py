"""pseudozone on a running Airflow with Celery workers: ingest, rights requests, the nightly run
and an Asset-triggered DAG, driven only through the services (REST API, ``airflow`` and
``pseudozone`` commands), never ``dag.test()``.

The stack (``services.run_stack``): PostgreSQL, Redis, moto's S3 server, the API server with the
rights door, scheduler, DAG processor and two Celery workers (``worker-a``, ``worker-b``,
concurrency 1); every zone and the subject index in the bucket (``s3://pseudozone/lake/zones``,
with the key of the compose file's pipeline user and its policy), the whole state database on
PostgreSQL (``PSEUDOZONE_STATE_DB_URL``, as in the compose file), one local data root (landing,
staging, reports) shared by the workers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from tests import planted
from tests.system import services
from tests.system.services import ServiceError, Stack, http

INGEST, RIGHTS, NIGHTLY, WATCH = ("pseudonymize_ingested", "process_rights_requests", "nightly_compliance",
                                  "pseudozone_zone_watch")
BATCH_TASKS = ("pseudonymize_pii_batch", "pseudonymize_batch")
NEW_EMAIL = "zelda.rectified@example.net"
# acme's sample users that the requests name (usr_0000000 ... usr_0000019 with 3000 events, 3 tenants)
RESTRICTED, RECTIFIED, EXPORTED, OBJECTING = "usr_0000003", "usr_0000005", "usr_0000007", "usr_0000009"


def _run_to_success(stack: Stack, dag_id: str, timeout: float = 1200) -> tuple[str, dict[str, Any]]:
    """Trigger a run now (unpausing the DAG) and wait for it: (run id, run)."""
    run_id = stack.trigger(dag_id)
    stack.unpause(dag_id)
    run = stack.wait_run(dag_id, run_id, timeout)
    assert run["state"] == "success", stack.failure_report(dag_id, run_id)
    return run_id, run


@pytest.fixture(scope="module")
def ingested(stack: Stack) -> Iterator[dict[str, Any]]:
    """Landing data for three tenants plus the planted batch, ingested by a triggered run.

    Unpausing an hourly DAG makes the scheduler create its latest scheduled run at once; that
    run goes first on an empty landing zone, so that the triggered run finds the batches (a
    scheduled run at the turn of an hour may still take some: the checks look at every run).
    """
    stack.wait_parsed(INGEST, RIGHTS, NIGHTLY, WATCH)
    stack.unpause(WATCH)  # before anything publishes: the consumer of the event zone's Asset
    stack.unpause(INGEST)
    # the scheduler makes its catch-up run within a loop or two; wait for it, then for its end
    services.wait_for("the scheduler's run of the unpaused ingest DAG", lambda: bool(stack.dag_runs(INGEST)),
                      stack.services["scheduler"], 180, interval=1)
    stack.wait_idle(INGEST)
    before = {r["dag_run_id"] for r in stack.dag_runs(INGEST)}
    stack.pseudozone("generate", "--events", "3000", "--tenants", "3", "--batch-rows", "400")
    planted.plant(stack.data_root / "landing")
    run_id, run = _run_to_success(stack, INGEST)
    runs = [r for r in stack.wait_idle(INGEST) if r["dag_run_id"] not in before]
    working = {t["dag_run_id"] for r in runs for t in stack.task_instances(INGEST, r["dag_run_id"])
               if t["task_id"] in BATCH_TASKS and t["state"] == "success"}
    yield {"run_id": run_id, "run": run, "runs": runs, "working": working}


def test_ingest_runs_mapped_batches_on_both_workers(stack: Stack, ingested: dict[str, Any]) -> None:
    assert {r["state"] for r in ingested["runs"]} == {"success"}, ingested["runs"]
    assert ingested["working"], "no run ingested a batch"
    tis = [t for r in ingested["runs"] for t in stack.task_instances(INGEST, r["dag_run_id"])]
    batches = [t for t in tis if t["task_id"] in BATCH_TASKS and t["state"] != "skipped"]
    assert {t["state"] for t in batches} == {"success"}, stack.failure_report(INGEST, ingested["run_id"])
    # 3 tenants: profiles 3 + events 3x3 + server logs 3, and the planted batch of each dataset
    assert len(batches) == 18, sorted((t["task_id"], t["rendered_map_index"]) for t in batches)
    assert sum("planted" in (t["rendered_map_index"] or "") for t in batches) == 3
    hosts = {t["hostname"] for t in batches}
    assert hosts == set(services.WORKERS), f"mapped batches ran on {hosts}, not on both workers"
    assert {t["queue"] for t in batches} == {"default"} and {t["pool"] for t in batches} == {"pseudozone"}
    status = json.loads(stack.pseudozone("status", "--json").stdout)
    ledger = {(b["dataset"], b["status"]): b for b in status["batches"]}
    assert {k[1] for k in ledger} == {"done"}, ledger
    assert sum(b["batches"] for b in ledger.values()) == 18
    rows = {(z["zone"], z["dataset"]): z["rows"] for z in status["zones"]}
    assert rows[("events", "events")] > 2500 and rows[("pii", "profiles")] == 61, rows


def _token(stack: Stack, tenant: str) -> str:
    out = stack.pseudozone("tenant", "add", tenant).stdout
    match = re.search(rf"pz_{tenant}_[A-Za-z0-9_\-]{{16,}}", out)
    assert match, "pseudozone tenant add printed no token"
    return match.group(0)


def _door(stack: Stack, method: str, path: str, token: str | None, body: Any = None) -> services.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http(method, f"{stack.api_url}/pseudozone{path}", body=body, headers=headers)


def _wait_requests_done(stack: Stack, token: str, ids: list[str],
                        timeout: float = 600) -> dict[str, dict[str, Any]]:
    """The tenant's requests by id once none of ``ids`` is open (the list never hands out a key)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = _door(stack, "GET", "/requests", token)
        assert answer.status == 200, answer.body[:300]
        mine = {r["request_id"]: r for r in answer.json() if r["request_id"] in ids}
        if len(mine) == len(ids) and all(r["state"] in ("completed", "rejected", "failed")
                                         for r in mine.values()):
            return mine
        if time.monotonic() > deadline:
            raise ServiceError(f"requests still open after {timeout:.0f}s: "
                               f"{sorted((r['type'], r['state']) for r in mine.values())}\n"
                               + stack.logs_tail("scheduler", *services.WORKERS))
        time.sleep(2)


@pytest.fixture(scope="module")
def rights(stack: Stack, ingested: dict[str, Any]) -> dict[str, Any]:
    """Every request type filed through the REST door in the API server, applied by two triggered runs
    (unrestrict and unobject in the second, after restrict and object took effect)."""
    token = _token(stack, "acme")
    first = {
        "erase": {"type": "erase", "user_id": planted.USER},
        "restrict": {"type": "restrict", "user_id": RESTRICTED},
        "rectify": {"type": "rectify", "user_id": RECTIFIED, "fields": {"email": NEW_EMAIL}},
        "export": {"type": "export", "user_id": EXPORTED},
        "object": {"type": "object", "user_id": OBJECTING, "purpose": "marketing"},
    }
    second = {
        "unrestrict": {"type": "unrestrict", "user_id": RESTRICTED},
        "unobject": {"type": "unobject", "user_id": OBJECTING, "purpose": "marketing"},
    }
    ids: dict[str, str] = {}
    runs: list[str] = []
    for wave in (first, second):
        for kind, body in wave.items():
            answer = _door(stack, "POST", "/requests", token, body)
            assert answer.status == 202, (kind, answer.status, answer.body[:300])
            assert answer.json()["state"] == "accepted"
            ids[kind] = answer.json()["request_id"]
        run_id, _ = _run_to_success(stack, RIGHTS)
        runs.append(run_id)
        stack.wait_idle(RIGHTS)  # a scheduled run (every 15 minutes) may have taken some of them
        _wait_requests_done(stack, token, [ids[k] for k in wave])
    return {"token": token, "ids": ids, "runs": runs}


def test_every_request_type_completes_through_the_rest_door(stack: Stack, rights: dict[str, Any]) -> None:
    token, ids = rights["token"], rights["ids"]
    listed = {r["request_id"]: r for r in _door(stack, "GET", "/requests", token).json()}
    assert {listed[i]["type"] for i in ids.values()} == set(ids)
    for kind, request_id in ids.items():
        status = listed[request_id]
        assert status["state"] == "completed", (kind, status["state"], status.get("reason"))
        assert status["outcome"]["result"] == "done", (kind, status["outcome"])
        assert "subject_id" not in status
    # the door refuses without a token, and another tenant's token does not see acme's requests
    assert _door(stack, "GET", f"/requests/{ids['erase']}", None).status == 401
    other = _token(stack, "globex")
    assert _door(stack, "GET", f"/requests/{ids['erase']}", other).status == 404


def test_the_export_downloads_and_decrypts(stack: Stack, rights: dict[str, Any]) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    token, request_id = rights["token"], rights["ids"]["export"]
    status = _door(stack, "GET", f"/requests/{request_id}", token).json()  # the first look: the key
    key = base64.urlsafe_b64decode(status["outcome"]["key"])
    again = _door(stack, "GET", f"/requests/{request_id}", token).json()
    assert "key" not in again["outcome"] and again["outcome"]["key_handed_out_at"]
    download = _door(stack, "GET", status["outcome"]["download"].format(request_id=request_id), token)
    assert download.status == 200, download.status
    data = download.body
    # the API server read the archive from the bucket: the very object, and no local copy
    stored = [k for k in stack.store.keys(f"{services.ZONES_PREFIX}/exports/acme/") if request_id in k]
    assert len(stored) == 1, stored
    assert stack.store.get(stored[0]) == data
    assert not (stack.data_root / "zones").exists()
    assert not [p for p in stack.data_root.rglob("*") if request_id in p.name]
    assert data[:8] == b"PZEXPORT" and data[8] == 1
    archive = zipfile.ZipFile(io.BytesIO(AESGCM(key).decrypt(data[9:21], data[21:], request_id.encode())))
    names = archive.namelist()
    assert any(n.startswith("events") for n in names) and any("manifest" in n for n in names), names
    profile = b"".join(archive.read(n) for n in names if n.startswith("profile"))
    assert EXPORTED.encode() in profile and b"v1:" not in profile


@pytest.fixture(scope="module")
def nightly(stack: Stack, rights: dict[str, Any]) -> dict[str, Any]:
    run_id, run = _run_to_success(stack, NIGHTLY, timeout=1800)
    stack.pause(NIGHTLY)  # the scheduler's daily run, if it queued one, need not follow
    return {"run_id": run_id, "run": run}


def test_nightly_report_passes(stack: Stack, nightly: dict[str, Any]) -> None:
    from pseudozone.compliance import report
    from pseudozone.config import Settings

    settings = Settings.from_env(stack.data_root)
    tis = {t["task_id"]: t for t in stack.task_instances(NIGHTLY, nightly["run_id"])}
    assert tis["verdict"]["state"] == "success" and tis["report"]["state"] == "success"
    written = report.run_dir(settings, nightly["run_id"]) / "report.json"
    assert written.is_file(), f"no report for run {nightly['run_id']}"
    body = json.loads(written.read_text())
    assert body["status"] == "pass", body["problems"]
    assert body["audit"]["ok"] and body["audit"]["entries"] > 0
    assert body["erasures"]["verified"] >= 1 if "verified" in body["erasures"] else True
    assert body["summary"].startswith("PASS: ")


def _metadata_texts(stack: Stack) -> dict[str, str]:
    """Every table of Airflow's metadata database as text (bytes decoded, zlib payloads opened)."""
    import zlib

    import sqlalchemy

    def as_text(value: Any) -> str:
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            with_zlib = b""
            with contextlib.suppress(zlib.error):
                with_zlib = zlib.decompress(raw)
            return (raw + b"\n" + with_zlib).decode("utf-8", "replace")
        return str(value)

    engine = sqlalchemy.create_engine(stack.postgres.url("airflow"))
    texts: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            tables = conn.execute(sqlalchemy.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
            for table in tables:
                rows = conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')).all()
                texts[f"table:{table}"] = "\n".join(" | ".join(as_text(v) for v in row) for row in rows)
    finally:
        engine.dispose()
    return texts


def test_no_planted_value_in_airflow_db_logs_or_report(stack: Stack, nightly: dict[str, Any]) -> None:
    texts = _metadata_texts(stack)
    assert texts["table:task_instance"] and texts["table:xcom"], "the metadata DB dump is empty"
    task_logs = [p for p in (stack.airflow_home / "logs").rglob("*") if p.is_file()]
    assert any("pseudonymize_batch" in str(p) for p in task_logs), "no task log files under AIRFLOW_HOME/logs"
    for path in task_logs:
        texts[f"log:{path.relative_to(stack.airflow_home)}"] = path.read_text("utf-8", "replace")
    for path in stack.logs.glob("*.log"):  # the services' own output (scheduler, workers, API server)
        texts[f"service:{path.name}"] = path.read_text("utf-8", "replace")
    reports = stack.data_root / "reports"
    for path in reports.rglob("*"):
        if path.is_file():
            texts[f"report:{path.relative_to(reports)}"] = path.read_bytes().decode("utf-8", "replace")
    assert any(k.startswith("report:compliance/runs/") for k in texts)
    needles = [*planted.NEEDLES, NEW_EMAIL, RESTRICTED, RECTIFIED, EXPORTED, OBJECTING]
    found = {k: planted.find_needles(v, needles) for k, v in texts.items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_an_asset_update_triggers_the_consumer_dag(stack: Stack, ingested: dict[str, Any],
                                                    rights: dict[str, Any]) -> None:
    deadline = time.monotonic() + 300
    while True:
        runs = [r for r in stack.dag_runs(WATCH) if r["run_type"] == "asset_triggered"]
        sources = set()
        for run in runs:
            events = stack.api("GET", f"/dags/{WATCH}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")
            sources |= {(e["source_dag_id"], e["source_run_id"]) for e in events["asset_events"]}
        # the ingest runs that published batches (the triggered one, unless a scheduled run at the
        # turn of an hour took the batches: then the triggered run's summarize was skipped)
        ingest_runs = {(INGEST, r) for r in ingested["working"]}
        wanted = {(RIGHTS, r) for r in rights["runs"]}
        if ingest_runs <= sources and wanted <= sources and all(r["state"] == "success" for r in runs):
            break
        if time.monotonic() > deadline:
            seen = [(r["dag_run_id"], r["state"]) for r in runs]
            raise ServiceError(f"no successful asset-triggered run of {WATCH} consumed the ingest run's "
                               f"and rights runs' Asset events: runs {seen}, sources {sorted(sources)}\n"
                               + stack.logs_tail("scheduler"))
        time.sleep(3)
    watched = stack.task_instances(WATCH, runs[0]["dag_run_id"])
    assert next(t["hostname"] for t in watched if t["task_id"] == "note_update") in services.WORKERS


def test_the_zones_are_objects_in_the_bucket_and_nothing_local(stack: Stack, nightly: dict[str, Any]) -> None:
    from pseudozone import zones

    store, prefix = stack.store, services.ZONES_PREFIX
    everything = store.keys()
    assert all(k.startswith("lake/") for k in everything), sorted({k.split("/")[0] for k in everything})
    keys = store.keys(prefix + "/")
    assert keys
    places = {k[len(prefix) + 1:].split("/", 1)[0] for k in keys}
    # every zone the run wrote, and the subject index beside them (ADR 0017)
    assert {"events", "pii", "exports", ".subject_index"} <= places, places
    assert any(k.endswith(".parquet") for k in keys if k.startswith(f"{prefix}/.subject_index/"))
    # pseudozone's own reader finds the event files there, as many rows as `pseudozone status` counts
    files = zones.parquet_files(store.path("events", "events"))
    assert files and all(zones.is_remote(f) for f in files)
    status = json.loads(stack.pseudozone("status", "--json").stdout)
    rows = {(z["zone"], z["dataset"]): z["rows"] for z in status["zones"]}
    assert sum(zones.read_metadata(f).num_rows for f in files) == rows[("events", "events")]
    # the data root holds no zone: no zones/ directory, no Parquet outside landing, staging emptied
    assert not (stack.data_root / "zones").exists()
    local = [p.relative_to(stack.data_root) for p in stack.data_root.rglob("*.parquet")]
    assert all(p.parts[0] == "landing" for p in local), sorted({p.parts[0] for p in local})
    staging = stack.data_root / "staging"
    assert not [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else True
    # nor a state file: the key vault, ledgers and audit log are on PostgreSQL (ADR 0018)
    state = stack.data_root / "state"
    assert not [p.name for p in state.glob("*.db*")] if state.exists() else True
    # the compose file's analyst key reads the event zone in the bucket and nothing else
    analyst = store.s3(store.analyst)
    event_file = next(k for k in keys if k.startswith(f"{prefix}/events/") and k.endswith(".parquet"))
    assert analyst.get_object(Bucket=store.bucket, Key=event_file)["Body"].read()[:4] == b"PAR1"
    for place in ("pii", ".subject_index", "exports"):
        key = next(k for k in keys if k.startswith(f"{prefix}/{place}/"))
        with pytest.raises(ClientError, match="AccessDenied"):
            analyst.get_object(Bucket=store.bucket, Key=key)


def test_services_are_still_up(stack: Stack) -> None:
    stack.check_services()
