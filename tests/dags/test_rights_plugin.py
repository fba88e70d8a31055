"""Airflow's plugin manager loads the rights-API plugin and the API server mounts its app.

The environment (AIRFLOW_HOME, plugins folder = the repo's ``plugins/``, the test master
key) comes from ``tests/dags/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pseudozone.config import HOME_ENV, Settings
from pseudozone.rights.requests import list_requests, register_tenant

PREFIX = "/pseudozone"


def _rights_apps() -> list[dict[str, Any]]:
    from airflow import plugins_manager

    apps, _middlewares = plugins_manager.get_fastapi_plugins()
    return [a for a in apps if a.get("url_prefix") == PREFIX]


@pytest.fixture(scope="module")
def api_server(airflow_db: Path) -> Iterator[TestClient]:
    """Airflow's whole API server app (core API, auth manager, UI, plugins), lifespan included."""
    from airflow.api_fastapi.app import create_app, purge_cached_app

    with pytest.MonkeyPatch.context() as mp:
        # this process read its config before `airflow db migrate` wrote one with a generated secret
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "pseudozone-test-jwt-secret-not-a-real-one")
        with TestClient(create_app()) as client:
            yield client
        purge_cached_app()


def test_given_plugins_folder_then_rights_plugin_loads_without_errors() -> None:
    from airflow import plugins_manager

    plugins_manager.ensure_plugins_loaded()

    names = [p["name"] for p in plugins_manager.get_plugin_info(attrs_to_dump=["source"])]
    assert names.count("pseudozone_rights") == 1
    assert not [k for k in plugins_manager.get_import_errors() if "pseudozone" in k]


def test_given_plugins_loaded_then_fastapi_app_is_registered_under_prefix() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    (registered,) = _rights_apps()

    assert isinstance(registered["app"], FastAPI)
    assert registered["name"] == "pseudozone rights requests"
    assert not any(PREFIX.startswith(reserved) for reserved in RESERVED_URL_PREFIXES)


def test_given_api_server_then_health_is_served_under_prefix(api_server: TestClient) -> None:
    response = api_server.get(f"{PREFIX}/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_given_api_server_then_rights_requests_pass_airflow_middlewares(
        api_server: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the app reads PSEUDOZONE_HOME per request, so a private data root keeps other tests' lake clean
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "lake"))
    settings = Settings.from_env()
    token = register_tenant(settings, "acme")
    auth = {"Authorization": f"Bearer {token}"}

    unauthenticated = api_server.get(f"{PREFIX}/requests")
    submitted = api_server.post(f"{PREFIX}/requests", headers=auth,
                                json={"type": "erase", "user_id": "zelda.plantedpii@example.org"})
    fetched = api_server.get(f"{PREFIX}/requests/{submitted.json()['request_id']}", headers=auth)

    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"] == "Bearer"
    assert submitted.status_code == 202
    assert fetched.status_code == 200
    assert fetched.json()["state"] == "accepted"
    assert [r.request_id for r in list_requests(settings, tenant_id="acme")] == [fetched.json()["request_id"]]
    assert "plantedpii" not in submitted.text + fetched.text
