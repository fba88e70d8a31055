"""Rights-request intake: three doors (CLI, inbox folder, REST), one validated queue.

Every request is recorded, valid or not.  A valid one is ``accepted`` and waits
for the ``process_rights_requests`` DAG; an invalid one is ``rejected`` with a
machine-readable reason.  The raw user id and any corrected values are stored
only as AES-GCM ciphertext (per-tenant request key, request id as associated
data) and are wiped when the request completes.  Nothing here logs, returns or
audits a raw identifier.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import and_, func, insert, select, update

from pseudozone import contracts, state
from pseudozone.config import TENANT_RE, Settings
from pseudozone.errors import ConfigError, KeyMaterialError, PseudozoneError
from pseudozone.keys import NONCE_BYTES, KeyRing
from pseudozone.rights import audit, store

log = logging.getLogger(__name__)

TYPES = ("erase", "rectify", "restrict", "unrestrict", "export", "object", "unobject")
# an objection to a purpose (GDPR art. 21) and its withdrawal (docs/adr/0013-consent-and-objection.md)
OBJECTION_TYPES = ("object", "unobject")
SOURCES = ("cli", "inbox", "rest", "test")
DUE_DAYS = 30
MAX_USER_ID = 256
ALLOWED_KEYS = {"type", "tenant_id", "user_id", "fields", "purpose"}
# where a tenant downloads an export's archive, relative to the REST door's mount point
EXPORT_DOWNLOAD_PATH = "/requests/{request_id}/export"


class RequestRejected(PseudozoneError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class RequestStatus:
    """What a tenant may see of a request: no raw identifier, no value."""

    request_id: str
    tenant_id: str
    type: str
    state: str
    received_at: str
    due_at: str
    completed_at: str | None = None
    subject_id: str | None = None
    reason: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public_dict(self) -> dict[str, Any]:
        """What a tenant sees: without the pseudonym, which would let the tenant link its
        own user ids to the event zone's subject ids, nor server paths: a completed export
        names its download path (relative to the REST door) and its expiry instead."""
        out = asdict(self)
        del out["subject_id"]
        if out["outcome"]:
            hidden = ("retained_files", "archive")
            out["outcome"] = {k: v for k, v in out["outcome"].items() if k not in hidden}
            if self.type == "export" and self.state == "completed":
                out["outcome"]["download"] = EXPORT_DOWNLOAD_PATH.format(request_id=self.request_id)
        return out


def rectifiable_fields() -> dict[str, str]:
    """Columns a rectification may set (PII and quasi-identifiers of the datasets with PII: the
    profile), with their contract type."""
    return {c.name: c.type for d in contracts.pii_datasets() for c in contracts.load(d).columns
            if c.cls in ("pii", "quasi")}


# -- tenants -----------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register_tenant(settings: Settings, tenant_id: str) -> str:
    """Register a new tenant for the REST door; returns its API token once.

    An existing tenant is refused: its token is replaced only by ``rotate_tenant_token``,
    never by a second registration.
    """
    if not TENANT_RE.match(tenant_id):
        raise PseudozoneError("tenant id must be letters, digits, '_', '.', '-' (max 64)")
    token = f"pz_{tenant_id}_{secrets.token_urlsafe(32)}"
    with store.transaction(settings) as conn:
        if conn.execute(select(store.tenants.c.tenant_id)
                        .where(store.tenants.c.tenant_id == tenant_id)).first() is not None:
            raise PseudozoneError(f"tenant {tenant_id!r} is registered already; its token is kept"
                                  " (replace it with 'pseudozone tenant rotate-token')")
        conn.execute(insert(store.tenants).values(tenant_id=tenant_id, token_sha256=_token_hash(token),
                                                  created_at=store.utcnow()))
        audit.append(conn, "tenant.registered", tenant_id=tenant_id)
    return token


def rotate_tenant_token(settings: Settings, tenant_id: str) -> str:
    """A new API token for a registered tenant (the old one stops working at once); audited."""
    token = f"pz_{tenant_id}_{secrets.token_urlsafe(32)}"
    with store.transaction(settings) as conn:
        done = conn.execute(update(store.tenants).where(store.tenants.c.tenant_id == tenant_id)
                            .values(token_sha256=_token_hash(token)))
        if done.rowcount != 1:
            raise PseudozoneError(f"no registered tenant {tenant_id!r}")
        audit.append(conn, "tenant.token_rotated", tenant_id=tenant_id)
    return token


def authenticate(settings: Settings, token: str | None) -> str | None:
    """The tenant a bearer token belongs to, or None."""
    if not token:
        return None
    digest = _token_hash(token)
    with store.engine_for(settings).connect() as conn:
        row = conn.execute(select(store.tenants.c.tenant_id, store.tenants.c.token_sha256)
                           .where(store.tenants.c.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        return None
    return str(row.tenant_id)


def known_tenants(settings: Settings) -> set[str]:
    """Registered tenants and tenants whose data was ingested."""
    with store.engine_for(settings).connect() as conn:
        found = {str(r[0]) for r in conn.execute(select(store.tenants.c.tenant_id))}
    if state.exists(settings):
        with state.connect(settings) as sconn:
            found |= {str(r[0]) for r in sconn.execute("SELECT DISTINCT tenant_id FROM batches")}
    return found


# -- payload encryption ------------------------------------------------------------------


def _seal(keyring: KeyRing, tenant: str, request_id: str, payload: dict[str, Any]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    data = json.dumps(payload, sort_keys=True).encode()
    return nonce + AESGCM(keyring.request_key(tenant)).encrypt(nonce, data, request_id.encode())


def open_payload(keyring: KeyRing, tenant: str, request_id: str, blob: bytes) -> dict[str, Any]:
    try:
        data = AESGCM(keyring.request_key(tenant)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                                           request_id.encode())
    except InvalidTag:
        raise KeyMaterialError(f"request {request_id}: payload does not decrypt") from None
    payload: dict[str, Any] = json.loads(data)
    return payload


# -- validation and submission -----------------------------------------------------------


def _validate(raw: Any, tenants: set[str]) -> tuple[str, str, str, dict[str, str]]:
    if not isinstance(raw, Mapping):
        raise RequestRejected("malformed_request", "a request must be a JSON object")
    extra = set(raw) - ALLOWED_KEYS
    if extra:
        # the caller's key names are not echoed: they could be anything, PII included
        raise RequestRejected("malformed_request", f"{len(extra)} unknown key(s); allowed keys: "
                              f"{', '.join(sorted(ALLOWED_KEYS))}")
    kind = raw.get("type")
    if kind not in TYPES:
        raise RequestRejected("unknown_type", f"type must be one of {', '.join(TYPES)}")
    tenant = raw.get("tenant_id")
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant) or tenant not in tenants:
        raise RequestRejected("unknown_tenant", "tenant_id does not name a known tenant")
    user = raw.get("user_id")
    if not isinstance(user, str) or not user.strip():
        raise RequestRejected("missing_user", "user_id is required")
    if len(user.strip()) > MAX_USER_ID:
        raise RequestRejected("malformed_fields", f"user_id is longer than {MAX_USER_ID} characters")
    fields = raw.get("fields")
    purpose = raw.get("purpose")
    if kind in OBJECTION_TYPES:
        if not isinstance(purpose, str) or purpose not in contracts.PURPOSES:
            raise RequestRejected("malformed_purpose", f"{kind} needs a 'purpose': one of "
                                                       f"{', '.join(sorted(contracts.PURPOSES))}")
    elif purpose is not None:
        raise RequestRejected("malformed_purpose", f"'purpose' is only for object and unobject, not {kind}")
    if kind == "rectify":
        if not isinstance(fields, Mapping) or not fields:
            raise RequestRejected("malformed_fields", "rectify needs a non-empty 'fields' object")
        allowed = rectifiable_fields()
        unknown = [k for k in fields if k not in allowed]
        if unknown:
            raise RequestRejected("malformed_fields",
                                  f"{len(unknown)} field(s) not rectifiable; "
                                  f"allowed: {', '.join(sorted(allowed))}")
        for name, value in fields.items():
            if not isinstance(value, str) or not value.strip():
                raise RequestRejected("malformed_fields", f"field {name!r} needs a non-empty text value")
            if allowed[name] == "date":
                try:
                    dt.date.fromisoformat(value.strip())
                except ValueError:
                    raise RequestRejected("malformed_fields",
                                          f"field {name!r} must be a date (YYYY-MM-DD)") from None
        clean = {str(k): str(v).strip() for k, v in fields.items()}
    elif fields not in (None, {}):
        raise RequestRejected("malformed_fields", f"'fields' is only for rectify, not {kind}")
    else:
        # an objection's purpose is no personal data: kept beside the request, in its outcome
        clean = {"purpose": str(purpose)} if kind in OBJECTION_TYPES else {}
    return kind, tenant, user.strip(), clean


REJECTED_PER_DAY_ENV = "PSEUDOZONE_REJECTED_REQUESTS_PER_DAY"
REJECTED_PER_DAY = 1000


def rejected_per_day() -> int:
    """How many rejected requests of one tenant are recorded per UTC day (the rest are answered only)."""
    raw = os.environ.get(REJECTED_PER_DAY_ENV, "").strip()
    if not raw:
        return REJECTED_PER_DAY
    if not raw.isdigit():
        raise ConfigError(f"{REJECTED_PER_DAY_ENV} must be a whole number")
    return int(raw)


def _rejected_today(settings: Settings, tenant: str, now: dt.datetime) -> int:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with store.engine_for(settings).connect() as conn:
        return int(conn.execute(select(func.count()).select_from(store.requests).where(
            store.requests.c.tenant_id == tenant, store.requests.c.state == "rejected",
            store.requests.c.received_at >= midnight)).scalar_one())


def submit(settings: Settings, raw: Any, *, source: str, keyring: KeyRing | None = None,
           actor: str | None = None) -> RequestStatus:
    """Validate and record one request; a rejected request is recorded too, with its reason."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}")
    request_id = str(uuid.uuid4())
    now = store.utcnow()
    due = now + dt.timedelta(days=DUE_DAYS)
    shown_tenant = raw.get("tenant_id") if isinstance(raw, Mapping) else None
    shown_tenant = shown_tenant if isinstance(shown_tenant, str) and TENANT_RE.match(shown_tenant) else "?"
    shown_type = raw.get("type") if isinstance(raw, Mapping) else None
    shown_type = shown_type if shown_type in TYPES else "?"
    try:
        kind, tenant, user, fields = _validate(raw, known_tenants(settings))
    except RequestRejected as rejected:
        reason = {"code": rejected.code, "detail": rejected.detail}
        if _rejected_today(settings, shown_tenant, now) >= rejected_per_day():
            # a flood of invalid requests is answered, not stored (a tenant's sender in a loop,
            # or someone probing): the reason says so, and the log has counts only
            log.warning("request rejected (%s) and not recorded: tenant %s has %d rejected requests"
                        " today, the cap", rejected.code, shown_tenant, rejected_per_day())
            return RequestStatus(request_id=request_id, tenant_id=shown_tenant, type=shown_type,
                                 state="rejected", received_at=now.isoformat(), due_at=due.isoformat(),
                                 completed_at=now.isoformat(), reason={**reason, "recorded": False})
        with store.transaction(settings) as conn:
            conn.execute(insert(store.requests).values(
                request_id=request_id, tenant_id=shown_tenant, type=shown_type, state="rejected",
                source=source, received_at=now, due_at=due, completed_at=now,
                reason=json.dumps(reason)))
            audit.append(conn, "request.received", actor=actor or source, request_id=request_id,
                         tenant_id=shown_tenant, details={"type": shown_type, "source": source},
                         keyring=keyring)
            audit.append(conn, "request.rejected", actor=actor or source, request_id=request_id,
                         tenant_id=shown_tenant, details=reason, keyring=keyring)
        return get_status(settings, request_id)
    keyring = (keyring or KeyRing.load(settings)).use_versions(state.pseudonym_versions(settings))
    subject_id = keyring.subject_id(tenant, user)
    sealed = _seal(keyring, tenant, request_id, {"user_id": user, "fields": fields})
    with store.transaction(settings) as conn:
        conn.execute(insert(store.requests).values(
            request_id=request_id, tenant_id=tenant, subject_id=subject_id, type=kind, state="accepted",
            source=source, payload_enc=sealed, received_at=now, due_at=due, accepted_at=now))
        audit.append(conn, "request.received", actor=actor or source, request_id=request_id,
                     tenant_id=tenant, subject_id=subject_id, details={"type": kind, "source": source},
                     keyring=keyring)
        audit.append(conn, "request.accepted", actor=actor or source, request_id=request_id,
                     tenant_id=tenant, subject_id=subject_id,
                     details={"type": kind, "fields": sorted(fields), "due_at": due.isoformat()},
                     keyring=keyring)
    return get_status(settings, request_id)


def _status_of(row: Any) -> RequestStatus:
    def iso(value: dt.datetime | None) -> str | None:
        v = store.as_utc(value)
        return None if v is None else v.isoformat()

    return RequestStatus(
        request_id=row.request_id, tenant_id=row.tenant_id, type=row.type, state=row.state,
        received_at=iso(row.received_at) or "", due_at=iso(row.due_at) or "",
        completed_at=iso(row.completed_at), subject_id=row.subject_id,
        reason=json.loads(row.reason) if row.reason else None,
        outcome=json.loads(row.outcome) if row.outcome else None)


def get_status(settings: Settings, request_id: str, *, tenant_id: str | None = None) -> RequestStatus:
    """A request's status; with ``tenant_id``, only if it belongs to that tenant."""
    cond = store.requests.c.request_id == request_id
    if tenant_id is not None:
        cond = and_(cond, store.requests.c.tenant_id == tenant_id)
    with store.engine_for(settings).connect() as conn:
        row = conn.execute(select(store.requests).where(cond)).first()
    if row is None:
        raise PseudozoneError(f"no request {request_id!r}" + (" for this tenant" if tenant_id else ""))
    return _status_of(row)


def list_requests(settings: Settings, *, tenant_id: str | None = None,
                  states: tuple[str, ...] | None = None) -> list[RequestStatus]:
    query = select(store.requests).order_by(store.requests.c.received_at)
    if tenant_id is not None:
        query = query.where(store.requests.c.tenant_id == tenant_id)
    if states:
        query = query.where(store.requests.c.state.in_(states))
    with store.engine_for(settings).connect() as conn:
        return [_status_of(r) for r in conn.execute(query)]


def retry(settings: Settings, request_id: str, *, actor: str = "cli") -> RequestStatus:
    """Put a failed request back in the queue (its encrypted payload is still there)."""
    with store.transaction(settings) as conn:
        row = conn.execute(select(store.requests).where(store.requests.c.request_id == request_id)).first()
        if row is None or row.state != "failed":
            raise PseudozoneError(f"request {request_id!r} is not a failed request")
        conn.execute(store.requests.update().where(store.requests.c.request_id == request_id)
                     .values(state="accepted", completed_at=None, reason=None, run_id=None))
        audit.append(conn, "request.retried", actor=actor, request_id=request_id, tenant_id=row.tenant_id,
                     subject_id=row.subject_id)
    return get_status(settings, request_id)


# -- the inbox door ----------------------------------------------------------------------


def inbox_dir(settings: Settings) -> Path:
    return settings.root / "requests" / "inbox"


def intake_inbox(settings: Settings, *, keyring: KeyRing | None = None) -> list[RequestStatus]:
    """Submit every ``*.json`` in ``requests/inbox/`` and remove it (it holds a raw identifier).

    An unreadable file is recorded as a rejected request and moved, as it is, to
    ``zones/quarantine/requests/`` (a compliance-only place) beside its reason.
    """
    from pseudozone import zones
    from pseudozone.lake import layout

    inbox = inbox_dir(settings)
    inbox.mkdir(parents=True, exist_ok=True)
    out: list[RequestStatus] = []
    for path in sorted(inbox.glob("*.json")):
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raw = None
        status = submit(settings, raw, source="inbox", keyring=keyring)
        if raw is None:
            target = layout.request_quarantine_file(settings, status.request_id)
            zones.publish(path, target)  # the quarantine's own mode (0600), whatever the inbox had
            zones.write_json({"request_id": status.request_id, "file": path.name,
                              **(status.reason or {})}, target.with_name(target.name + ".reason.json"))
        else:
            path.unlink()
        out.append(status)
    return out


# -- legal holds and restrictions ---------------------------------------------------------


HOLD_REASON_CODES = ("litigation", "regulatory_investigation", "tax_audit", "law_enforcement",
                     "contract", "other")
_SEALED_REASON = "aesgcm:"


def add_legal_hold(settings: Settings, *, tenant_id: str, reason: str, reason_code: str = "other",
                   dataset: str | None = None, user_id: str | None = None,
                   keyring: KeyRing | None = None) -> int:
    """Keep data of a tenant (optionally one dataset and/or one subject) through erasures.

    ``reason`` is free text (it may name people or cases): it is kept only encrypted under
    the tenant's hold key; the audit log, request outcomes and tenants see ``reason_code``.
    """
    if reason_code not in HOLD_REASON_CODES:
        raise PseudozoneError(f"a hold's reason code must be one of {', '.join(HOLD_REASON_CODES)}")
    if not reason.strip():
        raise PseudozoneError("a hold needs a reason: say why the data is kept (it is stored encrypted)")
    if dataset is not None:
        contracts.load(dataset)  # raises for an unknown dataset
    keyring = (keyring or KeyRing.load(settings)).use_versions(state.pseudonym_versions(settings))
    subject = None if user_id is None else keyring.subject_id(tenant_id, user_id)
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + AESGCM(keyring.hold_key(tenant_id)).encrypt(
        nonce, reason.strip().encode(), f"pseudozone/hold-reason|{tenant_id}".encode())
    with store.transaction(settings) as conn:
        result = conn.execute(insert(store.legal_holds).values(
            tenant_id=tenant_id, dataset=dataset, subject_id=subject, reason_code=reason_code,
            reason=_SEALED_REASON + base64.b64encode(sealed).decode(), created_at=store.utcnow()))
        key = result.inserted_primary_key
        assert key is not None
        hold_id = int(key[0])
        audit.append(conn, "hold.added", tenant_id=tenant_id, subject_id=subject,
                     details={"hold_id": hold_id, "dataset": dataset, "reason_code": reason_code},
                     keyring=keyring)
    return hold_id


def list_holds(settings: Settings, *, tenant_id: str | None = None,
               include_lifted: bool = False) -> list[dict[str, Any]]:
    """Legal holds (open ones unless ``include_lifted``), oldest first: ids, scope, reason code and
    dates; never the free-text reason."""
    query = select(store.legal_holds).order_by(store.legal_holds.c.hold_id)
    if tenant_id is not None:
        query = query.where(store.legal_holds.c.tenant_id == tenant_id)
    if not include_lifted:
        query = query.where(store.legal_holds.c.released_at.is_(None))
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(query).all()
    return [{"hold_id": int(r.hold_id), "tenant_id": r.tenant_id, "dataset": r.dataset,
             "subject_id": r.subject_id, "reason_code": r.reason_code or "other",
             "created_at": (store.as_utc(r.created_at) or r.created_at).isoformat(),
             "lifted_at": None if r.released_at is None else (store.as_utc(r.released_at)
                                                             or r.released_at).isoformat()}
            for r in rows]


def lift_legal_hold(settings: Settings, hold_id: int, *, reason_code: str = "other",
                    actor: str = "cli") -> None:
    """Lift an open hold (audited). Retention applies again to what it kept from the next nightly
    run on. Lifting erases nothing by itself: rows of subjects erased while the hold stood are
    reported by the nightly erasure check until an erase request for them is filed again."""
    if reason_code not in HOLD_REASON_CODES:
        raise PseudozoneError(f"a hold's reason code must be one of {', '.join(HOLD_REASON_CODES)}")
    with store.transaction(settings) as conn:
        row = conn.execute(select(store.legal_holds).where(store.legal_holds.c.hold_id == hold_id)).first()
        if row is None:
            raise PseudozoneError(f"no legal hold {hold_id}")
        if row.released_at is not None:
            raise PseudozoneError(f"legal hold {hold_id} was lifted already")
        conn.execute(update(store.legal_holds).where(store.legal_holds.c.hold_id == hold_id)
                     .values(released_at=store.utcnow()))
        audit.append(conn, "hold.lifted", actor=actor, tenant_id=row.tenant_id, subject_id=row.subject_id,
                     details={"hold_id": hold_id, "dataset": row.dataset, "reason_code": reason_code})


def hold_reason(settings: Settings, hold_id: int, *, keyring: KeyRing | None = None) -> str:
    """A hold's free-text reason, decrypted (for the compliance role; never shown to tenants)."""
    with store.engine_for(settings).connect() as conn:
        row = conn.execute(select(store.legal_holds.c.tenant_id, store.legal_holds.c.reason)
                           .where(store.legal_holds.c.hold_id == hold_id)).first()
    if row is None:
        raise PseudozoneError(f"no legal hold {hold_id}")
    if not row.reason.startswith(_SEALED_REASON):
        return str(row.reason)  # a hold recorded before reasons were encrypted
    blob = base64.b64decode(row.reason.removeprefix(_SEALED_REASON))
    try:
        data = AESGCM((keyring or KeyRing.load(settings)).hold_key(row.tenant_id)).decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], f"pseudozone/hold-reason|{row.tenant_id}".encode())
    except InvalidTag:
        raise KeyMaterialError(f"legal hold {hold_id}: reason does not decrypt") from None
    return data.decode()
