"""Fixtures of the integration tests: moto's S3/IAM server (tests/s3_server.py) and a PostgreSQL
server (tests/pg_server.py), each a process on loopback for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_server import Postgres, run_postgres
from tests.s3_server import MotoServer, run_moto_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server; ``create_database()`` gives a test an empty database of its own."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of an S3 server that checks no credentials (any key works)."""
    with run_moto_server() as server:
        yield server.endpoint_url


@pytest.fixture(scope="session")
def s3_iam_server() -> Iterator[MotoServer]:
    """An S3/IAM server that enforces IAM policies; ``.admin`` holds an allow-all key."""
    with run_moto_server(enforce_iam=True) as server:
        yield server
