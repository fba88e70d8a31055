"""Backups cannot undo an erasure (docs/adr/0009-backups-and-erasure.md).

Ingest, copy the whole data root (the "backup"), erase a subject through the rights
process, rotate the KEKs: then neither the backup with the current keys nor the backup
with its own key files decrypts the erased subject's PII, while a live subject's PII
still decrypts in the current root. And a rotation killed midway leaves every live data
key unwrappable, and a rerun completes it.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import ingest, state
from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import (
    KeyRing,
    Vault,
    _unwrap,
    decrypt_value,
    pii_associated_data,
    rotate_after_erasures,
    rotate_keks,
)
from pseudozone.lake import layout
from pseudozone.rights import process, requests
from tests import planted

OTHER_USER = "usr_0000005"  # a generated acme user that stays


@pytest.fixture
def embedded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded default (a key file, no env key), generated data and the planted subject, ingested."""
    from pseudozone.sample import generate

    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY", raising=False)
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY_CONN_ID", raising=False)
    monkeypatch.delenv("PSEUDOZONE_KEY_DIR", raising=False)
    generate(settings, events=1500, tenants=1, seed=3, batch_rows=1500)
    planted.plant(settings.landing)
    ingest.ingest_pending(settings)
    return settings


def _pii_values(root: Path, tenant: str, subject: str, dek: bytes) -> list[str]:
    """Every PII value of ``subject`` under ``root``'s PII zone, decrypted with ``dek``."""
    aead, out = AESGCM(dek), []
    for f in sorted(layout.tenant_dir(root / "zones" / "pii", "profiles", tenant).rglob("*.parquet")):
        for row in pq.read_table(f, filters=[("subject_id", "=", subject)]).to_pylist():
            out += [decrypt_value(aead, v, pii_associated_data(tenant, subject, k))
                    for k, v in row.items() if k != "subject_id" and v is not None]
    return out


def _has_ciphertext(root: Path, tenant: str, subject: str) -> bool:
    files = layout.tenant_dir(root / "zones" / "pii", "profiles", tenant).rglob("*.parquet")
    return any(pq.read_table(f, filters=[("subject_id", "=", subject)]).num_rows for f in files)


def _vault_row(root: Path, tenant: str, subject: str) -> tuple[bytes | None, int]:
    conn = sqlite3.connect(root / "state" / "pseudozone.db")
    try:
        row = conn.execute("SELECT wrapped_dek, kek_version FROM subject_keys WHERE tenant_id = ?"
                           " AND subject_id = ?", (tenant, subject)).fetchone()
    finally:
        conn.close()
    return row[0], int(row[1])


def _every_kek_from(ring: KeyRing, tenant: str, key_dirs: list[Path]) -> list[bytes]:
    """What an attacker holding ``ring``'s master key and these key directories can derive: the
    legacy KEK, and every seed file found, under every version."""
    keks = [ring.kek(tenant)]
    for key_dir in key_dirs:
        for seed_file in key_dir.rglob("*.seed"):
            keks += [ring.seeded_kek(tenant, v, seed_file.read_bytes()) for v in range(2, 12)]
    return keks


def _erase(settings: Settings, ring: KeyRing, user: str) -> None:
    status = requests.submit(settings, {"type": "erase", "tenant_id": planted.TENANT, "user_id": user},
                             source="test", keyring=ring)
    assert status.state == "accepted"
    assert process.process_all(settings, "run-erase", keyring=ring)["completed"] == {"erase": 1}


def test_a_backup_taken_before_an_erasure_cannot_decrypt_the_subject_after_the_rotation(
        embedded: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    live = embedded
    ring = KeyRing.load(live)
    tenant = planted.TENANT
    erased, kept = ring.subject_id(tenant, planted.USER), ring.subject_id(tenant, OTHER_USER)
    with state.connect(live) as conn:
        before = Vault(ring, conn).data_keys(tenant, [erased, kept], create=False)
    assert planted.NAME in _pii_values(live.root, tenant, erased, before[erased])

    # the backup: the whole data root, as a backup tool copies it; no key file lives in it
    backup = tmp_path / "backup-of-lake"
    shutil.copytree(live.root, backup, symlinks=True)
    assert not list(backup.rglob("*.key")) and not list(backup.rglob("*.seed"))
    assert live.master_key_file.exists() and not live.master_key_file.is_relative_to(live.root)

    _erase(live, ring, planted.USER)
    result = rotate_after_erasures(live, ring)
    assert result["rotated"] == 1 and result["tenants"][tenant]["destroyed_versions"]

    # 1. the backup with the current keys (master key and the live key directory)
    wrapped, version = _vault_row(backup, tenant, erased)
    assert wrapped is not None and _has_ciphertext(backup, tenant, erased)  # the backup still holds both
    assert version >= 2  # a seeded KEK (version 1 is the legacy, derived-only one)
    monkeypatch.setenv("PSEUDOZONE_KEY_DIR", str(live.key_dir))
    with state.read(Settings.from_env(backup)) as conn:  # the backup's state database, as it is
        assert conn is not None
        with pytest.raises(KeyMaterialError, match="a key rotation destroyed it"):
            Vault(ring, conn).data_keys(tenant, [erased], create=False)
    monkeypatch.delenv("PSEUDOZONE_KEY_DIR")
    # ...and whatever else the master key and every seed file left can derive
    for kek in _every_kek_from(ring, tenant, [live.key_dir]):
        with pytest.raises(KeyMaterialError, match="does not unwrap"):
            _unwrap(kek, tenant, erased, wrapped)

    # 2. the backup with its own key files as they were when copied: it has none; its sibling
    # key directory does not exist, and loading its key refuses to make one over its data
    backup_settings = Settings.from_env(backup)
    assert not backup_settings.key_dir.exists()
    with pytest.raises(KeyMaterialError, match="missing, but this data root already holds"):
        KeyRing.load(backup_settings)
    assert not backup_settings.master_key_file.exists()

    # 3. the current root: the erased subject is gone, a live subject still decrypts
    assert not _has_ciphertext(live.root, tenant, erased)
    with state.connect(live) as conn:
        now = Vault(ring, conn).data_keys(tenant, [erased, kept], create=False)
        assert Vault(ring, conn).destroyed(tenant, [erased]) == {erased}
    assert set(now) == {kept} and now[kept] == before[kept]  # the same DEK, re-wrapped
    assert _vault_row(live.root, tenant, kept)[1] > version
    assert _pii_values(live.root, tenant, kept, now[kept]) == _pii_values(backup, tenant, kept, before[kept])
    assert _pii_values(live.root, tenant, kept, now[kept])

    # the nightly step has nothing more to do until the next erasure
    assert rotate_after_erasures(live, ring)["rotated"] == 0


def test_a_rotation_killed_midway_leaves_every_live_key_unwrappable_and_a_rerun_completes(
        embedded: Settings) -> None:
    ring = KeyRing.load(embedded)
    tenant = planted.TENANT
    with state.connect(embedded) as conn:
        subjects = [r[0] for r in conn.execute(
            "SELECT subject_id FROM subject_keys WHERE tenant_id = ? AND wrapped_dek IS NOT NULL", (tenant,))]
        original = Vault(ring, conn).data_keys(tenant, subjects, create=False)
    assert len(subjects) > 10 and len(original) == len(subjects)
    (first,) = {_vault_row(embedded.root, tenant, s)[1] for s in subjects}

    class Killed(Exception):
        pass

    def crash(_tenant: str, done: int) -> None:
        raise Killed(done)

    with pytest.raises(Killed):
        rotate_keks(embedded, ring, rows_per_commit=4, after_commit=crash)
    versions = [_vault_row(embedded.root, tenant, s)[1] for s in subjects]
    assert versions.count(first + 1) == 4 and versions.count(first) == len(subjects) - 4  # half-way
    with state.connect(embedded) as conn:
        vault = Vault(ring, conn)
        assert vault.seeds is not None and sorted(vault.seeds.versions(tenant)) == [first, first + 1]
        assert vault.data_keys(tenant, subjects, create=False) == original  # every live key unwraps
        # a key made meanwhile goes under the newest KEK
        new = "v1:" + "cd" * 32
        vault.data_keys(tenant, [new], create=True)
    assert _vault_row(embedded.root, tenant, new)[1] == first + 1

    # the rerun is killed too: it resumed the same rotation, it did not start another one
    with pytest.raises(Killed):
        rotate_keks(embedded, ring, rows_per_commit=3, after_commit=crash)
    assert {_vault_row(embedded.root, tenant, s)[1] for s in subjects} == {first, first + 1}

    result = rotate_keks(embedded, ring)["tenants"][tenant]
    assert result["resumed"] and result["version"] == first + 1 and result["destroyed_versions"] == [first]
    with state.connect(embedded) as conn:
        vault = Vault(ring, conn)
        assert vault.data_keys(tenant, subjects, create=False) == original
        assert vault.seeds is not None and sorted(vault.seeds.versions(tenant)) == [first + 1]
    assert {_vault_row(embedded.root, tenant, s)[1] for s in [*subjects, new]} == {first + 1}

    # the next rotation is a new one
    again = rotate_keks(embedded, ring)["tenants"][tenant]
    assert not again["resumed"] and again["version"] == first + 2
