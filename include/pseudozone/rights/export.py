"""Export: a ZIP with everything pseudozone holds about one subject, encrypted for its tenant.

The ZIP holds the subject's profile (decrypted from the PII zone), its rows of every
dataset in the event and restricted zones (events, server logs, the pseudonymous part
of the profile), each as JSON and CSV, a manifest with the SHA-256 of every file and a
README.  It holds that subject's data only, with fixed timestamps, so the same data
gives the same ZIP.

On disk (``exports/<tenant>/<request id>.zip.enc``, mode 0600, written atomically) the ZIP
is encrypted with AES-256-GCM under a random key made for this archive alone::

    b"PZEXPORT"  (8 bytes, magic)
    0x01         (1 byte, format version)
    nonce        (12 random bytes)
    ciphertext   (AES-256-GCM of the whole ZIP, associated data: the request id in UTF-8;
                  its last 16 bytes are the GCM tag)

The archive key is never written in the clear: the request store keeps it wrapped
(AES-GCM) under the tenant's export key (HKDF of the master key) while the archive is
kept, so that the nightly run can open and check the archive; the REST door gives it to
the tenant once, in the first status answer after completion (``hand_out_key``), and
the tenant downloads the archive from ``GET /requests/<id>/export`` until it expires
(``PSEUDOZONE_EXPORT_EXPIRY_DAYS`` after completion, 7 by default).  Deleting the
archive (expiry, or an erasure of its subject) wipes the wrapped key with it.  No log
line, audit entry, report or task result carries the key (docs/adr/0004-rights-processing.md).

The archive goes to the tenant, so it carries no pseudonym: every record names
the subject by the tenant's own ``user_id``, and the keyed pseudonyms of the event
zone (``subject_id``, the cookie's, the linkable ids') are left out.  A tenant
holding them could join its own user ids to the event zone (docs/adr/0010-linkage.md).
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import hashlib
import io
import json
import os
import zipfile
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update

from pseudozone import contracts, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.errors import ConfigError, KeyMaterialError, PseudozoneError
from pseudozone.keys import KEY_BYTES, NONCE_BYTES, KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.lake import index, layout
from pseudozone.lake.subjects import COOKIE_COLUMN, links
from pseudozone.rights import audit, requests, store

_EPOCH = (2000, 1, 1, 0, 0, 0)

README = """\
Your data held by {tenant} in its analytics platform (pseudozone)
=================================================================

Request: {request_id}   Type: export   Prepared: {prepared}

This archive holds every record about you that the platform's lake keeps:

* profile.json / profile.csv: your profile as you or the service provided it
  (name, email, phone, address), decrypted for this export.
* <dataset>.json / <dataset>.csv: your activity records (events, server_logs) and
  the analytics part of your profile, as the platform's analysts see them, each
  with your user id ("user_id"). Analysts see them under a pseudonym instead, and
  without the platform's event, session and request ids; IP addresses are kept only
  as a network range, times to the second (sign-up dates to the day), and free text
  has emails, phone numbers and similar removed.
* manifest.json: every file with its size and SHA-256 checksum.

Records of processing that is restricted at your request are included and marked
"zone": "restricted". Records made while you were not logged in, on a browser or device
(cookie) seen only with your account, are included and marked "linked_cookie": true.
"""


# -- the encrypted archive ------------------------------------------------------------------

MAGIC = b"PZEXPORT"
FORMAT_VERSION = 1
HEADER_BYTES = len(MAGIC) + 1 + NONCE_BYTES
EXPIRY_ENV = "PSEUDOZONE_EXPORT_EXPIRY_DAYS"
EXPIRY_DAYS = 7


class ArchiveError(PseudozoneError):
    """An export archive that is not in the format, or does not decrypt (names no key or value)."""


def expiry_days() -> int:
    """Days an export can be downloaded after its request completed (``PSEUDOZONE_EXPORT_EXPIRY_DAYS``)."""
    raw = os.environ.get(EXPIRY_ENV, "").strip()
    if not raw:
        return EXPIRY_DAYS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{EXPIRY_ENV} must be a whole number of days, at least 1")
    return int(raw)


def expires_at(completed: dt.datetime) -> dt.datetime:
    """When the export of a request completed at ``completed`` expires."""
    return completed + dt.timedelta(days=expiry_days())


def expiry_of(outcome: dict[str, Any] | None, completed: dt.datetime | None) -> dt.datetime | None:
    """A completed export's expiry: the one its outcome recorded, else its completion plus today's setting."""
    recorded = (outcome or {}).get("expires_at")
    if isinstance(recorded, str):
        return store.as_utc(dt.datetime.fromisoformat(recorded))
    return None if completed is None else expires_at(completed)


def encrypt_archive(blob: bytes, request_id: str, key: bytes) -> bytes:
    """The archive file's bytes: header (magic, version, nonce), then AES-256-GCM of ``blob``."""
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + bytes([FORMAT_VERSION]) + nonce + AESGCM(key).encrypt(nonce, blob, request_id.encode())


def decrypt_archive(data: bytes, request_id: str, key: bytes) -> bytes:
    """The ZIP inside an archive file; ``ArchiveError`` when it is not one, or was changed."""
    if len(data) < HEADER_BYTES + 16 or not data.startswith(MAGIC):
        raise ArchiveError(f"export {request_id}: not an encrypted export archive")
    if data[len(MAGIC)] != FORMAT_VERSION:
        raise ArchiveError(f"export {request_id}: archive format version {data[len(MAGIC)]} is unknown")
    nonce = data[len(MAGIC) + 1:HEADER_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, data[HEADER_BYTES:], request_id.encode())
    except (InvalidTag, ValueError):
        raise ArchiveError(f"export {request_id}: the archive does not decrypt (wrong key, or changed)"
                           ) from None


def encode_key(key: bytes) -> str:
    """How the tenant receives an archive key: URL-safe base64 (44 characters)."""
    return base64.urlsafe_b64encode(key).decode()


def decode_key(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        raise ArchiveError("an export key is URL-safe base64") from None
    if len(key) != KEY_BYTES:
        raise ArchiveError(f"an export key is {KEY_BYTES} bytes")
    return key


def _key_ad(tenant: str, request_id: str) -> bytes:
    return f"pseudozone/export-key|{tenant}|{request_id}".encode()


def _wrap_key(keyring: KeyRing, tenant: str, request_id: str, key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(keyring.export_key(tenant)).encrypt(nonce, key, _key_ad(tenant, request_id))


def _unwrap_key(keyring: KeyRing, tenant: str, request_id: str, wrapped: bytes) -> bytes:
    try:
        return AESGCM(keyring.export_key(tenant)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                                          _key_ad(tenant, request_id))
    except (InvalidTag, ValueError):
        raise KeyMaterialError(f"export {request_id}: the archive key does not unwrap "
                               "(wrong master key or changed request store)") from None


def stored_key(keyring: KeyRing, tenant: str, request_id: str, wrapped: bytes | None) -> bytes:
    """An archive's key from its wrapped copy in the request store (the nightly check's way in)."""
    if wrapped is None:
        raise ArchiveError(f"export {request_id}: the request store holds no key for the archive")
    return _unwrap_key(keyring, tenant, request_id, wrapped)


def archive_key(settings: Settings, request_id: str, *, keyring: KeyRing | None = None) -> tuple[str, bytes]:
    """(tenant, key) of an export request's archive, unwrapped from the request store."""
    with store.engine_for(settings).connect() as conn:
        row = conn.execute(select(store.requests.c.tenant_id, store.requests.c.export_key_enc)
                           .where(store.requests.c.request_id == request_id,
                                  store.requests.c.type == "export")).first()
    if row is None:
        raise PseudozoneError(f"no export request {request_id!r}")
    return row.tenant_id, stored_key(keyring or KeyRing.load(settings), row.tenant_id, request_id,
                                     row.export_key_enc)


def open_archive(settings: Settings, request_id: str, *, keyring: KeyRing | None = None) -> bytes:
    """The ZIP of an export request's archive, decrypted with the key the request store keeps.

    For the compliance role and tests; a tenant decrypts with the key it was handed (README).
    """
    tenant, key = archive_key(settings, request_id, keyring=keyring)
    data = layout.export_file(settings, tenant, request_id).read_bytes()
    return decrypt_archive(data, request_id, key)


def hand_out_key(settings: Settings, request_id: str, tenant: str, *, now: dt.datetime | None = None,
                 keyring: KeyRing | None = None) -> dict[str, Any]:
    """What the tenant's status answer says of its export's key: ``{"key": ...}`` the first time
    after completion (recorded and audited, so never again), ``{"key_handed_out_at": ...}`` after
    that, nothing while there is no archive to open (not completed, expired or deleted)."""
    now = now or store.utcnow()
    cols = store.requests.c
    query = (select(cols.type, cols.state, cols.subject_id, cols.outcome, cols.completed_at,
                    cols.export_key_enc, cols.export_key_handed_at)
             .where(cols.request_id == request_id, cols.tenant_id == tenant))
    with store.engine_for(settings).connect() as conn:  # a status poll takes no write lock
        row = conn.execute(query).first()
    if row is None or row.export_key_enc is None or row.export_key_handed_at is not None:
        return _hand_out_view(row)
    with store.transaction(settings) as conn:
        row = conn.execute(query).first()  # again, under the write lock: one caller gets the key
        if row is None or row.export_key_handed_at is not None:
            return _hand_out_view(row)
        if row.type != "export" or row.state != "completed" or row.export_key_enc is None:
            return {}
        expiry = expiry_of(json.loads(row.outcome or "{}"), store.as_utc(row.completed_at))
        if expiry is not None and expiry <= now:
            return {}
        keyring = keyring or KeyRing.load(settings)
        key = _unwrap_key(keyring, tenant, request_id, row.export_key_enc)
        conn.execute(update(store.requests).where(cols.request_id == request_id,
                                                  cols.export_key_handed_at.is_(None))
                     .values(export_key_handed_at=now))
        audit.append(conn, "export.key_handed_out", actor=f"tenant:{tenant}", request_id=request_id,
                     tenant_id=tenant, subject_id=row.subject_id, details={"via": "rest"}, keyring=keyring)
    return {"key": encode_key(key)}


def _hand_out_view(row: Any) -> dict[str, Any]:
    """What a status answer says of a key handed out already (or of none)."""
    if row is None or row.type != "export" or row.state != "completed" or row.export_key_handed_at is None:
        return {}
    handed = store.as_utc(row.export_key_handed_at)
    assert handed is not None
    return {"key_handed_out_at": handed.isoformat()}


def delete_archive(settings: Settings, tenant: str, request_id: str) -> bool:
    """Delete an export's archive (and an unencrypted one of before issue 10) and wipe its
    wrapped key; whether there was an archive."""
    found = False
    for path in (layout.export_file(settings, tenant, request_id),
                 layout.legacy_export_file(settings, tenant, request_id)):
        if zones.remove(path):
            found = True
    with store.transaction(settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == request_id,
                                                  store.requests.c.export_key_enc.is_not(None))
                     .values(export_key_enc=None))
    return found


def purge_expired(settings: Settings, *, now: dt.datetime | None = None,
                  keyring: KeyRing | None = None) -> list[str]:
    """Delete the archives of completed exports past their expiry (audited); their request ids."""
    now = now or store.utcnow()
    cols = store.requests.c
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(cols.request_id, cols.tenant_id, cols.subject_id, cols.outcome,
                                   cols.completed_at)
                            .where(cols.type == "export", cols.state == "completed")
                            .order_by(cols.request_id)).all()
    deleted = []
    for row in rows:
        expiry = expiry_of(json.loads(row.outcome or "{}"), store.as_utc(row.completed_at))
        if expiry is None or expiry > now:
            continue
        if delete_archive(settings, row.tenant_id, row.request_id):
            deleted.append(row.request_id)
            with store.transaction(settings) as conn:
                audit.append(conn, "export.deleted", actor="nightly_compliance", request_id=row.request_id,
                             tenant_id=row.tenant_id, subject_id=row.subject_id,
                             details={"export_request_id": row.request_id, "reason": "expired",
                                      "expired_at": expiry.isoformat()}, keyring=keyring)
    return deleted


# -- building the archive --------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, default=_json_default) if isinstance(v, dict | list)
                             else (_json_default(v) if isinstance(v, dt.date | bytes) else v)
                             for k, v in row.items()})
    return buf.getvalue().encode()


def _pseudonym_columns(dataset: str) -> frozenset[str]:
    """The event-zone columns of ``dataset`` that hold keyed pseudonyms."""
    return frozenset(n for c in contracts.load(dataset).columns if c.pseudonymized and (n := c.event_name))


def _tenant_facing(rows: dict[str, list[dict[str, Any]]], user_id: str) -> dict[str, list[dict[str, Any]]]:
    """Each record with the subject's ``user_id`` first and no pseudonym column."""
    out: dict[str, list[dict[str, Any]]] = {}
    for dataset, records in rows.items():
        hidden = _pseudonym_columns(dataset)
        out[dataset] = [{"user_id": user_id, **{k: v for k, v in r.items() if k not in hidden}}
                        for r in records]
    return out


def _user_id(settings: Settings, keyring: KeyRing, row: Any, profile: list[dict[str, Any]]) -> str:
    """The tenant's id of the request's subject: from the sealed request, or its profile."""
    if row.payload_enc is not None:
        return str(requests.open_payload(keyring, row.tenant_id, row.request_id, row.payload_enc)["user_id"])
    for record in profile:
        user = record.get("user_id")
        if isinstance(user, str) and keyring.subject_id(
                row.tenant_id, user, _version(row.subject_id)) == row.subject_id:
            return user
    raise PseudozoneError(f"export {row.request_id}: the request is completed and its subject has no"
                          " profile, so the archive cannot be rebuilt (the user id is no longer held)")


def _version(pseudonym: str) -> int:
    return int(pseudonym.split(":", 1)[0].removeprefix("v"))


def _subject_rows(settings: Settings, tenant: str, subject: str) -> dict[str, list[dict[str, Any]]]:
    """The subject's rows in the event and restricted zones, from the files the index lists."""
    found = index.lookup(settings, tenant, {subject})
    out: dict[str, list[dict[str, Any]]] = {}
    for rel, zone_name in sorted(set(zip(found["path"].to_pylist(), found["zone"].to_pylist(), strict=True))):
        if zone_name not in layout.PARTITIONED:
            continue
        zone_file = layout.parse(rel)
        path = zone_file.path(settings.zones)
        if not path.exists():
            continue
        table = zones.read_table(path, filters=[(SUBJECT_COLUMN, "=", subject)])
        if table.num_rows:
            rows = out.setdefault(zone_file.dataset, [])
            for row in table.to_pylist():
                rows.append({**row, "date": zone_file.date, "zone": zone_name, "linked_cookie": False})
    # logged-out rows of the cookies seen only with this subject (a shared cookie's rows may
    # be another person's: not exported; docs/adr/0008-identity-links.md)
    cookies = links(settings, tenant, {subject}).covered({subject})
    if cookies:
        wanted = pa.array(sorted(cookies), pa.string())
        hits = index.lookup_cookies(settings, tenant, cookies)
        for rel in sorted(set(hits["path"].to_pylist())):
            zone_file = layout.parse(rel)
            path = zone_file.path(settings.zones)
            if not path.exists():
                continue
            flt = pc.field(SUBJECT_COLUMN).is_null() & pc.field(COOKIE_COLUMN).isin(wanted)
            table = zones.read_table(path, filters=flt)
            rows = out.setdefault(zone_file.dataset, [])
            for row in table.to_pylist():
                rows.append({**row, SUBJECT_COLUMN: subject, "linked_cookie": True, "date": zone_file.date,
                             "zone": zone_file.zone})
    return out


def _profile_rows(settings: Settings, keyring: KeyRing, tenant: str, subject: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dataset, contract in ((d, contracts.load(d)) for d in sorted(contracts.available())):
        if not contract.has_pii:
            continue
        files = zones.parquet_files(layout.tenant_dir(settings.pii_zone, dataset, tenant))
        if not files:
            continue
        with state.connect(settings) as conn:
            deks = Vault(keyring, conn).data_keys(tenant, [subject], create=False)
        if subject not in deks:
            continue
        aead = AESGCM(deks[subject])
        for f in files:
            hit = zones.read_table(f, filters=[(SUBJECT_COLUMN, "=", subject)])
            for row in hit.to_pylist():
                clear = {k: None if v is None
                         else decrypt_value(aead, v, pii_associated_data(tenant, subject, k))
                         for k, v in row.items() if k != SUBJECT_COLUMN}
                rows.append({"dataset": dataset, **clear})
    return rows


def export_request(settings: Settings, request_id: str, *, keyring: KeyRing | None = None) -> dict[str, Any]:
    """Build (or rebuild) the encrypted archive of one export request, with a new key (kept wrapped
    in the request store); returns path, digest of the encrypted file and file list, never the key."""
    keyring = keyring or KeyRing.load(settings)
    with store.engine_for(settings).connect() as conn:
        row = conn.execute(select(store.requests).where(store.requests.c.request_id == request_id)).first()
    if row is None or row.type != "export":
        raise PseudozoneError(f"no export request {request_id!r}")
    tenant, subject = row.tenant_id, row.subject_id
    files: dict[str, bytes] = {}
    profile = _profile_rows(settings, keyring, tenant, subject)
    files["profile.json"] = json.dumps(profile, indent=2, ensure_ascii=False, default=_json_default).encode()
    files["profile.csv"] = _csv(profile)
    user_id = _user_id(settings, keyring, row, profile)
    for dataset, rows in sorted(_tenant_facing(_subject_rows(settings, tenant, subject), user_id).items()):
        name = "profile_pseudonymous" if dataset == "profiles" else dataset
        files[f"{name}.json"] = json.dumps(rows, indent=2, ensure_ascii=False, default=_json_default).encode()
        files[f"{name}.csv"] = _csv(rows)
    received = store.as_utc(row.received_at)
    files["README.txt"] = README.format(tenant=tenant, request_id=request_id,
                                        prepared=received.date().isoformat() if received else "").encode()
    manifest = {"request_id": request_id, "tenant_id": tenant,
                "files": [{"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                          for n, b in sorted(files.items())]}
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    # a new key for every archive (a rebuilt one too); in the clear only in this process's memory
    key = AESGCM.generate_key(bit_length=256)
    sealed = encrypt_archive(buf.getvalue(), request_id, key)
    target = layout.export_file(settings, tenant, request_id)
    zones.write_bytes(sealed, target)  # 0600: the exports directory is 0700 (zones.file_mode)
    zones.remove(layout.legacy_export_file(settings, tenant, request_id))
    digest = hashlib.sha256(sealed).hexdigest()
    with store.transaction(settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == request_id)
                     .values(export_key_enc=_wrap_key(keyring, tenant, request_id, key),
                             export_key_handed_at=None))
        audit.append(conn, "export.written", request_id=request_id, tenant_id=tenant, subject_id=subject,
                     details={"archive": settings.shown(target), "sha256": digest,
                              "files": sorted(files), "format": f"aes-256-gcm/v{FORMAT_VERSION}"},
                     keyring=keyring)
    del key
    return {"request_id": request_id, "archive": settings.shown(target), "sha256": digest,
            "files": sorted(files), "profile_rows": len(profile)}
