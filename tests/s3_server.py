"""moto's S3 and IAM server as a real process on loopback, for tests.

``run_moto_server()`` starts it on a free port of 127.0.0.1, waits until it answers and
stops it by its PID when the ``with`` block ends (SIGTERM, then SIGKILL); the server also
exits by itself when the process that started it is gone, so a killed test session
leaves nothing behind.  ``tests/integration/conftest.py`` wraps it in session fixtures.

With ``enforce_iam=True`` moto checks every request's signature and the caller's IAM
policies.  moto's documented switch is the ``INITIAL_NO_AUTH_ACTION_COUNT`` environment
variable of the server process: the first N authorizable requests go unchecked, every
later one is checked.  N is ``BOOTSTRAP_REQUESTS``: the admin user, its allow-all inline
policy and its access key are made with the unchecked ones (``MotoServer.admin``), and
everything after that runs with real credentials.

moto matches actions and resources of identity policies but ignores their ``Condition``
blocks and gives S3 requests no condition keys, so a ``ListBucket`` statement limited by
``s3:prefix`` would allow listing the whole bucket.  The server process started here
therefore evaluates S3 requests with ``evaluate`` below (AWS's rules: an explicit Deny
wins, then any Allow, else denied), with the ``s3:prefix``, ``s3:delimiter`` and
``s3:max-keys`` keys of list requests and the ``String*`` and ``Null`` condition
operators.  Anything it does not evaluate (other operators, policy variables,
principals) fails closed: such an Allow statement allows nothing, such a Deny denies.
Signatures and every other service stay moto's.

Run as a script (what ``run_moto_server`` does)::

    python tests/s3_server.py --port PORT --parent-pid PID
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
REGION = "us-east-1"
ADMIN_USER = "admin"
BOOTSTRAP_REQUESTS = 3  # iam CreateUser, PutUserPolicy, CreateAccessKey of the admin
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

_ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    pid: int
    admin: Credentials | None  # set when IAM is enforced


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def client(service: str, endpoint_url: str, credentials: Credentials | None = None) -> Any:
    """A boto3 client of the server (path-style S3 addressing, as MinIO uses)."""
    import boto3
    from botocore.config import Config

    creds = credentials or Credentials("testing", "testing")  # any key works while IAM is not enforced
    return boto3.client(
        service, endpoint_url=endpoint_url, region_name=REGION,
        aws_access_key_id=creds.access_key_id, aws_secret_access_key=creds.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@contextlib.contextmanager
def run_moto_server(*, enforce_iam: bool = False) -> Iterator[MotoServer]:
    """A moto server process on a free loopback port, stopped by its PID on exit."""
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AWS_") and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    if enforce_iam:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)
    with tempfile.TemporaryFile(prefix="pseudozone-moto-") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--port", str(port),
             "--parent-pid", str(os.getpid())],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_answering(proc, endpoint, log)
            admin = _bootstrap_admin(endpoint) if enforce_iam else None
            yield MotoServer(endpoint, proc.pid, admin)
        finally:
            _stop(proc)


def _wait_until_answering(proc: subprocess.Popen[bytes], endpoint: str, log: Any) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-4000:].decode(errors="replace")
            raise RuntimeError(f"moto server exited with {proc.returncode} before answering:\n{tail}")
        try:
            # moto's own API: answers without touching a service or the request count
            with opener.open(f"{endpoint}/moto-api/reset-auth", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered (400: reset-auth wants a POST)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto server (pid {proc.pid}) did not answer within {START_TIMEOUT:.0f}s")
        time.sleep(0.2)


def _bootstrap_admin(endpoint: str) -> Credentials:
    iam = client("iam", endpoint)
    iam.create_user(UserName=ADMIN_USER)
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="allow-all", PolicyDocument=_ALLOW_ALL)
    key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


# -- policy evaluation inside the server process ----------------------------------------------


class Unsupported(Exception):
    """A policy element that ``evaluate`` does not evaluate (it fails closed)."""


_STRING_OPS = {
    "StringEquals": (False, False, False),  # (negated, wildcards, ignore case)
    "StringNotEquals": (True, False, False),
    "StringEqualsIgnoreCase": (False, False, True),
    "StringNotEqualsIgnoreCase": (True, False, True),
    "StringLike": (False, True, False),
    "StringNotLike": (True, True, False),
}
_LIST_ACTIONS = ("s3:listbucket", "s3:listbucketversions")
_LIST_KEYS = {"prefix": "s3:prefix", "delimiter": "s3:delimiter", "max-keys": "s3:max-keys"}


def _values(element: Any) -> list[str]:
    values = [element] if isinstance(element, str) else list(element)
    for v in values:
        if not isinstance(v, str):
            raise Unsupported(f"non-string value {v!r}")
        if "${" in v:
            raise Unsupported(f"policy variable in {v!r}")
    return values


def _matches(pattern: str, value: str, *, wildcards: bool = True, ignore_case: bool = False) -> bool:
    if not wildcards:
        return pattern.casefold() == value.casefold() if ignore_case else pattern == value
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(regex, value, flags) is not None


def _conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    for operator, block in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator[: -len("IfExists")] if if_exists else operator
        for key, expected in block.items():
            present = key.lower() in context
            if base == "Null":
                if _values(expected) not in (["true"], ["false"]):
                    raise Unsupported(f"Null condition value {expected!r}")
                if present == (_values(expected) == ["true"]):
                    return False
                continue
            if base not in _STRING_OPS:
                raise Unsupported(f"condition operator {operator}")
            negated, wildcards, ignore_case = _STRING_OPS[base]
            patterns = _values(expected)
            if not present:
                # AWS: a missing key matches nothing; ...IfExists and negated operators hold
                if not (if_exists or negated):
                    return False
                continue
            hit = any(_matches(p, context[key.lower()], wildcards=wildcards, ignore_case=ignore_case)
                      for p in patterns)
            if hit == negated:
                return False
    return True


def _statement_applies(statement: Mapping[str, Any], action: str, resource: str,
                       context: Mapping[str, str]) -> bool:
    if "Principal" in statement or "NotPrincipal" in statement:
        raise Unsupported("principal in an identity policy")
    if ("Action" in statement) == ("NotAction" in statement):
        raise Unsupported("a statement needs exactly one of Action and NotAction")
    if ("Resource" in statement) == ("NotResource" in statement):
        raise Unsupported("a statement needs exactly one of Resource and NotResource")
    listed = _values(statement.get("Action", statement.get("NotAction")))
    action_hit = any(_matches(p, action, ignore_case=True) for p in listed)
    if action_hit != ("Action" in statement):
        return False
    listed = _values(statement.get("Resource", statement.get("NotResource")))
    resource_hit = any(_matches(p, resource) for p in listed)
    if resource_hit != ("Resource" in statement):
        return False
    return _conditions_hold(statement.get("Condition", {}), context)


def evaluate(documents: Sequence[Mapping[str, Any]], action: str, resource: str,
             context: Mapping[str, str]) -> bool:
    """Whether identity policies ``documents`` allow ``action`` on ``resource`` (AWS's order:
    an applicable Deny wins, then an applicable Allow; nothing applicable denies)."""
    context = {k.lower(): v for k, v in context.items()}
    allowed = False
    for document in documents:
        statements = document["Statement"]
        for statement in [statements] if isinstance(statements, dict) else statements:
            effect = statement.get("Effect")
            try:
                applies = _statement_applies(statement, action, resource, context)
            except Unsupported:
                applies = effect != "Allow"  # fail closed
            if applies and effect != "Allow":
                return False
            allowed = allowed or applies
    return allowed


def s3_request_context(action: str, path: str) -> dict[str, str]:
    """The S3 condition keys of a request (``s3:prefix`` & co. of a list request)."""
    if action.lower() not in _LIST_ACTIONS:
        return {}
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    return {key: query[param][0] for param, key in _LIST_KEYS.items() if param in query}


def _install_s3_policy_evaluation() -> None:
    from moto.iam.access_control import IAMPolicy, S3IAMRequest

    def check_action_permitted(self: Any, resource: str) -> None:
        documents = [IAMPolicy(p)._policy_json for p in self._access_key.collect_policies()]
        if not evaluate(documents, self._action, resource, s3_request_context(self._action, self._path)):
            self._raise_access_denied()

    S3IAMRequest.check_action_permitted = check_action_permitted  # type: ignore[method-assign]


def _exit_with(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(0)


def _main(argv: list[str]) -> None:
    import argparse
    import threading

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with, args=(args.parent_pid,), daemon=True).start()
    _install_s3_policy_evaluation()
    from moto.server import main

    main(["-H", HOST, "-p", str(args.port)])


if __name__ == "__main__":
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # tests/ is no package root: its names must not shadow installed ones
    _main(sys.argv[1:])
