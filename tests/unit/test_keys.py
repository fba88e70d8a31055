from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import (
    KeyRing,
    Vault,
    decrypt_value,
    encrypt_value,
    init_master_key,
    key_check_value,
    load_master_key,
    pii_associated_data,
)

AWKWARD = ["", "plain", "Zoë Ørsted-Łukasiewicz", "שלום עולם", "山田 太郎", "emoji 🙂👍🏽", "a\x00b",
           "x" * 10_000]


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY", raising=False)
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY_CONN_ID", raising=False)


def test_embedded_default_generates_a_0600_key_file_once(settings: Settings) -> None:
    first = load_master_key(settings)
    mode = stat.S_IMODE(settings.master_key_file.stat().st_mode)
    assert mode == 0o600
    assert load_master_key(settings) == first
    assert len(first) == 32


def test_given_group_readable_key_file_then_it_is_refused(settings: Settings) -> None:
    load_master_key(settings)
    os.chmod(settings.master_key_file, 0o644)
    with pytest.raises(KeyMaterialError, match="chmod 600"):
        load_master_key(settings)


def test_env_key_wins_and_bad_env_key_is_reported_without_its_value(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(key).decode())
    assert load_master_key(settings) == key
    assert not settings.master_key_file.exists()
    secret_looking = base64.b64encode(b"too-short-secret").decode()
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", secret_looking)
    with pytest.raises(KeyMaterialError) as err:
        load_master_key(settings)
    assert secret_looking not in str(err.value)
    assert "32 bytes" in str(err.value)


def test_pseudonyms_are_versioned_deterministic_and_separated(keyring: KeyRing) -> None:
    a = keyring.subject_id("acme", "usr_1")
    assert a == keyring.subject_id("acme", "usr_1")
    assert a.startswith("v1:") and len(a) == 67
    assert a != keyring.subject_id("globex", "usr_1")                     # tenants unlinkable
    assert a[3:] != keyring.pseudonymize("acme", "anonymous_id", ["usr_1"])[0][3:]  # purposes
    v2 = keyring.subject_id("acme", "usr_1", version=2)
    assert v2.startswith("v2:") and v2[3:] != a[3:]                        # rotation
    assert KeyRing(os.urandom(32)).subject_id("acme", "usr_1") != a        # keyed, not a plain hash


@pytest.mark.parametrize("text", AWKWARD)
def test_encryption_round_trips_awkward_text(text: str) -> None:
    aead = AESGCM(os.urandom(32))
    ad = pii_associated_data("acme", "v1:abc", "full_name")
    blob = encrypt_value(aead, text, ad)
    assert decrypt_value(aead, blob, ad) == text
    if text:
        assert text.encode() not in blob
    assert encrypt_value(aead, text, ad) != blob  # fresh nonce per value


def test_given_wrong_associated_data_then_decryption_fails(keyring: KeyRing) -> None:
    aead = AESGCM(os.urandom(32))
    blob = encrypt_value(aead, "secret", pii_associated_data("acme", "v1:s", "email"))
    for ad in (pii_associated_data("acme", "v1:s", "phone"), pii_associated_data("acme", "v1:t", "email"),
               pii_associated_data("globex", "v1:s", "email")):
        with pytest.raises(KeyMaterialError):
            decrypt_value(aead, blob, ad)


def test_vault_creates_once_reuses_and_crypto_shreds(settings: Settings, keyring: KeyRing) -> None:
    with state.connect(settings) as conn:
        vault = Vault(keyring, conn)
        first = vault.data_keys("acme", ["v1:a", "v1:b"], create=True)
        again = vault.data_keys("acme", ["v1:a", "v1:b", "v1:c"], create=True)
        assert first["v1:a"] == again["v1:a"] and len(again) == 3
        assert vault.destroy("acme", "v1:a")
        after = vault.data_keys("acme", ["v1:a"], create=True)
        assert after == {}  # a destroyed key is never recreated
        assert vault.destroyed("acme", ["v1:a", "v1:b"]) == {"v1:a"}
        raw = conn.execute("SELECT wrapped_dek FROM subject_keys WHERE subject_id='v1:b'").fetchone()[0]
    assert first["v1:b"] not in raw  # stored wrapped, never in the clear


def test_given_another_master_key_then_data_keys_do_not_unwrap(settings: Settings, keyring: KeyRing) -> None:
    with state.connect(settings) as conn:
        Vault(keyring, conn).data_keys("acme", ["v1:a"], create=True)
        with pytest.raises(KeyMaterialError, match="does not unwrap"):
            Vault(KeyRing(os.urandom(32)), conn).data_keys("acme", ["v1:a"], create=False)


def test_pseudonym_is_exactly_hmac_sha256_of_the_utf8_identifier(keyring: KeyRing) -> None:
    import hashlib
    import hmac

    key = keyring.pseudonym_key("acme", "subject")
    for user in ("usr_1", "Zoë 山田", ""):
        expected = "v1:" + hmac.digest(key, user.encode("utf-8"), hashlib.sha256).hex()
        assert keyring.subject_id("acme", user) == expected


# -- keys that fail closed: the key check value --------------------------------------------------


def _with_a_data_key(settings: Settings, ring: KeyRing) -> None:
    with state.connect(settings) as conn:
        Vault(ring, conn).data_keys("acme", ["v1:" + "ab" * 32], create=True)


def test_given_missing_key_file_on_a_root_with_data_then_no_new_key_is_made(settings: Settings) -> None:
    ring = KeyRing.load(settings)  # the embedded default: a key file, made on the empty root
    _with_a_data_key(settings, ring)
    settings.master_key_file.unlink()
    with pytest.raises(KeyMaterialError, match="missing, but this data root already holds"):
        KeyRing.load(settings)
    assert not settings.master_key_file.exists()


def test_given_a_different_key_then_it_is_refused(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    first, other = os.urandom(32), os.urandom(32)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(first).decode())
    KeyRing.load(settings)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(other).decode())
    with pytest.raises(KeyMaterialError, match="not this data root's key") as err:
        KeyRing.load(settings)
    assert base64.b64encode(other).decode() not in str(err.value)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(first).decode())
    assert KeyRing.load(settings).subject_id("acme", "u1") == KeyRing(first).subject_id("acme", "u1")


def test_given_a_root_from_before_key_checks_then_the_key_is_proved_on_the_vault(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    first, other = os.urandom(32), os.urandom(32)
    _with_a_data_key(settings, KeyRing(first))  # written without a key check, as before
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(other).decode())
    with pytest.raises(KeyMaterialError, match="does not unwrap"):
        KeyRing.load(settings)
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(first).decode())
    KeyRing.load(settings)  # proved, and its check is recorded now
    with state.connect(settings) as conn:
        assert conn.execute("SELECT count(*) FROM key_checks").fetchone()[0] == 1
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(other).decode())
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        KeyRing.load(settings)


def test_check_value_tells_keys_apart_and_holds_nothing_of_the_key() -> None:
    key = bytes(range(32))
    check = key_check_value(key)
    assert check == key_check_value(key) != key_check_value(bytes(32))
    assert key.hex() not in check and base64.b64encode(key).decode() not in check


def test_keys_init_only_on_an_empty_root(settings: Settings) -> None:
    origin = init_master_key(settings)
    assert "key file" in origin and settings.master_key_file.exists()
    with pytest.raises(KeyMaterialError, match="already holds a recorded master key check"):
        init_master_key(settings)
    KeyRing.load(settings)  # the key it made is the root's key


# -- the key directory and KEK rotation (docs/adr/0009-backups-and-erasure.md) ----------------------


def test_the_embedded_key_file_lives_outside_the_data_root(settings: Settings) -> None:
    load_master_key(settings)
    assert settings.master_key_file == settings.root.with_name("lake.keys") / "master.key"
    assert not settings.master_key_file.is_relative_to(settings.root)
    assert not settings.legacy_master_key_file.exists()
    assert stat.S_IMODE(settings.key_dir.stat().st_mode) == 0o700


def test_the_key_directory_is_configurable(settings: Settings, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_KEY_DIR", str(tmp_path / "vault-volume"))
    key = load_master_key(settings)
    assert (tmp_path / "vault-volume" / "master.key").exists()
    assert not settings.root.with_name("lake.keys").exists()
    assert load_master_key(settings) == key


def test_an_old_roots_key_file_in_state_is_still_read_with_a_warning(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    ring = KeyRing.load(settings)
    _with_a_data_key(settings, ring)
    key = load_master_key(settings)
    settings.state.mkdir(exist_ok=True)
    settings.master_key_file.rename(settings.legacy_master_key_file)  # the layout before ADR 0009
    with caplog.at_level("WARNING"):
        assert KeyRing.load(settings).check_value() == key_check_value(key)
    assert "move it to" in caplog.text and str(settings.master_key_file) in caplog.text
    assert not settings.master_key_file.exists()  # read, never replaced by a new key


def test_given_a_missing_kek_seed_then_no_new_seed_is_made_over_the_keys(
        settings: Settings, keyring: KeyRing) -> None:
    import shutil

    subject = "v1:" + "ab" * 32
    with state.connect(settings) as conn:
        Vault(keyring, conn).data_keys("acme", [subject], create=True)
    shutil.rmtree(settings.key_dir / "kek")  # a lost (or wrong) key directory
    with state.connect(settings) as conn, pytest.raises(KeyMaterialError, match="not in the key directory"):
        Vault(keyring, conn).data_keys("acme", [subject, "v1:" + "cd" * 32], create=True)
    assert not (settings.key_dir / "kek").exists()


def test_rotation_moves_legacy_keys_to_a_seeded_kek_and_destroys_the_old_seed(
        settings: Settings, keyring: KeyRing) -> None:
    from pseudozone.keys import rotate_keks

    legacy, seeded = "v1:" + "01" * 32, "v1:" + "02" * 32
    with state.connect(settings) as conn:  # a key wrapped before ADR 0009: the legacy KEK (version 1)
        conn.execute("INSERT INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version)"
                     " VALUES ('acme', ?, ?, 1)", (legacy, keyring.wrap_dek("acme", legacy, b"k" * 32)))
        vault = Vault(keyring, conn)
        keys_before = vault.data_keys("acme", [legacy, seeded], create=True)
        assert vault.current_version("acme", create=False) == 2
        seed_v2 = vault.seeds.seed("acme", 2) if vault.seeds else b""
    first = rotate_keks(settings, keyring)["tenants"]["acme"]
    assert first == {"version": 3, "rewrapped": 2, "from_legacy": 1, "destroyed_versions": [2],
                     "resumed": False}
    with state.connect(settings) as conn:
        vault = Vault(keyring, conn)
        assert vault.data_keys("acme", [legacy, seeded], create=False) == keys_before
        assert conn.execute("SELECT DISTINCT kek_version FROM subject_keys").fetchall() == [(3,)]
        wrapped = conn.execute("SELECT wrapped_dek FROM subject_keys WHERE subject_id = ?",
                               (seeded,)).fetchone()[0]
    assert not list(settings.key_dir.rglob("v2.seed"))
    with pytest.raises(KeyMaterialError):  # the new wrapping is not under the destroyed version
        from pseudozone.keys import _unwrap
        _unwrap(keyring.seeded_kek("acme", 2, seed_v2), "acme", seeded, wrapped)
    assert not list(settings.key_dir.rglob(".tmp-*"))


def test_given_data_but_no_data_key_to_prove_the_key_on_then_it_is_refused_until_adopted(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pseudozone.keys import adopt_master_key

    target = settings.event_zone / "events" / "tenant_id=acme" / "date=2026-12-01" / "b1.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(pa.table({"subject_id": ["v1:" + "ab" * 32]}), target)  # events only, from before checks
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(KeyMaterialError, match="keys adopt"):
        KeyRing.load(settings)
    adopt_master_key(settings)
    KeyRing.load(settings)  # vouched for: recorded
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        KeyRing.load(settings)


def test_a_locked_state_database_is_an_error_not_a_missing_check(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    KeyRing.load(settings)
    blocker = sqlite3.connect(settings.state_db, isolation_level=None)
    blocker.execute("PRAGMA locking_mode=EXCLUSIVE")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        real_connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, **{**k, "timeout": 0.1}))
        with pytest.raises(KeyMaterialError, match="cannot be checked"):
            KeyRing.load(settings)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
