"""A real PostgreSQL server on loopback, for tests.

``run_postgres()`` makes a throw-away cluster (Debian's ``postgresql`` binaries, which
.ci/run installs), starts it on a free port of 127.0.0.1 and stops it with ``pg_ctl`` when
the ``with`` block ends; ``create_database`` gives each test a database of its own.  A
developer without the binaries gets a skip that says so, CI a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Postgres:
    bindir: Path
    port: int
    as_user: tuple[str, ...]  # runuser -u postgres -- when the tests run as root
    data: Path                # the cluster's directory (its Unix socket is there too)
    superuser: str = "postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", self.superuser, "-c", sql], check=True, capture_output=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"pz_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def run_postgres(*, superuser: str = "postgres", auth: tuple[str, ...] = ("-A", "trust"),
                 prefix: str = "pseudozone-pg-") -> Iterator[Postgres]:
    """A new cluster (``initdb -U superuser`` with ``auth``) started on a free loopback port."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing: .ci/run should install 'postgresql'")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql)")
    bindir = Path(bins[-1]).parent
    as_user = ("runuser", "-u", "postgres", "--") if os.geteuid() == 0 else ()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", superuser, *auth, "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    try:
        yield Postgres(bindir, port, as_user, data, superuser)
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
