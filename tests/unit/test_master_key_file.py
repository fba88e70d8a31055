"""$PSEUDOZONE_MASTER_KEY_FILE: a master key file the deployment provides (a Docker secret under
/run/secrets/, docs/adr/0016-distributed-deployment.md); read, never made, 0600 or refused."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import KeyRing, init_master_key, load_master_key, require_configured_key


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PSEUDOZONE_MASTER_KEY", "PSEUDOZONE_MASTER_KEY_CONN_ID", "PSEUDOZONE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


def _secret(path: Path, key: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(base64.b64encode(key).decode() + "\n")
    os.chmod(path, mode)
    return path


def test_the_given_key_file_is_the_master_key_and_nothing_is_made_in_the_key_directory(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(_secret(tmp_path / "run-secrets" / "mk", key)))
    assert load_master_key(settings) == key
    require_configured_key(settings)
    origin = init_master_key(settings)
    assert "PSEUDOZONE_MASTER_KEY_FILE" in origin
    assert not settings.master_key_file.exists()
    assert KeyRing.load(settings).check_value() == KeyRing(key).check_value()


def test_a_given_key_file_that_is_not_the_roots_key_is_refused(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(_secret(tmp_path / "a", os.urandom(32))))
    KeyRing.load(settings)  # records the first key's check value
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(_secret(tmp_path / "b", os.urandom(32))))
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        KeyRing.load(settings)


def test_a_missing_given_key_file_is_an_error_and_no_key_is_generated(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(KeyMaterialError, match=r"PSEUDOZONE_MASTER_KEY_FILE names .*does not exist"):
        load_master_key(settings)
    with pytest.raises(KeyMaterialError, match="does not exist"):
        init_master_key(settings)
    assert not settings.master_key_file.exists()
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_given_key_file_readable_by_group_or_others_is_refused(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    path = _secret(tmp_path / "mk", os.urandom(32), mode)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(path))
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        load_master_key(settings)


def test_a_bad_given_key_is_reported_without_its_value(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _secret(tmp_path / "mk", b"too-short-secret")
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(path))
    with pytest.raises(KeyMaterialError) as err:
        load_master_key(settings)
    assert "32 bytes" in str(err.value)
    assert base64.b64encode(b"too-short-secret").decode() not in str(err.value)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(tmp_path))  # a directory
    with pytest.raises(KeyMaterialError, match="cannot be read as a key file"):
        load_master_key(settings)


def test_the_env_var_and_connection_come_first_and_the_given_file_before_the_key_directory(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    in_dir = load_master_key(settings)  # the embedded default makes <key dir>/master.key
    given = os.urandom(32)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY_FILE", str(_secret(tmp_path / "mk", given)))
    assert load_master_key(settings) == given != in_dir
    env = os.urandom(32)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(env).decode())
    assert load_master_key(settings) == env
