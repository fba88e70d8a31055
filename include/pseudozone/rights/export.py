"""Export: a ZIP with everything pseudozone holds about one subject.

``exports/<tenant>/<request id>.zip`` holds the subject's profile (decrypted from
the PII zone), its rows of every dataset in the event and restricted zones
(events, server logs, the pseudonymous part of the profile), each as JSON and
CSV, a manifest with the SHA-256 of every file and a README.  It holds that
subject's data only.  The archive is written atomically with fixed timestamps,
so the same data gives the same bytes.

The archive goes to the tenant, so it carries no pseudonym: every record names
the subject by the tenant's own ``user_id``, and the keyed pseudonyms of the event
zone (``subject_id``, the cookie's, the linkable ids') are left out.  A tenant
holding them could join its own user ids to the event zone (docs/adr/0010-linkage.md).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import zipfile
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from pseudozone import contracts, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.errors import PseudozoneError
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
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
        table = pq.read_table(path, filters=[(SUBJECT_COLUMN, "=", subject)])
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
            table = pq.read_table(path, filters=flt)
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
            hit = pq.read_table(f, filters=[(SUBJECT_COLUMN, "=", subject)])
            for row in hit.to_pylist():
                clear = {k: None if v is None
                         else decrypt_value(aead, v, pii_associated_data(tenant, subject, k))
                         for k, v in row.items() if k != SUBJECT_COLUMN}
                rows.append({"dataset": dataset, **clear})
    return rows


def export_request(settings: Settings, request_id: str, *, keyring: KeyRing | None = None) -> dict[str, Any]:
    """Build (or rebuild) the archive of one export request; returns path, digest, file list."""
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
    blob = buf.getvalue()
    target = layout.export_file(settings, tenant, request_id)
    zones.write_bytes(blob, target)
    digest = hashlib.sha256(blob).hexdigest()
    with store.transaction(settings) as conn:
        audit.append(conn, "export.written", request_id=request_id, tenant_id=tenant, subject_id=subject,
                     details={"archive": str(target.relative_to(settings.root)), "sha256": digest,
                              "files": sorted(files)}, keyring=keyring)
    return {"request_id": request_id, "archive": str(target.relative_to(settings.root)), "sha256": digest,
            "files": sorted(files), "profile_rows": len(profile)}
