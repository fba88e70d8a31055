"""rotate_keys with param master under dag.test(): the root secret is re-wrapped under the new
master key of the workers' environment, the old key is refused afterwards, every pseudonym
stays, and no key (nor any planted PII) reaches Airflow's metadata or the task logs."""

from __future__ import annotations

import base64
import contextlib
import io
from pathlib import Path

import pytest

from pseudozone import ingest
from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import KeyRing
from tests import planted
from tests.dags.conftest import AIRFLOW_HOME, REPO, artifact_texts

OLD_KEY = bytes(range(32))  # the fixed test key of tests/dags/conftest.py
NEW_KEY = bytes(range(64, 96))  # a fixed test key: never a real secret


def test_rotate_keys_with_master_rotates_the_master_key(airflow_db: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from pseudozone.sample import generate

    home = AIRFLOW_HOME / "rotate-master-lake"
    monkeypatch.setenv("PSEUDOZONE_HOME", str(home))
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(OLD_KEY).decode())
    settings = Settings.from_env(home)
    generate(settings, events=800, tenants=2, seed=9, batch_rows=800)
    planted.plant(settings.landing)
    ingest.ingest_pending(settings)
    subject = KeyRing.load(settings).subject_id(planted.TENANT, planted.USER)

    monkeypatch.setenv("PSEUDOZONE_NEW_MASTER_KEY", base64.b64encode(NEW_KEY).decode())
    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("rotate_keys")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        run = dag.test(run_conf={"tenant": planted.TENANT, "pseudonyms": False, "master": True})
    assert run.state == "success", out.getvalue()[-3000:]

    with pytest.raises(KeyMaterialError, match="retired master key version 1"):
        KeyRing.load(settings)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(NEW_KEY).decode())
    assert KeyRing.load(settings).subject_id(planted.TENANT, planted.USER) == subject

    texts = {**artifact_texts(airflow_db), "task-output": out.getvalue()}
    assert any("master_version" in t for t in texts.values())  # the task's XCom: versions only
    keys = [base64.b64encode(k).decode() for k in (OLD_KEY, NEW_KEY)] + [k.hex() for k in (OLD_KEY, NEW_KEY)]
    leaks = {where: found for where, text in texts.items()
             if (found := planted.find_needles(text) + [k for k in keys if k in text])}
    assert leaks == {}
