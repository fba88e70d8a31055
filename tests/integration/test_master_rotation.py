"""Master-key rotation (docs/adr/0002-key-hierarchy.md, "Root secret"): the master key wraps a
stored root secret, every key derives from that, so a new master key re-wraps one row and
changes no pseudonym, KEK, sealed value or file.

A rotation keeps every zone file byte for byte and every PII value readable, refuses the old
key afterwards, survives a kill inside its transaction (old key still the root's) and after
its commit (a rerun finishes it), a root from before the root secret adopts its master key
(pseudonyms and wrapped keys computed by the old formulas keep reading), and no key's bytes
reach a log line, an error message, the audit log or any file of the data root.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pseudozone import ingest, keys, master_rotation, state
from pseudozone.cli import main as cli
from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.master_rotation import rotate_master_key
from pseudozone.rights import audit, process, requests
from tests import planted
from tests.conftest import TEST_MASTER_KEY

T = planted.TENANT
NEW_KEY = bytes(range(100, 132))  # a fixed test key: never a real secret
THIRD_KEY = bytes(range(150, 182))
ERASED_USER = "usr_master_rot_erased"


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _forms(key: bytes) -> list[str]:
    """Every text form a key could leak in."""
    return [_b64(key), base64.urlsafe_b64encode(key).decode(), key.hex(), key.hex().upper(), repr(key)[2:-1]]


def _use_key(monkeypatch: pytest.MonkeyPatch, key: bytes) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", _b64(key))


def _key_file(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_b64(key) + "\n")
    return path


def _digest(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()  # compared instead of the key: no key in a failure message


def _pii_values(settings: Settings, ring: KeyRing) -> dict[tuple[str, str, str], str]:
    """Every encrypted PII-zone value, decrypted, by (file, subject, column)."""
    out: dict[tuple[str, str, str], str] = {}
    with state.connect(settings) as conn:
        vault = Vault(ring, conn)
        for f in sorted(settings.pii_zone.rglob("*.parquet")):
            table = pq.read_table(f)
            tenant = next(p.split("=", 1)[1] for p in f.parts if p.startswith("tenant_id="))
            columns = [c.name for c in table.schema
                       if pa.types.is_binary(c.type) or pa.types.is_large_binary(c.type)]
            subjects = table["subject_id"].to_pylist()
            deks = vault.data_keys(tenant, subjects, create=False)
            for name in columns:
                for subject, blob in zip(subjects, table[name].to_pylist(), strict=True):
                    if blob is not None:
                        out[(str(f.relative_to(settings.root)), subject, name)] = decrypt_value(
                            AESGCM(deks[subject]), blob, pii_associated_data(tenant, subject, name))
    return out


def _snapshot(settings: Settings) -> dict[str, Any]:
    """What a rotation of the master key must leave exactly as it was."""
    ring = KeyRing.load(settings)
    files = {str(f.relative_to(settings.root)): hashlib.sha256(f.read_bytes()).hexdigest()
             for f in sorted(settings.zones.rglob("*")) if f.is_file()}
    conn = sqlite3.connect(settings.state_db)
    try:
        vault_rows = conn.execute("SELECT tenant_id, subject_id, wrapped_dek, kek_version FROM subject_keys"
                                  " ORDER BY 1, 2").fetchall()
    finally:
        conn.close()
    sealed = sorted(ring.unseal(t, s) for t, s, w, _v in vault_rows if w is None)
    derived = {name: _digest(key) for name, key in {
        "pseudonym": ring.pseudonym_key(T, "subject", 1), "kek": ring.kek(T), "audit": ring.audit_key(),
        "hold": ring.hold_key(T), "request": ring.request_key(T), "export": ring.export_key(T),
        "seeded": ring.seeded_kek(T, 2, b"s" * 32)}.items()}
    return {"files": files, "pii": _pii_values(settings, ring), "vault": vault_rows, "sealed": sealed,
            "subject": ring.subject_id(T, planted.USER), "derived": derived,
            "seal": ring.seal(T, ring.subject_id(T, ERASED_USER))}


def _erase(settings: Settings, user: str) -> None:
    ring = KeyRing.load(settings)
    status = requests.submit(settings, {"type": "erase", "tenant_id": T, "user_id": user}, source="test",
                             keyring=ring)
    assert status.state == "accepted"
    assert process.process_all(settings, "run-erase", keyring=ring)["completed"] == {"erase": 1}


def _profile(user: str) -> pa.Table:
    table = planted.profiles()
    return table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array([user]))


@pytest.fixture
def world(lake: Settings) -> Settings:
    """An ingested root (two tenants, the planted batch), an erased subject (a sealed tombstone),
    a legal hold (an encrypted reason), a rotated KEK (seeded KEKs)."""
    path = lake.landing / "profiles" / f"tenant={T}" / "erased-one.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_profile(ERASED_USER), path)
    assert any(r.status == "done" for r in ingest.ingest_pending(lake))
    _erase(lake, ERASED_USER)
    requests.add_legal_hold(lake, tenant_id=T, reason="synthetic hold reason", keyring=KeyRing.load(lake))
    keys.rotate_keks(lake)
    return lake


def test_rotation_keeps_every_value_and_the_old_key_is_refused(
        world: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(world)
    assert before["pii"] and before["sealed"] and before["files"]
    new_file = _key_file(tmp_path / "new.key", NEW_KEY)
    capsys.readouterr()

    assert cli(["--home", str(world.root), "keys", "rotate-master", "--new-key-file", str(new_file),
                "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"master_version": 2, "from_master_version": 1, "rewrapped_now": True,
                      "already_current": False, "audited": True, "key_file_replaced": False}

    # the configured (old) key is refused, by every command, with a message that names no key
    with pytest.raises(KeyMaterialError, match="retired master key version 1") as err:
        KeyRing.load(world)
    assert not any(form in str(err.value) for form in _forms(TEST_MASTER_KEY) + _forms(NEW_KEY))
    assert cli(["--home", str(world.root), "keys", "check"]) == 2
    assert "retired master key version 1" in capsys.readouterr().err
    assert cli(["--home", str(world.root), "ingest"]) == 2

    # with the new key, everything reads identically, and no file of the zones changed
    _use_key(monkeypatch, NEW_KEY)
    assert cli(["--home", str(world.root), "keys", "check"]) == 0
    after = _snapshot(world)
    assert after["files"] == before["files"]
    assert after == before
    assert KeyRing.load(world).check_value() == keys.key_check_value(NEW_KEY)
    assert audit.verify(world).ok  # the audit key derives from the root secret: the chain still verifies
    [hold] = requests.list_holds(world)
    reason = requests.hold_reason(world, hold["hold_id"], keyring=KeyRing.load(world))
    assert reason == "synthetic hold reason"

    # audited once, versions only
    [entry] = audit.entries(world, action="keys.master_rotated")
    assert entry["details"] == {"from_master_version": 1, "to_master_version": 2, "root_secrets_rewrapped": 1,
                                "data_rewritten": 0}
    # a rerun (new key configured and given) changes nothing and audits nothing more
    assert cli(["--home", str(world.root), "keys", "rotate-master", "--new-key-file", str(new_file)]) == 0
    assert "already" in capsys.readouterr().out
    assert len(audit.entries(world, action="keys.master_rotated")) == 1

    # new data joins the old: a new batch of the planted subject lands under the same pseudonym
    path = world.landing / "profiles" / f"tenant={T}" / "after-rotation.parquet"
    pq.write_table(planted.profiles(), path)
    [res] = ingest.ingest_pending(world)
    assert res.status == "done", res.reason
    assert KeyRing.load(world).subject_id(T, planted.USER) == before["subject"]

    # a second rotation; the first key stays refused, and a retired key is never made current again
    pii = _pii_values(world, KeyRing.load(world))
    assert rotate_master_key(world, THIRD_KEY)["master_version"] == 3
    _use_key(monkeypatch, THIRD_KEY)
    with pytest.raises(KeyMaterialError, match="retired master key"):
        rotate_master_key(world, TEST_MASTER_KEY)
    assert _pii_values(world, KeyRing.load(world)) == pii
    for old in (TEST_MASTER_KEY, NEW_KEY):
        _use_key(monkeypatch, old)
        with pytest.raises(KeyMaterialError, match="retired master key"):
            KeyRing.load(world)


def test_a_rotation_killed_inside_its_transaction_leaves_the_old_key_the_roots(
        world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(world)

    def killed() -> None:
        raise KeyboardInterrupt  # as a kill: nothing after this line of the transaction runs

    with pytest.raises(KeyboardInterrupt):
        rotate_master_key(world, NEW_KEY, before_commit=killed)
    assert _snapshot(world) == before  # opens with the old key, exactly as before
    _use_key(monkeypatch, NEW_KEY)
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        KeyRing.load(world)
    assert audit.entries(world, action="keys.master_rotated") == []

    _use_key(monkeypatch, TEST_MASTER_KEY)  # the rerun
    assert rotate_master_key(world, NEW_KEY)["rewrapped_now"]
    with pytest.raises(KeyMaterialError, match="retired"):
        KeyRing.load(world)
    _use_key(monkeypatch, NEW_KEY)
    assert _snapshot(world) == before


def test_a_rotation_killed_after_its_commit_is_finished_by_a_rerun(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded key file: the rotation replaces it; a kill between the commit and the audit
    entry (and the key file) leaves a root that opens with the new key only, and a rerun with the
    new key finishes both."""
    monkeypatch.delenv("PSEUDOZONE_MASTER_KEY", raising=False)
    old = keys.load_master_key(settings)  # the generated key file
    ring = KeyRing.load(settings)
    subject = ring.subject_id(T, "u1")
    with state.connect(settings) as conn:
        dek = Vault(ring, conn).data_keys(T, [subject], create=True)[subject]

    def killed(*_args: object) -> bool:
        raise KeyboardInterrupt

    real = master_rotation._audit_master_rotation
    monkeypatch.setattr(master_rotation, "_audit_master_rotation", killed)
    with pytest.raises(KeyboardInterrupt):
        rotate_master_key(settings, NEW_KEY)
    monkeypatch.setattr(master_rotation, "_audit_master_rotation", real)
    assert keys.load_master_key(settings) == old  # the key file was not replaced yet
    with pytest.raises(KeyMaterialError, match="retired master key version 1"):
        KeyRing.load(settings)  # the commit stands: the old key is refused

    # rerun with the new key given through the environment: the audit entry and the key file
    monkeypatch.setenv("PSEUDOZONE_NEW_MASTER_KEY", _b64(NEW_KEY))
    result = rotate_master_key(settings, *keys.load_new_master_key())
    assert (result["already_current"], result["audited"], result["key_file_replaced"]) == (True, True, True)
    assert keys.load_master_key(settings) == NEW_KEY
    assert os.stat(settings.master_key_file).st_mode & 0o077 == 0
    assert not list(settings.master_key_file.parent.glob(".tmp-*"))
    ring = KeyRing.load(settings)
    assert ring.subject_id(T, "u1") == subject
    with state.connect(settings) as conn:
        assert Vault(ring, conn).data_keys(T, [subject], create=False)[subject] == dek
    assert len(audit.entries(settings, action="keys.master_rotated")) == 1
    again = rotate_master_key(settings, NEW_KEY)  # the configured key is the new one now: nothing left
    assert (again["already_current"], again["audited"], again["key_file_replaced"]) == (True, False, False)


def _legacy_hkdf(master: bytes, info: str, salt: bytes = b"pseudozone/hkdf-salt/v1") -> bytes:
    """The derivation as it was before the root secret: straight from the master key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info.encode()).derive(master)


def test_a_root_from_before_the_root_secret_adopts_its_master_key(
        lake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest.ingest_pending(lake)
    with state.connect(lake) as conn:
        conn.execute("DROP TABLE root_secret")  # the state database as the code before it left it
        tenant, subject, wrapped, version = conn.execute(
            "SELECT tenant_id, subject_id, wrapped_dek, kek_version FROM subject_keys WHERE tenant_id = ?"
            " AND wrapped_dek IS NOT NULL LIMIT 1", (T,)).fetchone()
        root_id = conn.execute("SELECT root_id FROM kek_root").fetchone()[0]
    # the pseudonyms and the data keys are what the old formulas (HKDF of the master key) give
    pseudonym_key = _legacy_hkdf(TEST_MASTER_KEY, f"pseudozone/pseudonym/{T}/subject/v1")
    old_subject = "v1:" + hmac.new(pseudonym_key, planted.USER.encode(), hashlib.sha256).hexdigest()
    subjects = {s for f in lake.event_zone.rglob("*.parquet") if f"tenant_id={T}" in str(f)
                for s in pq.read_table(f, columns=["subject_id"])["subject_id"].to_pylist()}
    assert old_subject in subjects
    seed = (lake.key_dir / "kek" / root_id / tenant / f"v{version}.seed").read_bytes()
    old_kek = _legacy_hkdf(TEST_MASTER_KEY, f"pseudozone/kek/{tenant}/v{version}", salt=seed)
    dek = AESGCM(old_kek).decrypt(wrapped[:12], wrapped[12:], f"pseudozone/dek|{tenant}|{subject}".encode())

    ring = KeyRing.load(lake)  # adopts the master key as the root secret, stored wrapped
    conn = sqlite3.connect(lake.state_db)
    try:
        assert conn.execute("SELECT master_version, origin FROM root_secret").fetchall() == [(1, "adopted")]
    finally:
        conn.close()
    assert ring.subject_id(T, planted.USER) == old_subject
    pii_before = _pii_values(lake, ring)
    assert pii_before

    rotate_master_key(lake, NEW_KEY)
    _use_key(monkeypatch, NEW_KEY)
    ring = KeyRing.load(lake)
    assert ring.subject_id(T, planted.USER) == old_subject
    with state.connect(lake) as sconn:
        assert Vault(ring, sconn).data_keys(tenant, [subject], create=False)[subject] == dek
    assert _pii_values(lake, ring) == pii_before
    _use_key(monkeypatch, TEST_MASTER_KEY)
    with pytest.raises(KeyMaterialError, match="retired"):
        KeyRing.load(lake)


def test_keys_init_makes_a_random_root_secret_that_rotation_keeps(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _use_key(monkeypatch, TEST_MASTER_KEY)
    keys.init_master_key(settings)
    ring = KeyRing.load(settings)
    subject = ring.subject_id(T, "u1")
    assert subject != KeyRing(TEST_MASTER_KEY).subject_id(T, "u1")  # not the master key's derivation
    assert ring.check_value() == keys.key_check_value(TEST_MASTER_KEY)
    rotate_master_key(settings, NEW_KEY)
    _use_key(monkeypatch, NEW_KEY)
    assert KeyRing.load(settings).subject_id(T, "u1") == subject
    conn = sqlite3.connect(settings.state_db)
    try:
        assert conn.execute("SELECT master_version, origin FROM root_secret").fetchall() == [(2, "random")]
        assert conn.execute("SELECT count(*) FROM key_checks").fetchone()[0] == 2
    finally:
        conn.close()


def test_a_wrong_key_is_refused_before_and_after_a_rotation(
        world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = bytes(range(200, 232))
    _use_key(monkeypatch, wrong)
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        KeyRing.load(world)
    with pytest.raises(KeyMaterialError, match="not this data root's key"):
        rotate_master_key(world, NEW_KEY)  # the configured key must be the root's to rotate it
    _use_key(monkeypatch, TEST_MASTER_KEY)
    rotate_master_key(world, NEW_KEY)
    _use_key(monkeypatch, wrong)
    with pytest.raises(KeyMaterialError, match="not this data root's key") as err:
        KeyRing.load(world)
    assert "retired" not in str(err.value)
    _use_key(monkeypatch, NEW_KEY)
    KeyRing.load(world)


def test_no_key_bytes_in_logs_errors_audit_or_the_data_root(
        world: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(world.root)]
    texts: list[str] = []
    new_file = _key_file(tmp_path / "new.key", NEW_KEY)
    loose = tmp_path / "loose.key"
    loose.write_text(_b64(NEW_KEY))
    os.chmod(loose, 0o644)
    with caplog.at_level(logging.DEBUG):
        # every refusal on the way
        assert cli([*home, "keys", "rotate-master"]) == 2  # no new key anywhere
        assert cli([*home, "keys", "rotate-master", "--new-key-file", str(loose)]) == 2
        monkeypatch.setenv("PSEUDOZONE_NEW_MASTER_KEY", _b64(NEW_KEY)[:-4])  # not 32 bytes
        assert cli([*home, "keys", "rotate-master"]) == 2
        monkeypatch.setenv("PSEUDOZONE_NEW_MASTER_KEY", _b64(TEST_MASTER_KEY))  # the current key
        assert cli([*home, "keys", "rotate-master"]) == 2
        monkeypatch.delenv("PSEUDOZONE_NEW_MASTER_KEY")
        err = capsys.readouterr().err
        assert "no new master key" in err and "chmod 600" in err and "nothing to rotate to" in err
        assert "must decode to 32 bytes" in err
        texts.append(err)
        # the rotation, verbose
        assert cli([*home, "-v", "keys", "rotate-master", "--new-key-file", str(new_file)]) == 0
        assert cli([*home, "keys", "check"]) == 2  # the old key, refused
        _use_key(monkeypatch, NEW_KEY)
        assert cli([*home, "-v", "keys", "rotate-master", "--new-key-file", str(new_file), "--json"]) == 0
        assert cli([*home, "audit", "show", "--json"]) == 0
        _use_key(monkeypatch, TEST_MASTER_KEY)
        with pytest.raises(KeyMaterialError) as retired:
            KeyRing.load(world)
        texts.append(str(retired.value))
    _use_key(monkeypatch, NEW_KEY)
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    texts.append(json.dumps(audit.entries(world), default=str))
    assert "keys.master_rotated" in texts[-1]
    text = "\n".join(texts)
    # the old master key is this root's root secret as well (adopted): neither may show anywhere
    needles = _forms(TEST_MASTER_KEY) + _forms(NEW_KEY)
    assert [n for n in needles if n in text] == []
    # nor in any file of the data root (the state database holds the root secret wrapped only)
    raw = [TEST_MASTER_KEY, NEW_KEY, *(n.encode() for n in needles)]
    leaks = [str(f.relative_to(world.root)) for f in world.root.rglob("*") if f.is_file()
             and any(r in f.read_bytes() for r in raw)]
    assert leaks == []


def test_a_lost_root_secret_row_is_refused_never_replaced_by_the_master_key(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root made by keys init (random root secret), then rotated: without its root_secret row the
    master key is not its root secret, so neither key is adopted in its place."""
    _use_key(monkeypatch, TEST_MASTER_KEY)
    keys.init_master_key(settings)
    ring = KeyRing.load(settings)
    subject = ring.subject_id(T, "u1")
    with state.connect(settings) as conn:
        Vault(ring, conn).data_keys(T, [subject], create=True)
    with state.connect(settings) as conn:
        conn.execute("DELETE FROM root_secret")
    with pytest.raises(KeyMaterialError, match="root secret row is lost"):
        KeyRing.load(settings)
    conn = sqlite3.connect(settings.state_db)
    try:  # nothing was adopted in its place
        assert conn.execute("SELECT count(*) FROM root_secret").fetchone()[0] == 0
    finally:
        conn.close()

    other = Settings.from_env(settings.root.with_name("other"))
    other.ensure()
    keys.init_master_key(other)
    rotate_master_key(other, NEW_KEY)
    with state.connect(other) as conn:
        conn.execute("DELETE FROM root_secret")
    for key in (TEST_MASTER_KEY, NEW_KEY):
        _use_key(monkeypatch, key)
        with pytest.raises(KeyMaterialError, match="holds no root secret"):
            KeyRing.load(other)
