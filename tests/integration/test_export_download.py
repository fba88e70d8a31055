"""Export archives a tenant can hand over: encrypted on disk, downloaded over REST with the
tenant's token, opened with the one-time key of its status call, expiring, checked nightly."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import logging
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from pseudozone import ingest, zones
from pseudozone.compliance import nightly
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.lake import layout
from pseudozone.rights import export, process, requests, store
from pseudozone.rights.api import create_app
from pseudozone.validation.suites import Validator
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
SUBJECT = KR.subject_id(planted.TENANT, planted.USER)


@dataclass
class Door:
    settings: Settings
    client: TestClient
    acme: str
    globex: str

    def get(self, path: str, token: str | None) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})

    def export(self) -> str:
        """An export of the planted user, filed through the REST door and processed."""
        response = self.client.post("/requests", json={"type": "export", "user_id": planted.USER},
                                    headers={"Authorization": f"Bearer {self.acme}"})
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        process.process_all(self.settings, f"run-{request_id[:8]}", keyring=KR)
        return request_id


@pytest.fixture
def door(lake: Settings) -> Iterator[Door]:
    ingest.ingest_pending(lake, keyring=KR)
    acme = requests.register_tenant(lake, planted.TENANT)
    globex = requests.register_tenant(lake, "globex")
    with TestClient(create_app(lambda: lake)) as client:
        yield Door(lake, client, acme, globex)


def _decrypt_as_the_readme_says(data: bytes, request_id: str, key_text: str) -> bytes:
    """The README's snippet for tenants, word for word (only ``cryptography``)."""
    key = base64.urlsafe_b64decode(key_text)
    assert data[:8] == b"PZEXPORT" and data[8] == 1
    return AESGCM(key).decrypt(data[9:21], data[21:], request_id.encode())


def _wrapped_key(settings: Settings, request_id: str) -> bytes | None:
    with store.engine_for(settings).connect() as conn:
        found: bytes | None = conn.execute(select(store.requests.c.export_key_enc)
                                           .where(store.requests.c.request_id == request_id)).scalar_one()
    return found


def test_the_archive_on_disk_is_encrypted_owner_only_and_holds_no_plaintext(door: Door) -> None:
    request_id = door.export()
    path = layout.export_file(door.settings, planted.TENANT, request_id)
    assert path.name == f"{request_id}.zip.enc"
    assert stat.S_IMODE(path.stat().st_mode) == zones.PRIVATE_FILE_MODE == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == zones.PRIVATE_DIR_MODE == 0o700
    assert stat.S_IMODE(door.settings.exports.stat().st_mode) == 0o700
    assert not layout.legacy_export_file(door.settings, planted.TENANT, request_id).exists()

    data = path.read_bytes()
    assert data[:8] == export.MAGIC and data[8] == export.FORMAT_VERSION
    assert not zipfile.is_zipfile(io.BytesIO(data))
    # a ZIP names its members in the clear; the encrypted archive names nothing
    assert b"profile.json" not in data and b"manifest.json" not in data
    assert planted.find_needles(data.decode("latin-1")) == []
    # the same archive, decrypted, does hold them (so the checks above can fail)
    zipped = export.open_archive(door.settings, request_id, keyring=KR)
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert [p["email"] for p in json.loads(archive.read("profile.json"))] == [planted.EMAIL]
    # a rebuilt archive gets a new key and nonce: no two archives share them
    export.export_request(door.settings, request_id, keyring=KR)
    assert path.read_bytes()[9:21] != data[9:21]
    with pytest.raises(export.ArchiveError):
        export.decrypt_archive(data, request_id, export.archive_key(door.settings, request_id, keyring=KR)[1])


def test_the_tenant_downloads_the_archive_and_opens_it_with_the_key_of_its_status_call(
        door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(export.EXPIRY_ENV, "2")
    request_id = door.export()

    first = door.get(f"/requests/{request_id}", door.acme)
    assert first.status_code == 200
    outcome = first.json()["outcome"]
    assert outcome["download"] == f"/requests/{request_id}/export"
    assert "archive" not in outcome and "zones/exports" not in first.text  # no server path
    completed = dt.datetime.fromisoformat(first.json()["completed_at"])
    expires = dt.datetime.fromisoformat(outcome["expires_at"])
    assert abs(expires - completed - dt.timedelta(days=2)) < dt.timedelta(minutes=1)
    key_text = outcome["key"]
    assert len(base64.urlsafe_b64decode(key_text)) == 32

    # the key is given once: later answers and the list say when it was handed out, never it
    again = door.get(f"/requests/{request_id}", door.acme).json()["outcome"]
    assert "key" not in again and again["key_handed_out_at"]
    listed = door.get("/requests", door.acme)
    assert key_text not in listed.text
    assert [r["outcome"]["download"] for r in listed.json() if r["request_id"] == request_id] == [
        outcome["download"]]

    response = door.get(outcome["download"], door.acme)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["cache-control"] == "no-store"
    assert f'{request_id}.zip.enc' in response.headers["content-disposition"]
    assert hashlib.sha256(response.content).hexdigest() == outcome["sha256"]
    zipped = _decrypt_as_the_readme_says(response.content, request_id, key_text)
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert {"profile.json", "events.json", "manifest.json", "README.txt"} <= set(archive.namelist())
        assert [p["email"] for p in json.loads(archive.read("profile.json"))] == [planted.EMAIL]
        assert {r["user_id"] for r in json.loads(archive.read("events.json"))} == {planted.USER}
    # the download is audited, the handing out of the key too (neither with the key)
    with store.engine_for(door.settings).connect() as conn:
        actions = [r.action for r in conn.execute(select(store.audit_log.c.action)
                                                   .where(store.audit_log.c.request_id == request_id))]
    assert actions.count("export.key_handed_out") == 1


def test_only_the_tenants_own_completed_export_downloads(door: Door) -> None:
    request_id = door.export()
    download = f"/requests/{request_id}/export"

    assert door.get(download, None).status_code == 401
    for path in (f"/requests/{request_id}", download):
        response = door.get(path, door.globex)
        assert response.status_code == 404, path
        assert "zones" not in response.text
    # another tenant's look did not spend the key
    assert "key" in door.get(f"/requests/{request_id}", door.acme).json()["outcome"]
    assert door.get("/requests/00000000-0000-0000-0000-000000000000/export", door.acme).status_code == 404

    other = {"tenant_id": "acme", "user_id": "usr_0000004"}
    restrict = requests.submit(door.settings, {"type": "restrict", **other}, source="test", keyring=KR)
    assert door.get(f"/requests/{restrict.request_id}/export", door.acme).status_code == 404  # no export
    waiting = requests.submit(door.settings, {"type": "export", **other}, source="test", keyring=KR)
    assert door.get(f"/requests/{waiting.request_id}/export", door.acme).status_code == 409
    assert door.get(f"/requests/{waiting.request_id}", door.acme).json()["outcome"] is None


def test_after_its_expiry_the_export_is_gone_and_the_nightly_run_deletes_it(door: Door) -> None:
    request_id = door.export()
    path = layout.export_file(door.settings, planted.TENANT, request_id)
    status = requests.get_status(door.settings, request_id)
    assert status.outcome is not None
    expires = dt.datetime.fromisoformat(status.outcome["expires_at"])
    completed = dt.datetime.fromisoformat(status.completed_at or "")
    assert abs(expires - completed - dt.timedelta(days=export.EXPIRY_DAYS)) < dt.timedelta(minutes=1)

    # the nightly run before the expiry keeps it
    before = nightly.enforce_retention(door.settings, now=expires - dt.timedelta(hours=1))
    assert before["exports_expired"] == []
    assert door.get(f"/requests/{request_id}/export", door.acme).status_code == 200

    # time passes: the expiry is behind us
    past = dict(status.outcome, expires_at=(store.utcnow() - dt.timedelta(seconds=1)).isoformat())
    with store.transaction(door.settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == request_id)
                     .values(outcome=json.dumps(past)))
    response = door.get(f"/requests/{request_id}/export", door.acme)
    assert response.status_code == 410 and response.json() == {"detail": "the export has expired"}
    assert "key" not in door.get(f"/requests/{request_id}", door.acme).json()["outcome"]  # not after expiry

    section = nightly.enforce_retention(door.settings, now=store.utcnow())
    assert section["exports_expired"] == [request_id]
    assert not path.exists() and _wrapped_key(door.settings, request_id) is None
    assert door.get(f"/requests/{request_id}/export", door.acme).status_code == 410
    with store.engine_for(door.settings).connect() as conn:
        deleted = [json.loads(r.details) for r in conn.execute(
            select(store.audit_log.c.details).where(store.audit_log.c.action == "export.deleted",
                                                    store.audit_log.c.request_id == request_id))]
    assert [d["reason"] for d in deleted] == ["expired"]


def test_the_archive_key_is_in_no_log_audit_entry_report_or_clear_store(
        door: Door, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    from pseudozone.compliance import report

    caplog.set_level(logging.DEBUG)
    request_id = door.export()
    result = export.export_request(door.settings, request_id, keyring=KR)  # what the task returns (XCom)
    assert set(result) == {"request_id", "archive", "sha256", "files", "profile_rows"}
    key_text = door.get(f"/requests/{request_id}", door.acme).json()["outcome"]["key"]
    key = base64.urlsafe_b64decode(key_text)
    download = door.get(f"/requests/{request_id}/export", door.acme)
    assert download.status_code == 200
    assert export.decrypt_archive(download.content, request_id, key)  # the archive's key indeed
    report.run_nightly(door.settings, "nightly-keys")

    forms = [key, key_text.encode(), key.hex().encode(), base64.b64encode(key), key_text.rstrip("=").encode()]

    def has_key(blob: bytes) -> bool:
        return any(form in blob for form in forms)

    assert has_key(b"{" + key_text.encode() + b"}")
    with store.engine_for(door.settings).connect() as conn:
        entries = [json.dumps(dict(r._mapping), default=str).encode()
                   for r in conn.execute(select(store.audit_log))]
        rows = [b"".join(v if isinstance(v, bytes) else str(v).encode() for v in r)
                for r in conn.execute(select(store.requests))]
    assert entries and not [e for e in entries if has_key(e)]
    assert rows and not [r for r in rows if has_key(r)]
    logged = caplog.text + "".join(capfd.readouterr())
    assert logged and not has_key(logged.encode())
    stored: list[Path] = [p for p in door.settings.root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("pseudozone.db") for p in stored)
    assert any(p.is_relative_to(door.settings.reports) for p in stored)
    assert not [p for p in stored if has_key(p.read_bytes())]


def test_the_nightly_check_opens_a_good_archive_and_fails_a_changed_or_keyless_one(door: Door) -> None:
    request_id = door.export()
    path = layout.export_file(door.settings, planted.TENANT, request_id)

    [good] = nightly._validate_exports(door.settings, Validator())
    assert good["success"] and good["files"] == 1 and good["rows"] > 10, good["failures"]

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the ciphertext
    path.write_bytes(bytes(data))
    [tampered] = nightly._validate_exports(door.settings, Validator())
    assert not tampered["success"]
    assert [f["expectation"] for f in tampered["failures"]] == ["archive_decrypts"]
    assert str(path.relative_to(door.settings.zones)) == tampered["failures"][0]["file"]

    export.export_request(door.settings, request_id, keyring=KR)  # rebuilt: passes again
    assert [s["success"] for s in nightly._validate_exports(door.settings, Validator())] == [True]
    with store.transaction(door.settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == request_id)
                     .values(export_key_enc=None))
    [keyless] = nightly._validate_exports(door.settings, Validator())
    assert [f["expectation"] for f in keyless["failures"]] == ["archive_key_held"]

    # an unencrypted archive of before issue 10 is reported, not opened
    export.export_request(door.settings, request_id, keyring=KR)
    legacy = layout.legacy_export_file(door.settings, planted.TENANT, request_id)
    legacy.write_bytes(export.open_archive(door.settings, request_id, keyring=KR))
    [section] = nightly._validate_exports(door.settings, Validator())
    assert [f["expectation"] for f in section["failures"]] == ["archive_encrypted"]


def test_an_erasure_deletes_the_encrypted_archive_a_legacy_one_and_the_wrapped_key(door: Door) -> None:
    request_id = door.export()
    path = layout.export_file(door.settings, planted.TENANT, request_id)
    legacy = layout.legacy_export_file(door.settings, planted.TENANT, request_id)
    legacy.write_bytes(b"PK\x03\x04 an archive of before issue 10")
    assert path.exists() and _wrapped_key(door.settings, request_id) is not None

    erase = requests.submit(door.settings, {"type": "erase", "tenant_id": "acme", "user_id": planted.USER},
                            source="test", keyring=KR)
    process.process_all(door.settings, "run-erase", keyring=KR)

    assert not path.exists() and not legacy.exists()
    assert _wrapped_key(door.settings, request_id) is None
    done = requests.get_status(door.settings, erase.request_id)
    assert done.outcome is not None and done.outcome["export_archives_deleted"] == [request_id]
    assert door.get(f"/requests/{request_id}/export", door.acme).status_code == 410
    assert nightly.verify_erasures(door.settings, {})["incomplete"] == []
