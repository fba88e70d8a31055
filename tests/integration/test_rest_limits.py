"""The REST door's limits (429 with Retry-After) and its logs (no token, no query string)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pseudozone.config import Settings
from pseudozone.rights.api import Limits, SlidingWindow, create_app, redact
from pseudozone.rights.requests import register_tenant


def _client(settings: Settings, limits: Limits) -> TestClient:
    return TestClient(create_app(lambda: settings, limits=limits))


def test_sliding_window_counts_per_key_and_forgets() -> None:
    now = [100.0]
    window = SlidingWindow(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert window.retry_after("a") is None
        window.add("a")
    assert window.retry_after("a") == 60
    assert window.retry_after("b") is None
    now[0] += 30
    assert window.retry_after("a", "b") == 30
    now[0] += 30.5
    assert window.retry_after("a") is None


def test_given_repeated_wrong_tokens_then_429_with_retry_after(
        settings: Settings, master_key_env: None) -> None:
    token = register_tenant(settings, "acme")
    with _client(settings, Limits(auth_failures=5)) as client:
        codes = [client.get("/requests", headers={
            "Authorization": f"Bearer pz_acme_wrong{i:020d}"}).status_code for i in range(8)]
        assert codes == [401] * 5 + [429] * 3
        refused = client.get("/requests", headers={"Authorization": f"Bearer {token}"})
    # the address is refused for the window, whatever token it sends next
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


def test_given_failures_against_one_tenant_then_that_tenant_is_limited_from_any_address(
        settings: Settings, master_key_env: None) -> None:
    register_tenant(settings, "acme")
    register_tenant(settings, "globex")
    limits = Limits(auth_failures=3)
    app = create_app(lambda: settings, limits=limits)
    codes = []
    for i in range(4):  # a new client address each time
        with TestClient(app, client=(f"192.0.2.{i}", 5000)) as client:
            codes.append(client.get("/requests", headers={
                "Authorization": f"Bearer pz_acme_guess{i:020d}"}).status_code)
    assert codes == [401, 401, 401, 429]
    with TestClient(app, client=("192.0.2.99", 5000)) as client:
        other = client.get("/requests", headers={
            "Authorization": "Bearer pz_globex_guess00000000000000000001"})
    assert other.status_code == 401  # another tenant is not locked by acme's attacker


def test_given_too_many_submissions_then_429_and_nothing_more_recorded(
        settings: Settings, master_key_env: None) -> None:
    from pseudozone.rights.requests import list_requests

    token = register_tenant(settings, "acme")
    with _client(settings, Limits(submissions=4)) as client:
        codes = [client.post("/requests", headers={"Authorization": f"Bearer {token}"},
                             json={"type": "erase", "user_id": f"usr_{i}"}).status_code for i in range(6)]
    assert codes == [202] * 4 + [429] * 2
    assert len(list_requests(settings, tenant_id="acme")) == 4


def test_redact_removes_tokens_credentials_and_query_strings() -> None:
    line = ('127.0.0.1:5 - "GET /pseudozone/requests?token=pz_acme_AbCdEfGhIjKlMnOpQrSt HTTP/1.1" 401; '
            "Authorization: Bearer s3cr3t-value; pz_acme_ZyXwVuTsRqPoNmLkJiHg")
    out = redact(line)
    for secret in ("pz_acme_AbCdEfGhIjKlMnOpQrSt", "s3cr3t-value", "pz_acme_ZyXwVuTsRqPoNmLkJiHg", "token="):
        assert secret not in out
    assert "/pseudozone/requests?[query removed]" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_given_tokens_in_headers_and_query_strings_then_no_server_log_holds_them(
        settings: Settings, master_key_env: None, tmp_path: Path) -> None:
    """A real uvicorn server on loopback, its access log on; every token it saw is hunted in it."""
    token = register_tenant(settings, "acme")
    port = _free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PSEUDOZONE_HOME": str(settings.root)}
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "pseudozone.rights.api:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "debug"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{base}/health", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            wrong = "pz_acme_WrongWrongWrongWrong0001"
            sent = [
                httpx.get(f"{base}/requests", headers={"Authorization": f"Bearer {token}"}),
                httpx.get(f"{base}/requests?token={token}"),
                httpx.get(f"{base}/requests?access_token={wrong}&x=1"),
                httpx.get(f"{base}/requests/{token}", headers={"Authorization": f"Bearer {wrong}"}),
                httpx.post(f"{base}/requests", headers={"Authorization": f"Bearer {token}"},
                           json={"type": "erase", "user_id": "usr_1"}),
            ]
        finally:
            server.terminate()
            server.wait(timeout=20)
    assert [r.status_code for r in sent] == [200, 401, 401, 401, 202]
    logged = log_path.read_text()
    assert "GET /requests" in logged  # the access log was on
    for secret in (token, wrong, token.split("_")[-1]):
        assert secret not in logged


def test_given_a_tenants_rejected_requests_reach_the_daily_cap_then_more_are_not_stored(
        settings: Settings, master_key_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone.rights.requests import list_requests

    monkeypatch.setenv("PSEUDOZONE_REJECTED_REQUESTS_PER_DAY", "3")
    token = register_tenant(settings, "acme")
    auth = {"Authorization": f"Bearer {token}"}
    with _client(settings, Limits()) as client:
        codes = [client.post("/requests", headers=auth,
                             json={"type": "forget", "user_id": f"u{i}"}).status_code for i in range(5)]
        refused = client.post("/requests", headers=auth, json={"type": "forget", "user_id": "u9"})
        valid = client.post("/requests", headers=auth, json={"type": "erase", "user_id": "u10"})
    assert codes == [422, 422, 422, 429, 429]
    assert 1 <= int(refused.headers["Retry-After"]) <= 86401
    assert valid.status_code == 202  # a valid request is never capped
    states = [r.state for r in list_requests(settings, tenant_id="acme")]
    assert states.count("rejected") == 3 and states.count("accepted") == 1


def test_tenant_add_refuses_an_existing_tenant_and_rotation_replaces_the_token(
        settings: Settings, master_key_env: None) -> None:
    from sqlalchemy import select

    from pseudozone.errors import PseudozoneError
    from pseudozone.rights import requests, store

    old = register_tenant(settings, "acme")
    with pytest.raises(PseudozoneError, match="registered already; its token is kept"):
        register_tenant(settings, "acme")
    assert requests.authenticate(settings, old) == "acme"
    new = requests.rotate_tenant_token(settings, "acme")
    assert requests.authenticate(settings, old) is None and requests.authenticate(settings, new) == "acme"
    with pytest.raises(PseudozoneError, match="no registered tenant"):
        requests.rotate_tenant_token(settings, "nobody")
    with store.engine_for(settings).connect() as conn:
        actions = [r[0] for r in conn.execute(select(store.audit_log.c.action))]
    assert actions.count("tenant.registered") == 1 and actions.count("tenant.token_rotated") == 1
