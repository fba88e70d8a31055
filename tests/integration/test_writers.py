"""Writers that cannot undo each other, with real concurrent processes (tests/writers_child.py):
an ingest planned before an erasure, two rights runs at once, a dead writer's lease
(pseudozone.lake.leases, docs/adr/0019-writer-leases.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from pseudozone import ingest, state, zones
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.lake import layout, leases
from pseudozone.rights import requests, store
from pseudozone.sample import generate
from tests import planted
from tests.conftest import TEST_MASTER_KEY

REPO = Path(__file__).resolve().parents[2]
KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)


def _child(mode: str, settings: Settings, flags: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.writers_child", mode, str(settings.root),
                             str(flags)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended early: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _result(proc: subprocess.Popen[str], seconds: float = 300) -> Any:
    out, err = proc.communicate(timeout=seconds)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def _killed_on_exit(*procs: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _subject_rows(settings: Settings, subject: str) -> list[str]:
    """Every zone file (event, restricted, PII) that holds a row of ``subject``."""
    found = []
    for zone in layout.ZONES:
        for f in zones.parquet_files(layout.zone_root(settings, zone)):
            col = zones.read_table(f, columns=["subject_id"])["subject_id"]
            if pc.any(pc.fill_null(pc.equal(col, subject), False)).as_py():
                found.append(layout.relative(f, settings.zones))
    return found


def _deliver_again(settings: Settings, name: str) -> None:
    """A new events batch of the planted subject (new event ids: not a re-delivery)."""
    target = settings.landing / "events" / f"tenant={planted.TENANT}" / f"{name}.parquet"
    pq.write_table(planted.events(ids=name), target)


@pytest.fixture(params=["sqlite", "postgresql"])
def wlake(request: pytest.FixtureRequest, lake: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An ingested lake whose state is SQLite, or PostgreSQL (for this process and its children)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").create_database()
        monkeypatch.setenv(state.STATE_DB_URL_ENV, url)
        lake.state_db.unlink()  # made by the settings fixture before the URL was set
        lake = dataclasses.replace(lake, state_db_url=url)
    ingest.ingest_pending(lake, keyring=KR)
    assert _subject_rows(lake, SUBJECT)
    return lake


@pytest.mark.parametrize("pause", ["ingest-before-publish", "ingest-in-publish"])
def test_an_erasure_between_an_ingests_plan_and_its_publish_stays_erased(
        wlake: Settings, tmp_path: Path, pause: str) -> None:
    _deliver_again(wlake, "late-0001")
    flags = tmp_path / "flags"
    flags.mkdir()
    ingesting = _child(pause, wlake, flags)
    with _killed_on_exit(ingesting):
        _wait_for(flags / "paused", ingesting)  # planned with the subject live: its rows are in the plan
        erase = requests.submit(wlake, {"type": "erase", "tenant_id": planted.TENANT,
                                        "user_id": planted.USER}, source="test", keyring=KR)
        erasing = _child("rights", wlake, flags)
        with _killed_on_exit(erasing):
            if pause == "ingest-in-publish":
                # the ingest holds its publish lease: the rights run waits for it before it reads
                # the index, so it rewrites what the ingest publishes
                time.sleep(2)
                assert erasing.poll() is None
                (flags / "go").touch()
                assert _result(erasing)["completed"] == {"erase": 1}
                batches = _result(ingesting)
            else:
                # the rights run begins and ends first; the ingest then finds the epoch moved and
                # plans again: the subject is erased now
                assert _result(erasing)["completed"] == {"erase": 1}
                (flags / "go").touch()
                batches = _result(ingesting)
    late = next(b for b in batches if b["batch_id"].endswith("late-0001"))
    assert late["status"] == "done"
    if pause == "ingest-before-publish":
        assert late["dropped_erased"] > 0
    assert requests.get_status(wlake, erase.request_id).state == "completed"
    assert _subject_rows(wlake, SUBJECT) == []
    assert not [p for p in wlake.staging.rglob("*") if p.is_file()]  # nothing staged is left
    with state.read(wlake) as conn:
        assert conn is not None and leases.live(conn, "") == []  # every lease given back


def _digest(settings: Settings) -> dict[str, str]:
    return {layout.relative(f, settings.zones): hashlib.sha256(f.read_bytes()).hexdigest()
            for zone in (layout.EVENTS, layout.RESTRICTED)
            for f in zones.parquet_files(layout.zone_root(settings, zone))}


def _two_runs_lake(root: Path) -> Settings:
    settings = Settings.from_env(root)
    settings.ensure()
    generate(settings, events=3000, tenants=2, seed=5, batch_rows=1000)
    planted.plant(settings.landing)
    ingest.ingest_pending(settings, keyring=KR)
    for kind, tenant, user, extra in (
            ("erase", planted.TENANT, planted.USER, {}),
            ("restrict", planted.TENANT, "usr_0000003", {}),
            ("rectify", planted.TENANT, "usr_0000004", {"fields": {"email": "new.mail@example.org"}}),
            ("erase", "globex", "usr_0000007", {}),
            ("restrict", "globex", "usr_0000008", {})):
        requests.submit(settings, {"type": kind, "tenant_id": tenant, "user_id": user, **extra},
                        source="test", keyring=KR)
    return settings


def test_two_rights_runs_at_once_apply_each_request_once(tmp_path: Path, master_key_env: None) -> None:
    reference = _two_runs_lake(tmp_path / "reference")
    alone = _result(_child("rights", reference, tmp_path))
    racing = _two_runs_lake(tmp_path / "racing")
    runs = [_child("rights", racing, tmp_path) for _ in range(2)]
    with _killed_on_exit(*runs):
        done = [_result(run) for run in runs]
    if sum(n for d in done for n in d["completed"].values()) < 5:
        # a tenant the other run held waited for the next run (ADR 0019)
        done.append(_result(_child("rights", racing, tmp_path)))
    # together the runs completed every request, each once, as one run alone does
    completed: dict[str, int] = {}
    for d in done:
        for kind, n in d["completed"].items():
            completed[kind] = completed.get(kind, 0) + n
    assert completed == alone["completed"] and sum(completed.values()) == 5
    assert [r.state for r in requests.list_requests(racing)] == ["completed"] * 5
    with store.engine_for(racing).connect() as conn:
        ends = conn.execute(select(store.audit_log.c.request_id, func.count()).where(
            store.audit_log.c.action == "request.completed").group_by(store.audit_log.c.request_id)).all()
    assert len(ends) == 5 and all(n == 1 for _, n in ends)
    # and the files are what one run alone makes: nothing moved twice, nothing lost, none torn
    assert _digest(racing) == _digest(reference)
    for f in zones.parquet_files(racing.zones):
        pq.read_metadata(f)


def _die_holding(settings: Settings, name: str, holder: str, ttl_s: float) -> None:
    """A process that takes lease ``name`` (``holder``: a Python expression) and is SIGKILLed."""
    script = ("import os, signal, sys\n"
              "from pseudozone.config import Settings\n"
              "from pseudozone.lake import leases\n"
              "s = Settings.from_env(sys.argv[1])\n"
              f"cm = leases.held(s, [{name!r}], {holder}, ttl_s={ttl_s})\n"
              "cm.__enter__()\n"
              "print('held', flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    dying = subprocess.run([sys.executable, "-c", script, str(settings.root)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert dying.returncode == -signal.SIGKILL and "held" in dying.stdout


def test_a_dead_writers_lease_expires(settings: Settings, tmp_path: Path) -> None:
    _die_holding(settings, "rewrite:acme", "'doomed'", 2.0)
    with contextlib.ExitStack() as stack:
        assert not leases.hold_now(stack, settings, ["rewrite:acme"], "next")  # still live
    time.sleep(2.2)
    with contextlib.ExitStack() as stack:
        assert leases.hold_now(stack, settings, ["rewrite:acme"], "next")  # expired: taken over
        with state.read(settings) as conn:
            assert conn is not None and leases.live(conn, "rewrite:") == ["rewrite:acme"]
        with contextlib.ExitStack() as other:  # and held now: nobody else gets it
            assert not leases.hold_now(other, settings, ["rewrite:acme"], "third")
    with state.read(settings) as conn:  # given back when the holder is done
        assert conn is not None and leases.live(conn, "") == []


def test_a_killed_local_processs_lease_is_free_at_once(settings: Settings) -> None:
    _die_holding(settings, "publish:acme:b1", "leases.holder_id('ingest:')", 600.0)
    with state.read(settings) as conn:  # its process is gone: not live, though not expired
        assert conn is not None and leases.live(conn, "publish:") == []
    with contextlib.ExitStack() as stack:
        assert leases.hold_now(stack, settings, ["publish:acme:b1"], leases.holder_id("ingest:"))
