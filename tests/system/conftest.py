"""The integration tier (``make test-integration``): real services on loopback, no Docker.

Not part of ``make test``: these tests run only with ``PSEUDOZONE_SYSTEM_TESTS=1`` (the
Makefile's ``test-integration`` target sets it), and are skipped with that hint otherwise.
Under CI (``CI`` set) a missing server binary fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import services

ENABLE_ENV = "PSEUDOZONE_SYSTEM_TESTS"
_failed: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    mine = [i for i in items if Path(str(i.fspath)).is_relative_to(here)]
    for item in mine:
        item.add_marker(pytest.mark.system)
    if os.environ.get(ENABLE_ENV) != "1":
        reason = f"integration tier: run it with 'make test-integration' ({ENABLE_ENV}=1)"
        skip = pytest.mark.skip(reason=reason)
        for item in mine:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _failed.append(item.nodeid)


@pytest.fixture(scope="session")
def stack() -> Iterator[services.Stack]:
    missing = [what for what, ok in (("postgresql", services.postgres_bindir() is not None),
                                     ("redis-server", shutil.which("redis-server") is not None)) if not ok]
    if missing:
        message = f"integration tier needs the Debian package(s) {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # keep the services' logs and data for a look when something failed (the path is printed)
    with services.run_stack(keep_root_on_failure=lambda: bool(_failed)) as running:
        yield running
        if _failed:
            print(f"\nintegration tier: logs and data kept under {running.root}")
