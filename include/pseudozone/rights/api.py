"""The REST door for rights requests: a small FastAPI app, mounted by an Airflow plugin.

Contract (paths relative to the mount point, ``/pseudozone`` in the API server):

====================================  ==========================================================
``GET  /health``                      200 ``{"status": "ok"}``; no authentication
``POST /requests``                    202 the request's status (``accepted``);
                                      422 ``{"request_id", "state": "rejected", "reason"}`` (the
                                      rejected request is recorded all the same);
                                      400 body is not a JSON object; 413 body too large;
                                      403 body names another tenant
``GET  /requests/{request_id}``       200 the request's status; 404 unknown *or another tenant's*
``GET  /requests``                    200 a JSON array of the tenant's requests, oldest first
``GET  /requests/{request_id}/export`` 200 the export's encrypted archive (``application/octet-stream``);
                                      404 unknown, another tenant's or not an export; 409 not
                                      completed yet; 410 expired or deleted
====================================  ==========================================================

A completed export's status names its download path and ``expires_at``; the first
``GET /requests/{request_id}`` after completion also carries the archive's one-time key
(``outcome.key``, URL-safe base64), which is never given again (later answers say
``key_handed_out_at``; the list never has it).  See ``rights.export`` for the format.

Every endpoint but ``/health`` needs ``Authorization: Bearer <token>`` (a token from
``register_tenant``); a missing or unknown token gives 401 with ``WWW-Authenticate: Bearer``.
The tenant is the token's: a body may repeat it but never name another one.

No response, error or log line here carries a request body, a user id or a field value:
the body is parsed by hand (FastAPI's validation errors echo their input), every error
detail is a fixed sentence, and request validation is ``requests.submit``'s, whose reasons
name keys and fields, never values.  Database calls are synchronous, so the endpoints
that make them are plain ``def`` functions, which FastAPI runs in its thread pool.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from upath import UPath

from pseudozone.config import Settings
from pseudozone.errors import ConfigError, PseudozoneError
from pseudozone.lake import layout
from pseudozone.rights import requests as rights
from pseudozone.rights import store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
SettingsFactory = Callable[[], Settings]

_bearer = HTTPBearer(auto_error=False, description="a tenant's API token (from register_tenant)")


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status_code, detail=detail, headers=headers)


# -- limits and log hygiene ----------------------------------------------------------------

AUTH_FAILURES_ENV = "PSEUDOZONE_API_AUTH_FAILURES_PER_MINUTE"
SUBMISSIONS_ENV = "PSEUDOZONE_API_SUBMISSIONS_PER_MINUTE"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1")
    return int(raw)


@dataclass(frozen=True)
class Limits:
    """What the door takes from one client address or one tenant before it answers 429.

    ``auth_failures`` and ``submissions`` count per ``window_s`` seconds, per client
    address and per tenant (for a failed authentication, the tenant its token claims);
    they live in this process, so each API-server worker counts its own.
    """

    auth_failures: int = 10
    submissions: int = 60
    window_s: float = 60.0

    @classmethod
    def from_env(cls) -> Limits:
        return cls(auth_failures=_env_int(AUTH_FAILURES_ENV, cls.auth_failures),
                   submissions=_env_int(SUBMISSIONS_ENV, cls.submissions))


class SlidingWindow:
    """Events per key over the last ``window_s`` seconds (thread-safe; endpoints run in a pool)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window_s:
            events.popleft()
        return events

    def retry_after(self, *keys: str) -> int | None:
        """Seconds until every key is under its limit again; None when all are now."""
        now = self._clock()
        waits = []
        with self._lock:
            for key in keys:
                events = self._live(key, now)
                if len(events) >= self.limit:
                    waits.append(events[len(events) - self.limit] + self.window_s - now)
                if not events:
                    self._events.pop(key, None)
        return max(1, math.ceil(max(waits))) if waits else None

    def add(self, *keys: str) -> None:
        now = self._clock()
        with self._lock:
            for key in keys:
                self._live(key, now).append(now)


def _too_many(seconds: int, what: str) -> HTTPException:
    return _error(429, f"too many {what}; retry later", {"Retry-After": str(seconds)})


_TOKEN_SHAPE = re.compile(r"pz_(?P<tenant>[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})_[A-Za-z0-9_\-]{16,}")


def _claimed_tenant(token: str | None) -> str | None:
    """The tenant a token's shape names (``pz_<tenant>_<secret>``), valid or not."""
    match = _TOKEN_SHAPE.fullmatch(token or "")
    return match.group("tenant") if match else None


_REDACT = (
    (re.compile(r"pz_[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}_[A-Za-z0-9_\-]{16,}"), "[token]"),
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=\-]+"), r"\1\2[token]"),
    # a query string may carry a credential under any name: none reaches a log
    (re.compile(r"\?[^\s\"']*"), "?[query removed]"),
)


def redact(text: str) -> str:
    """``text`` without tokens, credentials or query strings."""
    for pattern, replacement in _REDACT:
        text = pattern.sub(replacement, text)
    return text


class RedactTokens(logging.Filter):
    """Rewrites every record so that no token or query string reaches a log handler.

    The API server's access log (``uvicorn.access``) formats its record's arguments
    itself, so arguments are redacted one by one and keep their places.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


LOGGERS_TO_REDACT = ("uvicorn", "uvicorn.access", "uvicorn.error", "fastapi", "airflow.api_fastapi", __name__)


def install_log_redaction() -> None:
    """Put ``RedactTokens`` on the server's loggers and on the root logger's handlers (once)."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in LOGGERS_TO_REDACT]
    targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(f, RedactTokens) for f in target.filters):
            target.addFilter(RedactTokens())


# -- dependencies ------------------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    factory: SettingsFactory = request.app.state.settings_factory
    return factory()


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _client(request: Request) -> str:
    return f"addr:{request.client.host if request.client else '?'}"


def current_tenant(request: Request, settings: SettingsDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant the bearer token belongs to; 401 without a valid token, 429 after too many failures.

    Failures count per client address and per tenant the token claims; past the limit
    the door answers 429 before it looks the token up.
    """
    token = credentials.credentials if credentials else None
    failures: SlidingWindow = request.app.state.auth_failures
    keys = [_client(request)]
    claimed = _claimed_tenant(token)
    if claimed:
        keys.append(f"tenant:{claimed}")
    wait = failures.retry_after(*keys)
    if wait is not None:
        log.warning("rights API: authentication refused for %ds (too many failed attempts)", wait)
        raise _too_many(wait, "failed authentications")
    tenant = rights.authenticate(settings, token)
    if tenant is None:
        failures.add(*keys)
        raise _error(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    return tenant


Tenant = Annotated[str, Depends(current_tenant)]


async def json_object_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, read by hand so that no error can quote it."""
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _error(413, f"body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        raw: Any = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raw = None
    if not isinstance(raw, dict):
        raise _error(400, "body must be a JSON object")
    return raw


JsonObject = Annotated[dict[str, Any], Depends(json_object_body)]


# -- endpoints ---------------------------------------------------------------------------


async def health() -> dict[str, str]:
    return {"status": "ok"}


def submit_request(request: Request, tenant: Tenant, body: JsonObject, settings: SettingsDep) -> JSONResponse:
    submissions: SlidingWindow = request.app.state.submissions
    keys = (_client(request), f"tenant:{tenant}")
    wait = submissions.retry_after(*keys)
    if wait is not None:
        raise _too_many(wait, "requests submitted")
    submissions.add(*keys)
    claimed = body.get("tenant_id")
    if claimed is not None and claimed != tenant:
        raise _error(403, "this token cannot submit requests for another tenant")
    result = rights.submit(settings, {**body, "tenant_id": tenant}, source="rest",
                           actor=f"tenant:{tenant}")
    if result.state == "rejected":
        if result.reason and result.reason.get("recorded") is False:
            # the tenant's rejected requests of today reached the cap: answered, not stored
            now = time.time()
            raise _too_many(int(86400 - now % 86400) + 1, "rejected requests today (this one was not"
                            f" recorded: {result.reason['code']})")
        return JSONResponse(status_code=422, content={"request_id": result.request_id,
                                                      "state": result.state, "reason": result.reason})
    return JSONResponse(status_code=202, content=result.public_dict())


def get_request(request_id: str, tenant: Tenant, settings: SettingsDep) -> dict[str, Any]:
    try:
        found = rights.get_status(settings, request_id, tenant_id=tenant)
    except PseudozoneError:
        # another tenant's request looks exactly like a missing one
        raise _error(404, "no such request") from None
    out = found.public_dict()
    if found.type == "export" and found.state == "completed" and out["outcome"] is not None:
        # the archive's key, the first time only (the answer is not logged anywhere); the
        # export module (Arrow) loads here, not when the plugin loads in every Airflow process
        from pseudozone.rights import export

        out["outcome"].update(export.hand_out_key(settings, request_id, tenant))
    return out


def download_export(request_id: str, tenant: Tenant, settings: SettingsDep) -> Response:
    """The tenant's completed export, encrypted as written; 410 once it expired or was deleted."""
    try:
        found = rights.get_status(settings, request_id, tenant_id=tenant)
    except PseudozoneError:
        raise _error(404, "no such export") from None
    if found.type != "export":
        raise _error(404, "no such export")
    if found.state != "completed":
        raise _error(409, "the export is not ready yet")
    from pseudozone.rights import export

    completed = None if found.completed_at is None else dt.datetime.fromisoformat(found.completed_at)
    expiry = export.expiry_of(found.outcome, completed)
    if expiry is not None and expiry <= store.utcnow():
        raise _error(410, "the export has expired")
    path = layout.export_file(settings, tenant, request_id)
    if not path.is_file():
        raise _error(410, "the export archive was deleted")
    headers = {"Cache-Control": "no-store"}
    if isinstance(path, Path):
        return FileResponse(path, media_type="application/octet-stream", filename=path.name, headers=headers)
    # on object storage: streamed from the object, a block at a time
    disposition = f'attachment; filename="{path.name}"'
    return StreamingResponse(_blocks(path), media_type="application/octet-stream",
                             headers={**headers, "Content-Disposition": disposition})


def _blocks(path: UPath, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


def list_requests(tenant: Tenant, settings: SettingsDep) -> list[dict[str, Any]]:
    return [r.public_dict() for r in rights.list_requests(settings, tenant_id=tenant)]


# -- error handlers ----------------------------------------------------------------------


async def _validation_error(_request: Request, _exc: Exception) -> JSONResponse:
    # FastAPI's default handler echoes the offending input; this one never does.
    return JSONResponse(status_code=422, content={"detail": "invalid request"})


async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    # PseudozoneError messages are safe to log (see errors.py); they are still not returned.
    log.error("rights API: %s: %s", type(exc).__name__, exc)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def create_app(settings_factory: SettingsFactory = Settings.from_env, *,
               limits: Limits | None = None) -> FastAPI:
    """The rights-request API; ``settings_factory`` is called once per request.

    ``limits`` default to ``Limits.from_env()``. Creating the app also installs the log
    redaction (``RedactTokens``) on the server's loggers.
    """
    limits = limits or Limits.from_env()
    install_log_redaction()
    app = FastAPI(title="pseudozone rights requests", version="1",
                  description="Submit and follow data-subject rights requests (one tenant per token).")
    app.state.settings_factory = settings_factory
    app.state.limits = limits
    app.state.auth_failures = SlidingWindow(limits.auth_failures, limits.window_s)
    app.state.submissions = SlidingWindow(limits.submissions, limits.window_s)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PseudozoneError, _internal_error)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/requests", submit_request, methods=["POST"], status_code=202)
    app.add_api_route("/requests", list_requests, methods=["GET"])
    app.add_api_route("/requests/{request_id}", get_request, methods=["GET"])
    app.add_api_route(rights.EXPORT_DOWNLOAD_PATH, download_export, methods=["GET"],
                      response_class=FileResponse)
    return app
