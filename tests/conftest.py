from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from tests import planted

TEST_MASTER_KEY = bytes(range(32))  # fixed test key: never a real secret


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings.from_env(tmp_path / "lake")
    s.ensure()
    return s


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing(TEST_MASTER_KEY, pseudonym_version=1)


@pytest.fixture
def master_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(TEST_MASTER_KEY).decode())


@pytest.fixture
def lake(settings: Settings, master_key_env: None) -> Settings:
    """A landing zone with generated data for two tenants plus the planted batch."""
    from pseudozone.sample import generate

    generate(settings, events=4000, tenants=2, seed=11, batch_rows=1500)
    planted.plant(settings.landing)
    return settings


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop("PSEUDOZONE_MASTER_KEY_CONN_ID", None)


def append_audit_concurrently(settings: Settings, writers: int, each: int) -> None:
    """``writers`` threads appending ``each`` audit entries at once (chain-linearity tests)."""
    import threading

    from pseudozone.rights import audit, store

    def writer(n: int) -> None:
        for i in range(each):
            with store.transaction(settings) as conn:
                audit.append(conn, "test.concurrent", details={"writer": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
