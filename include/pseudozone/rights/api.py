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
====================================  ==========================================================

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

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError
from pseudozone.rights import requests as rights

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
SettingsFactory = Callable[[], Settings]

_bearer = HTTPBearer(auto_error=False, description="a tenant's API token (from register_tenant)")


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status_code, detail=detail, headers=headers)


# -- dependencies ------------------------------------------------------------------------


def get_settings(request: Request) -> Settings:
    factory: SettingsFactory = request.app.state.settings_factory
    return factory()


SettingsDep = Annotated[Settings, Depends(get_settings)]


def current_tenant(settings: SettingsDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """The tenant the bearer token belongs to; 401 without a valid token."""
    tenant = rights.authenticate(settings, credentials.credentials if credentials else None)
    if tenant is None:
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


def submit_request(tenant: Tenant, body: JsonObject, settings: SettingsDep) -> JSONResponse:
    claimed = body.get("tenant_id")
    if claimed is not None and claimed != tenant:
        raise _error(403, "this token cannot submit requests for another tenant")
    result = rights.submit(settings, {**body, "tenant_id": tenant}, source="rest",
                           actor=f"tenant:{tenant}")
    if result.state == "rejected":
        return JSONResponse(status_code=422, content={"request_id": result.request_id,
                                                      "state": result.state, "reason": result.reason})
    return JSONResponse(status_code=202, content=result.public_dict())


def get_request(request_id: str, tenant: Tenant, settings: SettingsDep) -> dict[str, Any]:
    try:
        found = rights.get_status(settings, request_id, tenant_id=tenant)
    except PseudozoneError:
        # another tenant's request looks exactly like a missing one
        raise _error(404, "no such request") from None
    return found.public_dict()


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


def create_app(settings_factory: SettingsFactory = Settings.from_env) -> FastAPI:
    """The rights-request API; ``settings_factory`` is called once per request."""
    app = FastAPI(title="pseudozone rights requests", version="1",
                  description="Submit and follow data-subject rights requests (one tenant per token).")
    app.state.settings_factory = settings_factory
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(PseudozoneError, _internal_error)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/requests", submit_request, methods=["POST"], status_code=202)
    app.add_api_route("/requests", list_requests, methods=["GET"])
    app.add_api_route("/requests/{request_id}", get_request, methods=["GET"])
    return app
