"""Key hierarchy (DESIGN.md "Keys"; docs/adr/0002-key-hierarchy.md).

    master key (env var, Airflow connection, or a generated 0600 key file)
      ├─ HKDF → tenant pseudonym key, per tenant, version and purpose  (HMAC-SHA256)
      └─ HKDF → tenant key-encryption key (KEK)
                 └─ wraps one random data key (DEK) per subject, kept in the vault
                      └─ AES-256-GCM of that subject's PII values

No function here logs or returns key material in a message.  Destroying a
subject's DEK (crypto-shredding) makes every copy of its ciphertext unreadable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "PSEUDOZONE_MASTER_KEY"
MASTER_KEY_CONN_ENV = "PSEUDOZONE_MASTER_KEY_CONN_ID"
PSEUDONYM_VERSION_ENV = "PSEUDOZONE_PSEUDONYM_VERSION"
KEY_BYTES = 32
NONCE_BYTES = 12
KEK_VERSION = 1
_HKDF_SALT = b"pseudozone/hkdf-salt/v1"
MASTER_KEY_VERSION = 1
_KEY_CHECK_INFO = "pseudozone/key-check/v1"
_SHA256_BLOCK = 64


def _decode_key(text: str, origin: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), altchars=b"-_" if "-" in text or "_" in text else None,
                               validate=True)
    except (binascii.Error, ValueError):
        raise KeyMaterialError(f"master key from {origin} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyMaterialError(
            f"master key from {origin} must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def _key_from_airflow(conn_id: str) -> bytes:
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        raise KeyMaterialError(
            f"{MASTER_KEY_CONN_ENV} is set but Airflow is not importable") from None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - the hook's error text is not ours to show
        raise KeyMaterialError(f"Airflow connection {conn_id!r} could not be read") from None
    if not conn.password:
        raise KeyMaterialError(f"Airflow connection {conn_id!r} has no password field")
    return _decode_key(conn.password, f"Airflow connection {conn_id!r}")


def _key_from_file(settings: Settings) -> bytes:
    path = settings.master_key_file
    if not path.exists():
        held = root_holds_data(settings)
        if held:
            raise KeyMaterialError(
                f"no master key: the key file state/{path.name} is missing, but this data root already "
                f"holds {held}. A new key would give every subject new pseudonyms and leave the PII "
                f"zone unreadable, so none is made: restore the key file from its backup, or set "
                f"${MASTER_KEY_ENV} or ${MASTER_KEY_CONN_ENV}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
            log.warning("created a new master key in state/%s (empty data root); back it up", path.name)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(
            f"key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")
    return _decode_key(path.read_text(), f"key file {path.name}")


def _master_key(settings: Settings) -> tuple[bytes, str]:
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _decode_key(env, f"${MASTER_KEY_ENV}"), f"${MASTER_KEY_ENV}"
    conn_id = os.environ.get(MASTER_KEY_CONN_ENV)
    if conn_id:
        return _key_from_airflow(conn_id), f"Airflow connection {conn_id!r}"
    return _key_from_file(settings), f"key file state/{settings.master_key_file.name}"


def load_master_key(settings: Settings) -> bytes:
    """Env var first, then an Airflow connection, then the embedded key file.

    The key file is generated only on a data root that holds no data yet. The key is
    not checked against the root here; ``KeyRing.load`` does that.
    """
    return _master_key(settings)[0]


# -- the key check value ---------------------------------------------------------------------------


def key_check_value(master: bytes) -> str:
    """A keyed fingerprint of a master key: it tells keys apart and reveals nothing of the key."""
    check_key = _hkdf(master, _KEY_CHECK_INFO)
    return hmac.new(check_key, b"pseudozone master key check", hashlib.sha256).hexdigest()[:32]


def _read_state(settings: Settings, query: Callable[[sqlite3.Connection], Any]) -> Any:
    """``query`` on the state database opened read-only; None when there is none (nothing is created)."""
    if not settings.state_db.exists():
        return None
    conn = sqlite3.connect(f"{settings.state_db.as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        return query(conn)
    except sqlite3.OperationalError:  # a table of a later schema is not there yet
        return None
    finally:
        conn.close()


def _count(conn: sqlite3.Connection, table: str) -> int:
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names
    except sqlite3.OperationalError:
        return 0


def root_holds_data(settings: Settings) -> str | None:
    """What the data root already holds that a master key was used for; None for an empty root."""
    tables = ("subject_keys", "batches", "key_checks")
    counts = _read_state(settings, lambda c: {t: _count(c, t) for t in tables})
    if counts and counts["key_checks"]:
        return "a recorded master key check"
    if counts and counts["subject_keys"]:
        return f"{counts['subject_keys']} subject data key(s)"
    for zone in (settings.pii_zone, settings.event_zone, settings.restricted_zone):
        if zone.is_dir() and next(zone.rglob("*.parquet"), None) is not None:
            return f"published files in zones/{zone.name}"
    if counts and counts["batches"]:
        return f"{counts['batches']} batch(es) in the ledger"
    return None


def _recorded_checks(settings: Settings) -> dict[int, str]:
    rows = _read_state(settings, lambda c: c.execute(
        "SELECT version, check_value FROM key_checks").fetchall())
    return dict(rows or [])


def _unwraps_a_stored_key(settings: Settings, keyring: KeyRing) -> bool | None:
    """Whether ``keyring`` unwraps a data key of the vault; None when the vault holds none."""
    row = _read_state(settings, lambda c: c.execute(
        "SELECT tenant_id, subject_id, wrapped_dek FROM subject_keys WHERE wrapped_dek IS NOT NULL"
        " LIMIT 1").fetchone())
    if not row:
        return None
    try:
        keyring.unwrap_dek(row[0], row[1], row[2])
    except KeyMaterialError:
        return False
    return True


def verify_master_key(settings: Settings, keyring: KeyRing, origin: str) -> None:
    """Refuse a master key that is not this data root's (the key check value recorded at first use).

    A root without a recorded check gets one: an empty root at once, a root from before
    key checks only after the key unwrapped one of the vault's data keys.
    """
    check = keyring.check_value()
    recorded = _recorded_checks(settings)
    if recorded:
        if check not in recorded.values():
            raise KeyMaterialError(
                f"the master key from {origin} is not this data root's key (its key check value differs "
                f"from the one recorded when the root was first used); nothing was done. Use the key "
                f"this root was created with")
        return
    if _unwraps_a_stored_key(settings, keyring) is False:
        raise KeyMaterialError(
            f"the master key from {origin} does not unwrap this data root's data keys: it is not the "
            f"key the root was created with; nothing was done")
    record_key_check(settings, check)


def record_key_check(settings: Settings, check: str) -> None:
    from pseudozone import state

    with state.connect(settings) as conn:
        conn.execute("INSERT OR IGNORE INTO key_checks (version, check_value) VALUES (?, ?)",
                     (MASTER_KEY_VERSION, check))


def init_master_key(settings: Settings) -> str:
    """``pseudozone keys init``: a new key (file) and its check, on an empty data root only.

    Returns where the key came from (a key file it created, or the env var / connection).
    """
    held = root_holds_data(settings)
    if held:
        raise KeyMaterialError(f"this data root already holds {held}; it keeps the master key it has")
    external = os.environ.get(MASTER_KEY_ENV) or os.environ.get(MASTER_KEY_CONN_ENV)
    if not external and settings.master_key_file.exists():
        raise KeyMaterialError(f"a key file state/{settings.master_key_file.name} exists already;"
                               " it is kept as it is")
    master, origin = _master_key(settings)
    record_key_check(settings, key_check_value(master))
    return origin


def _hkdf(master: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_HKDF_SALT,
                info=info.encode()).derive(master)


def pii_associated_data(tenant: str, subject_id: str, column: str) -> bytes:
    return f"pseudozone/pii|{tenant}|{subject_id}|{column}".encode()


class KeyRing:
    """Derived keys for one master key.  Cheap to build; caches derivations."""

    def __init__(self, master: bytes, *, pseudonym_version: int | None = None) -> None:
        if len(master) != KEY_BYTES:
            raise KeyMaterialError(f"master key must be {KEY_BYTES} bytes")
        self._master = master
        if pseudonym_version is None:
            pseudonym_version = int(os.environ.get(PSEUDONYM_VERSION_ENV, "1"))
        if pseudonym_version < 1:
            raise KeyMaterialError("pseudonym version must be >= 1")
        self.pseudonym_version = pseudonym_version
        self._cache: dict[str, bytes] = {}

    def __reduce__(self) -> Any:
        # a key ring must never be pickled into XCom, a result backend or a queue
        raise TypeError("KeyRing holds key material and cannot be pickled")

    def __repr__(self) -> str:
        return f"KeyRing(pseudonym_version={self.pseudonym_version})"

    def check_value(self) -> str:
        """The master key's check value (``key_check_value``), never the key."""
        return key_check_value(self._master)

    @classmethod
    def load(cls, settings: Settings) -> KeyRing:
        """The data root's master key, refused when it is not the key the root was first used with."""
        master, origin = _master_key(settings)
        ring = cls(master)
        verify_master_key(settings, ring, origin)
        return ring

    def _derive(self, info: str) -> bytes:
        key = self._cache.get(info)
        if key is None:
            key = self._cache[info] = _hkdf(self._master, info)
        return key

    def pseudonym_key(self, tenant: str, purpose: str, version: int | None = None) -> bytes:
        v = self.pseudonym_version if version is None else version
        return self._derive(f"pseudozone/pseudonym/{tenant}/{purpose}/v{v}")

    def kek(self, tenant: str) -> bytes:
        return self._derive(f"pseudozone/kek/{tenant}/v{KEK_VERSION}")

    def hold_key(self, tenant: str) -> bytes:
        """Encrypts the free-text reasons of the tenant's legal holds (tenants see only a code)."""
        return self._derive(f"pseudozone/holds/{tenant}/v1")

    def request_key(self, tenant: str) -> bytes:
        """Encrypts the raw identifiers and values a rights request carries while it is open."""
        return self._derive(f"pseudozone/requests/{tenant}/v1")

    def pseudonymize(self, tenant: str, purpose: str, values: Iterable[str],
                     version: int | None = None) -> list[str]:
        """``vN:`` + hex HMAC-SHA256 of each value under the tenant's key for ``purpose``."""
        v = self.pseudonym_version if version is None else version
        # HMAC (RFC 2104) spelled out over hashlib: the keyed inner and outer states are
        # made once and copied per value, which costs a third of hmac.digest per value.
        # tests/unit/test_keys.py checks the result against hmac.digest.
        padded = self.pseudonym_key(tenant, purpose, v).ljust(_SHA256_BLOCK, b"\0")
        inner_copy = hashlib.sha256(bytes(b ^ 0x36 for b in padded)).copy
        outer_copy = hashlib.sha256(bytes(b ^ 0x5C for b in padded)).copy
        prefix = f"v{v}:"
        out: list[str] = []
        append = out.append
        for value in values:
            inner = inner_copy()
            inner.update(value.encode())
            outer = outer_copy()
            outer.update(inner.digest())
            append(prefix + outer.hexdigest())
        return out

    def subject_id(self, tenant: str, user_id: str, version: int | None = None) -> str:
        return self.pseudonymize(tenant, "subject", [user_id], version)[0]

    # -- data keys -------------------------------------------------------------------

    def wrap_dek(self, tenant: str, subject_id: str, dek: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        ad = f"pseudozone/dek|{tenant}|{subject_id}".encode()
        return nonce + AESGCM(self.kek(tenant)).encrypt(nonce, dek, ad)

    def unwrap_dek(self, tenant: str, subject_id: str, wrapped: bytes) -> bytes:
        ad = f"pseudozone/dek|{tenant}|{subject_id}".encode()
        try:
            return AESGCM(self.kek(tenant)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ad)
        except InvalidTag:
            raise KeyMaterialError(
                f"data key of subject {subject_id} in tenant {tenant!r} does not unwrap "
                "(wrong master key or tampered vault)") from None


class Vault:
    """Per-subject data keys, wrapped by the tenant KEK, in the state database."""

    def __init__(self, keyring: KeyRing, conn: sqlite3.Connection) -> None:
        self.keyring = keyring
        self.conn = conn

    def _fetch(self, tenant: str, subjects: list[str]) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}
        for start in range(0, len(subjects), 500):
            chunk = subjects[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT subject_id, wrapped_dek FROM subject_keys "  # noqa: S608 - marks only
                f"WHERE tenant_id = ? AND subject_id IN ({marks})", [tenant, *chunk])
            found.update(rows)
        return found

    def data_keys(self, tenant: str, subjects: Iterable[str], *, create: bool) -> dict[str, bytes]:
        """Unwrapped DEKs of ``subjects``; missing ones are created when ``create``.

        A destroyed (crypto-shredded) key is never recreated: a subject whose key
        was destroyed gets no entry, and the caller must not write PII for it.
        """
        wanted = sorted(set(subjects))
        stored = self._fetch(tenant, wanted)
        missing = [s for s in wanted if s not in stored]
        if missing and create:
            self.conn.executemany(
                "INSERT OR IGNORE INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version)"
                " VALUES (?, ?, ?, ?)",
                [(tenant, s, self.keyring.wrap_dek(tenant, s, os.urandom(KEY_BYTES)), KEK_VERSION)
                 for s in missing])
            stored.update(self._fetch(tenant, missing))
        return {s: self.keyring.unwrap_dek(tenant, s, w) for s, w in stored.items() if w is not None}

    def destroyed(self, tenant: str, subjects: Iterable[str]) -> set[str]:
        stored = self._fetch(tenant, sorted(set(subjects)))
        return {s for s, w in stored.items() if w is None}

    def tombstone(self, tenant: str, subject_id: str) -> None:
        """Mark a subject that never had a key as erased, so none is ever created for it."""
        self.conn.execute(
            "INSERT OR IGNORE INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version,"
            " destroyed_at) VALUES (?, ?, NULL, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            (tenant, subject_id, KEK_VERSION))

    def destroy(self, tenant: str, subject_id: str) -> bool:
        """Crypto-shred: drop the wrapped key, keep a tombstone row."""
        cur = self.conn.execute(
            "UPDATE subject_keys SET wrapped_dek = NULL, "
            "destroyed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "WHERE tenant_id = ? AND subject_id = ? AND wrapped_dek IS NOT NULL",
            (tenant, subject_id))
        return cur.rowcount > 0


def encrypt_value(aead: AESGCM, plaintext: str, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext.encode("utf-8"), ad)


def decrypt_value(aead: AESGCM, blob: bytes, ad: bytes) -> str:
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad).decode("utf-8")
    except InvalidTag:
        raise KeyMaterialError("a PII value does not decrypt (wrong key, subject or column)") from None
