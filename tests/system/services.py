"""The integration tier's services as real processes on loopback, stopped by PID.

``Stack`` starts, for one pytest session and nothing else on the machine:

- PostgreSQL (a temp cluster from ``initdb``; ``postgres`` run in the foreground, not through
  ``pg_ctl``, whose server detaches into a session of its own): database ``airflow`` for
  Airflow's metadata and Celery's results, and ``pseudozone`` with its own role for the
  state database (``PSEUDOZONE_STATE_DB_URL``: key vault, batch ledger, request ledger, audit
  log), made by ``deploy/postgres/init-pseudozone.sql`` as the compose file does;
- Redis (``redis-server``, Debian's package), the Celery broker;
- moto's S3/IAM server (``tests/s3_server.run_moto_server``, IAM enforced): the bucket
  ``pseudozone`` and the user ``pseudozone`` holding ``deploy/minio/pseudozone-service.json``,
  as ``minio-init`` makes them for the compose file; every zone and the subject index go to
  ``s3://pseudozone/lake/zones`` (``PSEUDOZONE_ZONES``) with that user's key;
- Airflow: ``db migrate``, the pool, then the API server (with the ``pseudozone_rights``
  plugin), the scheduler, the DAG processor and two Celery workers, in a temp AIRFLOW_HOME,
  with this repository's DAGs and plugins, configured like ``docker-compose.yaml``.

Every service is started with ``start_new_session=True``: it leads a session of its own,
and whatever it forks stays in that session even when it moves to another process group
(Airflow's task processes do: ``setpgid`` in the supervisor), unless it calls ``setsid``.
Stopping a service signals its PID, then every process of its session (found in
``/proc`` by session id, killed by PID) and every descendant of the leader found
before; never anything by name. A reaper process (``reaper.py``) does the same if the
pytest process dies without tearing down. moto's server is no session leader: it is stopped
by its PID (``run_moto_server``) after the Airflow services, and exits by itself when the
pytest process is gone.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upath import UPath

from tests.s3_server import Credentials, MotoServer, client, run_moto_server

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TEST_MASTER_KEY = base64.b64encode(bytes(range(32))).decode()  # the fixed test key, never a real secret
SYSTEM_DAGS = Path(__file__).resolve().parent / "dags"
WORKERS = ("worker-a", "worker-b")
POOL_SLOTS = 4
STOP_TIMEOUT = 20.0
# the object store as docker-compose.yaml's minio-init makes it (deploy/minio/README.md)
BUCKET = "pseudozone"
ZONES_PREFIX = "lake/zones"
SERVICE_USER, SERVICE_POLICY = "pseudozone", "pseudozone-service"
ANALYST_USER, ANALYST_POLICY = "analyst", "analyst-readonly"
REGION = "us-east-1"


class ServiceError(RuntimeError):
    """A service did not start or answer; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def scrub(text: str) -> str:
    """A log excerpt fit for a failure message: no planted PII value, no token, no query string."""
    from pseudozone.rights.api import redact
    from tests import planted

    for needle in sorted(planted.NEEDLES, key=len, reverse=True):
        start = text.lower().find(needle.lower())
        while start >= 0:
            text = text[:start] + "[planted value]" + text[start + len(needle):]
            start = text.lower().find(needle.lower(), start + 1)
    return redact(text)


def tail(path: Path, lines: int = 40) -> str:
    try:
        raw = path.read_text("utf-8", "replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(no log at {path}: {type(exc).__name__})"
    return scrub("\n".join(raw))


# -- processes by session ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a service started with ``start_new_session``)."""
    out = []
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None and st[1] == sid:
            out.append(pid)
    return out


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_sessions(sids: Sequence[int], extra: Sequence[int] = (), grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process of the sessions and ``extra``; returns what survived."""

    def alive() -> list[int]:
        found = {p for sid in sids for p in session_members(sid)}
        found |= {p for p in extra if _stat(p) is not None}
        return sorted(found)

    pids = alive()
    _signal_pids(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (pids := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_pids(pids, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while (pids := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: signal.Signals = signal.SIGTERM
    known: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def note_descendants(self) -> None:
        self.known.update(descendants(self.pid))

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServiceError(f"{self.name} (pid {self.pid}) exited with {self.proc.returncode}; "
                               f"the end of its log ({self.log}):\n{tail(self.log)}")

    def stop(self) -> list[int]:
        """Stop the service by its PID, then its session; returns PIDs that survived SIGKILL."""
        self.note_descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)
        survivors = kill_sessions([self.pid], sorted(self.known))
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT)
        return survivors


def start(name: str, argv: Sequence[str], env: Mapping[str, str], logs: Path, *,
          stop_signal: signal.Signals = signal.SIGTERM, user: str | None = None,
          cwd: Path | None = None) -> Service:
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                                user=user, group=user, extra_groups=[] if user else None)
    return Service(name, proc, log, stop_signal)


def wait_for(what: str, ready: Callable[[], bool], service: Service | None, timeout: float,
             interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if service is not None:
            service.check_alive()
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        if time.monotonic() > deadline:
            log_tail = "" if service is None else (
                f"; the end of {service.name}'s log ({service.log}):\n{tail(service.log)}")
            raise ServiceError(f"{what}: not ready after {timeout:.0f}s{log_tail}")
        time.sleep(interval)


# -- HTTP without proxies ---------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
         timeout: float = 60.0) -> Response:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {}),
        **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, answer.read(), dict(answer.headers))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), dict(exc.headers))


# -- PostgreSQL and Redis ---------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    service: Service
    port: int
    socket_dir: Path
    airflow_password: str = field(repr=False)
    pseudozone_password: str = field(repr=False)

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        if database == "pseudozone":
            return f"{driver}://pseudozone:{self.pseudozone_password}@{HOST}:{self.port}/pseudozone"
        return f"{driver}://airflow:{self.airflow_password}@{HOST}:{self.port}/{database}"


def start_postgres(root: Path, logs: Path) -> Postgres:
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceError("PostgreSQL server binaries are missing (Debian package 'postgresql')")
    user = "postgres" if os.geteuid() == 0 else None
    root.chmod(0o755)
    data, sock = root / "pgdata", root / "pgsock"
    data.mkdir()
    sock.mkdir()
    pwfile = root / "pgpass-init"
    airflow_password, pseudozone_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pwfile.write_text(airflow_password + "\n")
    pwfile.chmod(0o600)
    if user:
        for path in (data, sock, pwfile):
            shutil.chown(path, user, user)
    init = subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", "airflow", f"--pwfile={pwfile}", "--auth-local=trust",
         "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
        capture_output=True, text=True, user=user, group=user, extra_groups=[] if user else None)
    pwfile.unlink()
    if init.returncode != 0:
        output = scrub(init.stdout[-2000:] + init.stderr[-2000:])
        raise ServiceError(f"initdb failed ({init.returncode}):\n{output}")
    port = free_port()
    service = start("postgres", [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                                 "-c", f"listen_addresses={HOST}", "-c", "fsync=off",
                                 "-c", "synchronous_commit=off", "-c", "max_connections=300"],
                    {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}, logs,
                    stop_signal=signal.SIGINT, user=user)  # SIGINT: PostgreSQL's fast shutdown
    psql = [str(bindir / "psql"), "-h", str(sock), "-p", str(port), "-U", "airflow", "--no-psqlrc", "-v",
            "ON_ERROR_STOP=1"]
    wait_for("PostgreSQL", lambda: subprocess.run([*psql, "-d", "postgres", "-c", "SELECT 1"],
                                                  capture_output=True).returncode == 0, service, 60)
    pg = Postgres(service, port, sock, airflow_password, pseudozone_password)
    init_sql = REPO / "deploy" / "postgres" / "init-pseudozone.sql"
    for args, env in (([*psql, "-d", "postgres", "-c", "CREATE DATABASE airflow"], {}),
                      # the compose deployment's second database and role, exactly as the image makes them
                      ([*psql, "-d", "airflow", "-f", str(init_sql)],
                       {"PSEUDOZONE_DB_PASSWORD": pseudozone_password})):
        done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env})
        if done.returncode != 0:
            raise ServiceError(f"psql {args[-1]!r} failed:\n{scrub(done.stderr[-2000:])}")
    return pg


@dataclass
class Redis:
    service: Service
    port: int

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


def _redis_ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def start_redis(root: Path, logs: Path) -> Redis:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError("redis-server is missing (Debian package 'redis-server')")
    port = free_port()
    (root / "redis").mkdir()
    service = start("redis", [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                              "--dir", str(root / "redis"), "--daemonize", "no", "--protected-mode", "yes"],
                    {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, logs)
    wait_for("Redis", lambda: _redis_ping(port), service, 30)
    return Redis(service, port)


# -- object storage -------------------------------------------------------------------------


@dataclass
class ObjectStore:
    """moto's S3/IAM server with the bucket and users of ``deploy/minio/``: the zones' place."""

    server: MotoServer = field(repr=False)
    service: Credentials = field(repr=False)  # the pipeline's key (policy pseudozone-service)
    analyst: Credentials = field(repr=False)  # the analysts' key (policy analyst-readonly)
    bucket: str = BUCKET
    prefix: str = ZONES_PREFIX

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def zones_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def env(self) -> dict[str, str]:
        """The settings of every Airflow process: zones in the bucket, the service user's key."""
        return {"PSEUDOZONE_ZONES": self.zones_url,
                "AWS_ENDPOINT_URL": self.server.endpoint_url,
                "AWS_ACCESS_KEY_ID": self.service.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.service.secret_access_key,
                "AWS_DEFAULT_REGION": REGION}

    def s3(self, credentials: Credentials | None = None) -> Any:
        """A boto3 S3 client (the admin's unless ``credentials``)."""
        return client("s3", self.server.endpoint_url, credentials or self.server.admin)

    def keys(self, under: str = "") -> list[str]:
        """Every object key of the bucket starting with ``under``, sorted (the admin's listing)."""
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=under)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return bytes(self.s3().get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def path(self, *parts: str) -> UPath:
        """A zone path as pseudozone makes one (``Settings.zones``), with the service user's key
        given to s3fs directly (nothing of this process's environment changes)."""
        return UPath(self.zones_url, use_listings_cache=False, key=self.service.access_key_id,
                     secret=self.service.secret_access_key,
                     client_kwargs={"endpoint_url": self.server.endpoint_url, "region_name": REGION}
                     ).joinpath(*parts)


def _policy_user(server: MotoServer, name: str, policy: str) -> Credentials:
    """An IAM user holding ``deploy/minio/<policy>.json`` (``mc admin policy attach``) and its key."""
    iam = client("iam", server.endpoint_url, server.admin)
    document = (REPO / "deploy" / "minio" / f"{policy}.json").read_text()
    arn = iam.create_policy(PolicyName=policy, PolicyDocument=document)["Policy"]["Arn"]
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def prepare_object_store(server: MotoServer) -> ObjectStore:
    """The bucket and the two users, as ``minio-init`` makes them (with the server's admin key)."""
    if server.admin is None:
        raise ServiceError("the S3 server must enforce IAM (run_moto_server(enforce_iam=True))")
    client("s3", server.endpoint_url, server.admin).create_bucket(Bucket=BUCKET)
    return ObjectStore(server, _policy_user(server, SERVICE_USER, SERVICE_POLICY),
                       _policy_user(server, ANALYST_USER, ANALYST_POLICY))


# -- Airflow ----------------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    logs: Path
    airflow_home: Path
    data_root: Path
    env: dict[str, str] = field(repr=False)  # passwords and keys: never in a failure message
    api_url: str
    postgres: Postgres = field(repr=False)
    redis: Redis
    services: dict[str, Service]
    store: ObjectStore = field(repr=False)
    admin_password: str = field(repr=False)
    reaper: subprocess.Popen[bytes] | None = None
    started_in_s: float = 0.0  # from nothing to every service ready
    _token: str | None = field(default=None, repr=False)

    # -- commands and REST ------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float = 300, env: Mapping[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=self.root)
        if check and done.returncode != 0:
            raise ServiceError(f"{' '.join(argv[:3])} ... exited with {done.returncode}:\n"
                               f"{scrub(done.stdout[-3000:])}\n{scrub(done.stderr[-3000:])}")
        return done

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run([venv_bin("airflow"), *args], timeout=timeout)

    def pseudozone(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.run([venv_bin("pseudozone"), *args], timeout=timeout)

    def token(self) -> str:
        if self._token is None:
            answer = http("POST", f"{self.api_url}/auth/token",
                          body={"username": "admin", "password": self.admin_password})
            if answer.status not in (200, 201):
                raise ServiceError(f"no API token ({answer.status}); api-server log:\n"
                                   f"{tail(self.services['api-server'].log)}")
            self._token = str(answer.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, body: Any = None, *, expect: Sequence[int] = (200,)) -> Any:
        answer = http(method, f"{self.api_url}/api/v2{path}", body=body,
                      headers={"Authorization": f"Bearer {self.token()}"})
        if answer.status not in expect:
            detail = scrub(answer.body[:500].decode("utf-8", "replace"))
            raise ServiceError(f"{method} /api/v2{path}: {answer.status} {detail}; "
                               f"api-server log:\n{tail(self.services['api-server'].log, 20)}")
        return answer.json() if answer.body else None

    def wait_parsed(self, *dag_ids: str, timeout: float = 600) -> None:
        """Until the DAG processor has serialized every one of ``dag_ids``."""

        def parsed() -> bool:
            auth = {"Authorization": f"Bearer {self.token()}"}
            return all(http("GET", f"{self.api_url}/api/v2/dags/{d}", timeout=10, headers=auth).status == 200
                       for d in dag_ids)

        wait_for(f"DAGs {', '.join(dag_ids)} parsed", parsed, self.services["dag-processor"], timeout,
                 interval=2)

    def check_services(self) -> None:
        for service in self.services.values():
            service.check_alive()

    def logs_tail(self, *names: str, lines: int = 30) -> str:
        return "\n".join(f"--- {n} ({self.services[n].log}) ---\n{tail(self.services[n].log, lines)}"
                         for n in names)

    # -- DAG runs -------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"))

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=run_after")["dag_runs"])

    def task_instances(self, dag_id: str, run_id: str = "~") -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="~")
        out: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", f"/dags/{dag_id}/dagRuns/{quoted}/taskInstances"
                                   f"?limit=100&offset={len(out)}")
            out += page["task_instances"]
            if len(out) >= page["total_entries"] or not page["task_instances"]:
                return out

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict[str, Any]:
        """The finished run; a run still going after ``timeout`` fails with the services' log tails."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_services()
            run = self.dag_run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if time.monotonic() > deadline:
                tis = self.task_instances(dag_id, run_id)
                states = sorted({(t["task_id"], t["state"] or "none") for t in tis})
                raise ServiceError(
                    f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s; task states {states}\n"
                    + self.logs_tail("scheduler", *WORKERS))
            time.sleep(2)

    def wait_idle(self, dag_id: str, timeout: float = 900) -> list[dict[str, Any]]:
        """Every run of the DAG, once none is queued or running (the scheduler's own runs too)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_services()
            runs = self.dag_runs(dag_id)
            if all(r["state"] in ("success", "failed") for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise ServiceError(f"{dag_id}: runs still active after {timeout:.0f}s: "
                                   f"{[(r['dag_run_id'], r['state']) for r in runs]}\n"
                                   + self.logs_tail("scheduler", *WORKERS))
            time.sleep(2)

    def failure_report(self, dag_id: str, run_id: str) -> str:
        tis = self.task_instances(dag_id, run_id)
        bad = [(t["task_id"], t["map_index"], t["state"]) for t in tis if t["state"] != "success"]
        return f"{dag_id} run {run_id}: task instances not successful: {bad}\n" + self.logs_tail(
            "scheduler", *WORKERS, lines=40)

    # -- teardown -------------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop every service (workers first, PostgreSQL last); returns what survived, if anything."""
        left: list[str] = []
        order = [*WORKERS, "scheduler", "dag-processor", "api-server", "redis", "postgres"]
        for name in order:
            service = self.services.get(name)
            if service is not None:
                survivors = service.stop()
                if survivors:
                    left.append(f"{name}: pids {survivors} survived SIGKILL")
        if self.reaper is not None and self.reaper.poll() is None:
            self.reaper.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.reaper.wait(timeout=STOP_TIMEOUT)
        return left


def airflow_env(root: Path, pg: Postgres, redis: Redis, store: ObjectStore, api_port: int,
                admin_passwords: Path) -> dict[str, str]:
    home = root / "airflow"
    # nothing of the caller's Airflow, pseudozone or AWS settings (a real bucket's key, say)
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "PSEUDOZONE_", "AWS_")) and k not in ("PYTHONPATH",)}
    local = "airflow.dag_processing.bundles.local.LocalDagBundle"
    bundles = [
        {"name": "dags-folder", "classpath": local, "kwargs": {}},
        # the tier's own DAG (an Asset consumer) in a bundle of its own: the repo's dags/ stays as it is
        {"name": "system-tests", "classpath": local,
         "kwargs": {"path": str(SYSTEM_DAGS), "refresh_interval": 0}},
    ]
    return {
        **keep,
        "PYTHONPATH": str(REPO),  # tests.system.worker_identity, the workers' hostname callable
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(admin_passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url("airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": pg.url("airflow"),
        "AIRFLOW__CELERY__BROKER_URL": redis.url,
        "AIRFLOW__CELERY__RESULT_BACKEND": pg.url("airflow", "db+postgresql+psycopg"),
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{api_port}/execution/",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PSEUDOZONE_HOME": str(root / "lake"),
        "PSEUDOZONE_MASTER_KEY": TEST_MASTER_KEY,
        "PSEUDOZONE_STATE_DB_URL": pg.url("pseudozone"),
        **store.env(),
    }


def _reaper(sessions_file: Path, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / "reaper.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py")), "--parent-pid", str(os.getpid()),
             "--sessions-file", str(sessions_file)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _answers(url: str) -> Callable[[], bool]:
    return lambda: http("GET", url, timeout=5).status == 200


def _logged(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text("utf-8", "replace")


@contextlib.contextmanager
def run_stack(*, keep_root_on_failure: Callable[[], bool] = lambda: False) -> Iterator[Stack]:
    """PostgreSQL, Redis, moto's S3 server and Airflow (API server, scheduler, DAG processor, two
    Celery workers) on S3 zones, ready to take DAG runs; every process stopped by PID when the
    block ends."""
    began = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="pseudozone-system-"))
    logs = root / "logs"
    logs.mkdir()
    sessions_file = root / "sessions"
    sessions_file.touch()
    reaper = _reaper(sessions_file, logs)
    services: dict[str, Service] = {}

    def register(service: Service) -> Service:
        services[service.name] = service
        with sessions_file.open("a") as f:
            f.write(f"{service.pid}\n")
        return service

    stack: Stack | None = None
    left: list[str] = []
    moto = contextlib.ExitStack()
    moto_pid: int | None = None
    try:
        s3_began = time.monotonic()
        server = moto.enter_context(run_moto_server(enforce_iam=True))
        moto_pid = server.pid
        store = prepare_object_store(server)
        print(f"\nintegration tier: moto's S3 server (pid {server.pid}) ready in "
              f"{time.monotonic() - s3_began:.1f}s; zones at {store.zones_url}", file=sys.stderr)
        pg = start_postgres(root, logs)
        register(pg.service)
        redis = start_redis(root, logs)
        register(redis.service)
        api_port = free_port()
        passwords = root / "simple_auth_manager_passwords.json"
        admin_password = secrets.token_urlsafe(16)
        passwords.write_text(json.dumps({"admin": admin_password}))
        passwords.chmod(0o600)
        env = airflow_env(root, pg, redis, store, api_port, passwords)
        Path(env["AIRFLOW_HOME"]).mkdir()
        stack = Stack(root, logs, Path(env["AIRFLOW_HOME"]), Path(env["PSEUDOZONE_HOME"]), env,
                      f"http://{HOST}:{api_port}", pg, redis, services, store, admin_password, reaper)
        stack.airflow("db", "migrate", timeout=900)
        stack.airflow("pools", "set", "pseudozone", str(POOL_SLOTS), "pseudozone heavy tasks")
        stack.pseudozone("keys", "init")
        airflow = venv_bin("airflow")
        api = register(start("api-server", [airflow, "api-server", "--host", HOST, "--port", str(api_port),
                                            "--workers", "1"], env, logs, cwd=root))
        register(start("scheduler", [airflow, "scheduler"], env, logs, cwd=root))
        register(start("dag-processor", [airflow, "dag-processor"], env, logs, cwd=root))
        for name in WORKERS:
            worker_env = {**env, "PSEUDOZONE_TEST_WORKER_NAME": name,
                          "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.system.worker_identity.hostname"}
            register(start(name, [airflow, "celery", "worker", "--concurrency", "1", "--celery-hostname",
                                  f"{name}@%h", "--skip-serve-logs"], worker_env, logs, cwd=root))
        for what, path, timeout in (("the API server", "/api/v2/version", 300),
                                    ("the pseudozone REST door", "/pseudozone/health", 60)):
            wait_for(what, _answers(stack.api_url + path), api, timeout)
        for name in WORKERS:
            wait_for(f"Celery worker {name}", _logged(services[name].log, "ready."), services[name], 300)
        stack.started_in_s = time.monotonic() - began
        yield stack
    finally:
        if stack is not None:
            left = stack.stop()
        else:
            for name in reversed(list(services)):
                survivors = services[name].stop()
                if survivors:
                    left.append(f"{name}: pids {survivors} survived SIGKILL")
            if reaper.poll() is None:
                reaper.terminate()
        moto.close()  # after the Airflow services: run_moto_server stops it by its PID
        if moto_pid is not None and _stat(moto_pid) is not None:
            left.append(f"moto S3 server: pid {moto_pid} survived")
        if not keep_root_on_failure():
            shutil.rmtree(root, ignore_errors=True)
    if left:
        raise ServiceError("processes outlived the tier: " + "; ".join(left))
