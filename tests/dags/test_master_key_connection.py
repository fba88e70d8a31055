"""The master key can come from an Airflow connection (here an AIRFLOW_CONN_* env var)."""

from __future__ import annotations

import base64
import json
import os

import pytest

from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import load_master_key


def test_master_key_from_airflow_connection(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(32)
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_PSEUDOZONE_MASTER", json.dumps(
        {"conn_type": "generic", "password": base64.b64encode(key).decode()}))
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_CONN_ID", "pseudozone_master")
    settings = Settings.from_env(tmp_path)
    assert load_master_key(settings) == key
    assert not settings.master_key_file.exists()


def test_missing_airflow_connection_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY", raising=False)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_CONN_ID", "no_such_connection")
    with pytest.raises(KeyMaterialError, match="'no_such_connection' could not be read"):
        load_master_key(Settings.from_env(tmp_path))
