"""deploy/postgres/init-pseudozone.sql, run as the postgres image runs it (psql -f as the superuser,
in POSTGRES_DB), on a PostgreSQL server started here on loopback with password logins
(docs/adr/0016-distributed-deployment.md)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import inspect

from pseudozone import state
from pseudozone.rights import store
from tests.pg_server import run_postgres

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[list[str], Path, int]]:
    """(psql command as the superuser 'airflow' in database 'airflow', a copy of the script, port)."""
    with run_postgres(superuser="airflow", auth=("--auth-local=trust", "--auth-host=scram-sha-256"),
                      prefix="pseudozone-pginit-") as pg:
        script = pg.data.parent / "init-pseudozone.sql"  # a 0755 directory: the postgres user reads it
        shutil.copy(REPO / "deploy" / "postgres" / "init-pseudozone.sql", script)
        script.chmod(0o644)
        psql = [*pg.as_user, str(pg.bindir / "psql"), "-h", str(pg.data), "-p", str(pg.port), "-U", "airflow",
                "--no-psqlrc"]
        subprocess.run([*psql, "-d", "postgres", "-c", "CREATE DATABASE airflow"], check=True,
                       capture_output=True)
        yield [*psql, "-v", "ON_ERROR_STOP=1", "-d", "airflow"], script, pg.port


def _run(psql: list[str], script: Path, password: str | None) -> subprocess.CompletedProcess[str]:
    """psql -f with PSEUDOZONE_DB_PASSWORD set to ``password`` (unset for None), as the image's
    entrypoint runs the file with the container's environment."""
    given = [] if password is None else [f"PSEUDOZONE_DB_PASSWORD={password}"]
    cut = 4 if psql[0] == "runuser" else 0  # 'runuser -u postgres --' stays in front
    command = [*psql[:cut], "env", "-u", "PSEUDOZONE_DB_PASSWORD", *given, *psql[cut:], "-f", str(script)]
    return subprocess.run(command, capture_output=True, text=True)


def test_the_init_script_makes_the_ledgers_database_and_role(server: tuple[list[str], Path, int]) -> None:
    psql, script, port = server
    failed = _run(psql, script, None)
    assert failed.returncode != 0 and "PSEUDOZONE_DB_PASSWORD is not set" in failed.stderr
    roles = subprocess.run([*psql, "-tAc", "SELECT count(*) FROM pg_roles WHERE rolname = 'pseudozone'"],
                           capture_output=True, text=True, check=True)
    assert roles.stdout.strip() == "0"  # nothing made without the password

    done = _run(psql, script, "s3cret-from-env")
    assert done.returncode == 0, done.stderr

    url = f"postgresql+psycopg://pseudozone:s3cret-from-env@127.0.0.1:{port}/pseudozone"
    engine = store._schema(state._engine(url))  # what PSEUDOZONE_STATE_DB_URL does (as this role)
    try:
        made = set(inspect(engine).get_table_names())
        assert set(store.metadata.tables) <= made and set(state.TABLES) <= made
        with engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                                       " WHERE rolname = current_user").one()
        assert tuple(row) == (False, False, False)
    finally:
        engine.dispose()
    for bad in (f"postgresql+psycopg://pseudozone:wrong@127.0.0.1:{port}/pseudozone",
                f"postgresql+psycopg://pseudozone:s3cret-from-env@127.0.0.1:{port}/airflow"):
        other = sqlalchemy.create_engine(bad)
        with pytest.raises(sqlalchemy.exc.OperationalError):
            other.connect().close()
        other.dispose()
