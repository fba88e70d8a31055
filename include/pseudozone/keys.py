"""Key hierarchy (docs/adr/0002-key-hierarchy.md).

    master key (env var, Airflow connection, a given 0600 key file, or a generated 0600 key file)
      └─ wraps (AES-256-GCM) the root secret, stored in the state database (``root_secret``)
           ├─ HKDF → tenant pseudonym key, per tenant, version and purpose  (HMAC-SHA256)
           ├─ HKDF → seal, hold, request, export and audit keys
           └─ HKDF → tenant key-encryption key (KEK)
                      └─ wraps one random data key (DEK) per subject, kept in the vault
                           └─ AES-256-GCM of that subject's PII values

The master key only wraps the root secret (and keys its own check value), so rotating it
(``pseudozone.master_rotation``) re-wraps one row and changes no pseudonym, KEK or ciphertext.  A root
from before the root secret adopts its master key's bytes as its root secret.

No function here logs or returns key material in a message.  Destroying a
subject's DEK (crypto-shredding) makes every copy of its ciphertext unreadable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pseudozone.config import KEY_DIR_ENV, TENANT_RE, Settings
from pseudozone.errors import KeyMaterialError

if TYPE_CHECKING:
    from collections.abc import Callable

    from pseudozone.state import StateConn

log = logging.getLogger(__name__)

MASTER_KEY_ENV = "PSEUDOZONE_MASTER_KEY"
MASTER_KEY_CONN_ENV = "PSEUDOZONE_MASTER_KEY_CONN_ID"
# a key file kept elsewhere (a Docker or Kubernetes secret mounted read-only): read, never made
MASTER_KEY_FILE_ENV = "PSEUDOZONE_MASTER_KEY_FILE"
PSEUDONYM_VERSION_ENV = "PSEUDOZONE_PSEUDONYM_VERSION"
# where ``keys rotate-master`` (and the rotate_keys DAG's rotate_master task) reads the new key
NEW_MASTER_KEY_ENV = "PSEUDOZONE_NEW_MASTER_KEY"
NEW_MASTER_KEY_CONN_ENV = "PSEUDOZONE_NEW_MASTER_KEY_CONN_ID"
NEW_MASTER_KEY_FILE_ENV = "PSEUDOZONE_NEW_MASTER_KEY_FILE"
SEALED_PREFIX = "s:"  # a sealed pseudonym (KeyRing.seal)
KEY_BYTES = 32
NONCE_BYTES = 12
KEK_VERSION = 1  # the kek_version a tombstone row records (it wraps nothing)
LEGACY_KEK_VERSION = 1
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


def _key_from_airflow(conn_id: str, env: str = MASTER_KEY_CONN_ENV) -> bytes:
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        raise KeyMaterialError(
            f"{env} is set but Airflow is not importable") from None
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - the hook's error text is not ours to show
        raise KeyMaterialError(f"Airflow connection {conn_id!r} could not be read") from None
    if not conn.password:
        raise KeyMaterialError(f"Airflow connection {conn_id!r} has no password field")
    return _decode_key(conn.password, f"Airflow connection {conn_id!r}")


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(
            f"key file {path} is readable by group or others (mode {mode:o}); chmod 600 it")


def _key_from_file(settings: Settings) -> tuple[bytes, str]:
    """The embedded default: ``<key dir>/master.key``; a root's old ``state/master.key`` is still read."""
    path = settings.master_key_file
    legacy = settings.legacy_master_key_file
    if not path.exists() and legacy.exists():
        log.warning("the master key file is inside the data root (state/%s), so every backup of the root "
                    "holds it; move it to %s (the key directory, $%s) and keep it out of the root's "
                    "backups", legacy.name, path, KEY_DIR_ENV)
        _check_private(legacy)
        origin = f"key file state/{legacy.name}"
        return _decode_key(legacy.read_text(), origin), origin
    if not path.exists():
        held = root_holds_data(settings)
        if held:
            raise KeyMaterialError(
                f"no master key: the key file {path} is missing, but this data root already "
                f"holds {held}. A new key would give every subject new pseudonyms and leave the PII "
                f"zone unreadable, so none is made: restore the key file from its backup (or set "
                f"${KEY_DIR_ENV} to its directory), or set ${MASTER_KEY_ENV}, ${MASTER_KEY_CONN_ENV} or "
                f"${MASTER_KEY_FILE_ENV}")
        _private_dir(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            log.warning("created a new master key in %s (empty data root); back it up in a secret store,"
                        " apart from the data root", path)
    _check_private(path)
    return _decode_key(path.read_text(), f"key file {path.name}"), f"key file {path}"


def _key_from_given_file(name: str | os.PathLike[str], named_by: str = f"${MASTER_KEY_FILE_ENV}",
                         ) -> tuple[bytes, str]:
    """``$PSEUDOZONE_MASTER_KEY_FILE``: a key file the deployment provides.  Never created (a
    missing file is an error, not an empty root's new key); refused unless only its owner may
    read it, as the key directory's file.  ``named_by`` says what named it (in messages)."""
    path = Path(name).expanduser()
    origin = f"key file {path} ({named_by})"
    try:
        _check_private(path)
        text = path.read_text()
    except FileNotFoundError:
        raise KeyMaterialError(f"{named_by} names {path}, which does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise KeyMaterialError(f"{named_by} names {path}, which cannot be read as a key file"
                               f" ({type(exc).__name__})") from None
    return _decode_key(text, origin), origin


def _external_key_configured() -> bool:
    """A master key given by the environment (env var, connection or key file), not the key dir's."""
    return any(os.environ.get(name) for name in (MASTER_KEY_ENV, MASTER_KEY_CONN_ENV, MASTER_KEY_FILE_ENV))


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o700)


def _master_key(settings: Settings) -> tuple[bytes, str]:
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _decode_key(env, f"${MASTER_KEY_ENV}"), f"${MASTER_KEY_ENV}"
    conn_id = os.environ.get(MASTER_KEY_CONN_ENV)
    if conn_id:
        return _key_from_airflow(conn_id), f"Airflow connection {conn_id!r}"
    given = os.environ.get(MASTER_KEY_FILE_ENV)
    if given:
        return _key_from_given_file(given)
    return _key_from_file(settings)


def load_master_key(settings: Settings) -> bytes:
    """Env var first, then an Airflow connection, then ``$PSEUDOZONE_MASTER_KEY_FILE``, then the
    embedded key file.

    The key file is generated only on a data root that holds no data yet. The key is
    not checked against the root here; ``KeyRing.load`` does that.
    """
    return _master_key(settings)[0]


# -- the key check value ---------------------------------------------------------------------------


def key_check_value(master: bytes) -> str:
    """A keyed fingerprint of a master key: it tells keys apart and reveals nothing of the key."""
    check_key = _hkdf(master, _KEY_CHECK_INFO)
    return hmac.new(check_key, b"pseudozone master key check", hashlib.sha256).hexdigest()[:32]


def _now() -> str:
    from pseudozone import state

    return state.now()


def _read_state(settings: Settings, query: Callable[[StateConn], Any]) -> Any:
    """``query`` on the state database, read only; None when there is none (nothing is created)."""
    from sqlalchemy.exc import SQLAlchemyError

    from pseudozone import state

    try:
        with state.read(settings) as conn:
            return None if conn is None else query(conn)
    except SQLAlchemyError:
        # a locked or unreadable state database says nothing about the key: never "no check yet"
        raise KeyMaterialError("the master key cannot be checked: the state database cannot be read"
                               " (locked, damaged or unreachable)") from None


def _count(conn: StateConn, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 - fixed names


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
    """Whether ``keyring`` unwraps a data key of the vault; None when the vault holds none it can try."""
    def attempt(conn: StateConn) -> bool | None:
        row = conn.execute(
            "SELECT tenant_id, subject_id, wrapped_dek, kek_version FROM subject_keys"
            " WHERE wrapped_dek IS NOT NULL ORDER BY kek_version = ? DESC LIMIT 1",
            (LEGACY_KEK_VERSION,)).fetchone()
        if not row:
            return None
        vault = Vault(keyring, conn)
        try:
            kek = vault.kek(row[0], row[3])
        except KeyMaterialError:  # a KEK seed missing says nothing of the master key
            return None
        try:
            _unwrap(kek, row[0], row[1], row[2])
        except KeyMaterialError:
            return False
        return True

    result: bool | None = _read_state(settings, attempt)
    return result


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
    proved = _unwraps_a_stored_key(settings, keyring)
    if proved is False:
        raise KeyMaterialError(
            f"the master key from {origin} does not unwrap this data root's data keys: it is not the "
            f"key the root was created with; nothing was done")
    held = root_holds_data(settings) if proved is None else None
    if held:
        # data, but no data key to prove the key on (events only, or every key erased): a wrong
        # key would go unnoticed, so only an operator who knows it is the right one records it
        raise KeyMaterialError(
            f"this data root holds {held} but no key check was recorded, and it has no data key to "
            f"prove the master key from {origin} on; if it is the key the root was created with, "
            f"record it with 'pseudozone keys adopt'; nothing was done")
    record_key_check(settings, check)


def require_configured_key(settings: Settings) -> None:
    """Raise unless a master key is configured (env var, Airflow connection, given key file or an
    existing key file): for commands that must never make one (``keys check``, ``keys adopt``)."""
    if _external_key_configured():
        return
    if settings.master_key_file.exists() or settings.legacy_master_key_file.exists():
        return
    raise KeyMaterialError(f"no master key is configured for {settings.root}: set ${MASTER_KEY_ENV},"
                           f" ${MASTER_KEY_CONN_ENV} or ${MASTER_KEY_FILE_ENV}, or restore the key file"
                           f" ({settings.master_key_file}); none is made here")


def adopt_master_key(settings: Settings) -> str:
    """``pseudozone keys adopt``: record the configured key's check value on a root that holds data
    from before key checks and has no data key to prove it on (the operator vouches for it)."""
    if _recorded_checks(settings):
        raise KeyMaterialError("this data root has a recorded key check already; 'pseudozone keys check'"
                               " tells whether the configured key is its key")
    require_configured_key(settings)
    master, origin = _master_key(settings)
    ring = KeyRing(master)
    if _unwraps_a_stored_key(settings, ring) is False:
        raise KeyMaterialError(f"the master key from {origin} does not unwrap this data root's data keys")
    record_key_check(settings, ring.check_value())
    return origin


def record_key_check(settings: Settings, check: str) -> None:
    from pseudozone import state

    with state.connect(settings) as conn:
        conn.execute("INSERT INTO key_checks (version, check_value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                     (MASTER_KEY_VERSION, check))
        stored = conn.execute("SELECT check_value FROM key_checks WHERE version = ?",
                              (MASTER_KEY_VERSION,)).fetchone()
    if stored is None or stored[0] != check:
        # another process recorded a different key in between
        raise KeyMaterialError("the master key is not this data root's key (another key's check was"
                               " recorded at the same time); nothing was done")


def init_master_key(settings: Settings) -> str:
    """``pseudozone keys init``: a new key (file) and its check, on an empty data root only.

    Returns where the key came from (a key file it created, or the env var / connection).
    """
    held = root_holds_data(settings)
    if held:
        raise KeyMaterialError(f"this data root already holds {held}; it keeps the master key it has")
    if not _external_key_configured():
        for existing in (settings.legacy_master_key_file, settings.master_key_file):
            if existing.exists():
                raise KeyMaterialError(f"a key file {existing} exists already; it is kept as it is")
    master, origin = _master_key(settings)
    # a root made here starts with a random root secret (docs/adr/0002-key-hierarchy.md, "Root
    # secret"), recorded with the key's check value in one transaction
    _store_root_secret(settings, master, os.urandom(KEY_BYTES), origin, kind=ORIGIN_RANDOM)
    return origin


def _hkdf(master: bytes, info: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_HKDF_SALT,
                info=info.encode()).derive(master)


def pii_associated_data(tenant: str, subject_id: str, column: str) -> bytes:
    return f"pseudozone/pii|{tenant}|{subject_id}|{column}".encode()


class KeyRing:
    """Derived keys for one root secret.  Cheap to build; caches derivations.

    ``secret`` is the data root's root secret (every key derives from it); ``master`` the master
    key that wraps it, used only for ``check_value`` and never kept.  A root that never had its
    master key rotated (and one from before the root secret) has the master key's bytes as its
    root secret, so ``KeyRing(master)`` is its key ring.
    """

    def __init__(self, secret: bytes, *, master: bytes | None = None,
                 pseudonym_version: int | None = None) -> None:
        if len(secret) != KEY_BYTES or (master is not None and len(master) != KEY_BYTES):
            raise KeyMaterialError(f"master key and root secret must be {KEY_BYTES} bytes")
        self._secret = secret
        self._check = key_check_value(master if master is not None else secret)
        if pseudonym_version is None:
            pseudonym_version = int(os.environ.get(PSEUDONYM_VERSION_ENV, "1"))
        if pseudonym_version < 1:
            raise KeyMaterialError("pseudonym version must be >= 1")
        self.pseudonym_version = pseudonym_version
        # per tenant: the version its pseudonyms are at, once rotated (``use_versions``)
        self._tenant_versions: dict[str, int] = {}
        self._cache: dict[str, bytes] = {}
        self._hmac_states: dict[bytes, tuple[Any, Any]] = {}  # key -> keyed inner, outer SHA-256

    def __reduce__(self) -> Any:
        # a key ring must never be pickled into XCom, a result backend or a queue
        raise TypeError("KeyRing holds key material and cannot be pickled")

    def __repr__(self) -> str:
        return f"KeyRing(pseudonym_version={self.pseudonym_version})"

    def check_value(self) -> str:
        """The master key's check value (``key_check_value``), never the key."""
        return self._check

    @classmethod
    def load(cls, settings: Settings) -> KeyRing:
        """The data root's key ring: its root secret, unwrapped with the configured master key once
        that key is proved to be the root's current master key (else refused, nothing done)."""
        master, origin = _master_key(settings)
        ring = cls(_open_root_secret(settings, master, origin), master=master)
        from pseudozone.state import pseudonym_versions  # the tenants' rotated versions

        return ring.use_versions(pseudonym_versions(settings))

    def _derive(self, info: str) -> bytes:
        key = self._cache.get(info)
        if key is None:
            key = self._cache[info] = _hkdf(self._secret, info)
        return key

    def version_of(self, tenant: str) -> int:
        """The pseudonym version of ``tenant``'s data: its rotated version, else the default."""
        return self._tenant_versions.get(tenant, self.pseudonym_version)

    def tenant_versions(self) -> dict[str, int]:
        return dict(self._tenant_versions)

    def use_versions(self, versions: dict[str, int]) -> KeyRing:
        """Take the tenants' rotated pseudonym versions (``state.pseudonym_versions``)."""
        self._tenant_versions = dict(versions)
        return self

    def pseudonym_key(self, tenant: str, purpose: str, version: int | None = None) -> bytes:
        v = self.version_of(tenant) if version is None else version
        return self._derive(f"pseudozone/pseudonym/{tenant}/{purpose}/v{v}")

    def kek(self, tenant: str) -> bytes:
        """The tenant's legacy KEK (version 1): derived from the root secret alone, so it can never
        be destroyed while the root secret lives (ADR 0009); data keys move off it on rotation."""
        return self._derive(f"pseudozone/kek/{tenant}/v{LEGACY_KEK_VERSION}")

    def seeded_kek(self, tenant: str, version: int, seed: bytes) -> bytes:
        """KEK version >= 2: HKDF of the root secret salted with that version's random seed, which
        lives only in the key directory and is deleted when the tenant's KEK is rotated."""
        if version <= LEGACY_KEK_VERSION or len(seed) != KEY_BYTES:
            raise KeyMaterialError("a seeded KEK needs a version >= 2 and a 32-byte seed")
        cache_key = f"seeded/{tenant}/v{version}/{hashlib.sha256(seed).hexdigest()}"
        key = self._cache.get(cache_key)
        if key is None:
            key = self._cache[cache_key] = HKDF(
                algorithm=hashes.SHA256(), length=KEY_BYTES, salt=seed,
                info=f"pseudozone/kek/{tenant}/v{version}".encode()).derive(self._secret)
        return key

    def hold_key(self, tenant: str) -> bytes:
        """Encrypts the free-text reasons of the tenant's legal holds (tenants see only a code)."""
        return self._derive(f"pseudozone/holds/{tenant}/v1")

    def request_key(self, tenant: str) -> bytes:
        """Encrypts the raw identifiers and values a rights request carries while it is open."""
        return self._derive(f"pseudozone/requests/{tenant}/v1")

    def export_key(self, tenant: str) -> bytes:
        """Wraps the one-time key of each of the tenant's export archives while the archive is
        kept, so that the nightly run can check it (docs/adr/0004-rights-processing.md)."""
        return self._derive(f"pseudozone/exports/{tenant}/v1")

    def audit_key(self) -> bytes:
        """Keys the audit log's hash chain (HMAC-SHA256) and its checkpoint file: one key for the
        whole data root, never stored (docs/adr/0004-rights-processing.md)."""
        return self._derive("pseudozone/audit/v1")

    def _sealer(self, tenant: str) -> AESSIV:
        info = f"pseudozone/seal/{tenant}/v1"
        return AESSIV(self._derive(info + "/a") + self._derive(info + "/b"))

    def seal(self, tenant: str, pseudonym: str) -> str:
        """An erased subject's (or cookie's) pseudonym as the state keeps it: ``s:`` + AES-SIV of
        it under the tenant's seal key (deterministic, so it can be looked up; reversible only
        with the key), so the state holds no pseudonym an analyst's data could be joined to
        (docs/adr/0015-pseudonym-rotation.md, "Erased subjects").  A sealed value is returned as is."""
        if pseudonym.startswith(SEALED_PREFIX):
            return pseudonym
        head, sep, digest = pseudonym.partition(":")
        if (sep and head[:1] == "v" and head[1:].isdigit() and 0 < int(head[1:]) < 256
                and len(digest) == 64 and all(ch in "0123456789abcdef" for ch in digest)):
            plain = bytes([int(head[1:])]) + bytes.fromhex(digest)  # 33 bytes: fits the ledger's columns
        else:
            plain = b"\0" + pseudonym.encode()  # any other id as it is
        sealed = self._sealer(tenant).encrypt(plain, [tenant.encode()])
        return SEALED_PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def unseal(self, tenant: str, value: str) -> str:
        """The pseudonym of a sealed value (a plain pseudonym is returned as is)."""
        if not value.startswith(SEALED_PREFIX):
            return value
        body = value[len(SEALED_PREFIX):]
        try:
            plain = self._sealer(tenant).decrypt(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)),
                                                 [tenant.encode()])
        except (InvalidTag, binascii.Error, ValueError):
            raise KeyMaterialError(f"tenant {tenant}: a sealed pseudonym does not open with this"
                                   " key") from None
        return plain[1:].decode() if plain[0] == 0 else f"v{plain[0]}:{plain[1:].hex()}"

    def pseudonymize(self, tenant: str, purpose: str, values: Iterable[str],
                     version: int | None = None) -> list[str]:
        """``vN:`` + hex of each value's keyed pseudonym for ``purpose`` (N: the tenant's version).

        Version 1 is HMAC-SHA256 of the value under the tenant's v1 key; version N > 1 is
        ``step`` N of version N-1's pseudonym (a chain), so that a rotation maps every
        pseudonym from the previous one alone (docs/adr/0015-pseudonym-rotation.md).
        """
        v = self.version_of(tenant) if version is None else version
        out = self._hmac_hex(self.pseudonym_key(tenant, purpose, 1), "v1:", values)
        for k in range(2, v + 1):
            out = self.step(tenant, purpose, k, out)
        return out

    def step(self, tenant: str, purpose: str, version: int, previous: Iterable[str]) -> list[str]:
        """Version ``version`` of pseudonyms (or tokens) of the version before it: ``vN:`` + hex
        HMAC-SHA256 of the previous form under the tenant's version-N key for ``purpose``."""
        if version < 2:
            raise KeyMaterialError("a rotation step goes to version 2 or later")
        return self._hmac_hex(self.pseudonym_key(tenant, purpose, version), f"v{version}:", previous)

    def _hmac_hex(self, key: bytes, prefix: str, values: Iterable[str]) -> list[str]:
        # HMAC (RFC 2104) spelled out over hashlib: the keyed inner and outer states are
        # made once per key and copied per value, which costs a third of hmac.digest per value.
        # tests/unit/test_keys.py checks the result against hmac.digest.
        states = self._hmac_states.get(key)
        if states is None:
            padded = key.ljust(_SHA256_BLOCK, b"\0")
            states = self._hmac_states[key] = (hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
                                               hashlib.sha256(bytes(b ^ 0x5C for b in padded)))
        inner_copy, outer_copy = states[0].copy, states[1].copy
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
        """Wrap under the legacy KEK (version 1); the vault wraps under the tenant's current KEK."""
        return _wrap(self.kek(tenant), tenant, subject_id, dek)

    def unwrap_dek(self, tenant: str, subject_id: str, wrapped: bytes) -> bytes:
        return _unwrap(self.kek(tenant), tenant, subject_id, wrapped)


def advance_pseudonym(keyring: KeyRing, tenant: str, purpose: str, value: str, to: int) -> str:
    """A stored pseudonym (``vK:<hex>``) stepped up to version ``to`` (unchanged at ``to``)."""
    head, sep, _ = value.partition(":")
    k = int(head[1:]) if sep and head[:1] == "v" and head[1:].isdigit() else None
    if k is None or k > to:
        raise KeyMaterialError(f"tenant {tenant}: a stored {purpose} pseudonym is not of version {to}"
                               " or earlier")
    for step in range(k + 1, to + 1):
        value = keyring.step(tenant, purpose, step, [value])[0]
    return value


def _wrap(kek: bytes, tenant: str, subject_id: str, dek: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    ad = f"pseudozone/dek|{tenant}|{subject_id}".encode()
    return nonce + AESGCM(kek).encrypt(nonce, dek, ad)


def _unwrap(kek: bytes, tenant: str, subject_id: str, wrapped: bytes) -> bytes:
    ad = f"pseudozone/dek|{tenant}|{subject_id}".encode()
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ad)
    except InvalidTag:
        raise KeyMaterialError(
            f"data key of subject {subject_id} in tenant {tenant!r} does not unwrap "
            "(wrong master key or tampered vault)") from None


# -- KEK versions and their seeds (docs/adr/0009-backups-and-erasure.md) ----------------------------

_SEED_RE = re.compile(r"v([0-9]{1,9})\.seed")


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory: the names made or removed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class KekSeeds:
    """The random KEK seeds of one data root, outside it: ``<key dir>/kek/<root id>/<tenant>/v<N>.seed``.

    The root id (random, in the state database) keeps two roots that share a key directory
    from ever deleting each other's seeds.
    """

    def __init__(self, settings: Settings, conn: StateConn) -> None:
        self.settings = settings
        self.conn = conn
        self._dir: Path | None = None

    @classmethod
    def for_connection(cls, conn: StateConn) -> KekSeeds:
        """The seeds of the data root whose state transaction ``conn`` is."""
        return cls(conn.settings, conn)

    def directory(self, *, create: bool) -> Path | None:
        if self._dir is None:
            # one row, made by the first writer that needs it (writers are serialized)
            row = self.conn.execute("SELECT root_id FROM kek_root ORDER BY root_id LIMIT 1").fetchone()
            if row is None:
                if not create:
                    return None
                self.conn.execute("INSERT INTO kek_root (root_id) SELECT ? WHERE NOT EXISTS"
                                  " (SELECT 1 FROM kek_root)", (os.urandom(8).hex(),))
                row = self.conn.execute("SELECT root_id FROM kek_root ORDER BY root_id LIMIT 1").fetchone()
            self._dir = self.settings.key_dir / "kek" / row[0]
        return self._dir

    def _tenant_dir(self, tenant: str, *, create: bool) -> Path | None:
        if not TENANT_RE.match(tenant):
            raise KeyMaterialError("not a valid tenant id")
        top = self.directory(create=create)
        return None if top is None else top / tenant

    def versions(self, tenant: str) -> dict[int, Path]:
        """The tenant's seed files by KEK version."""
        folder = self._tenant_dir(tenant, create=False)
        if folder is None or not folder.is_dir():
            return {}
        found: dict[int, Path] = {}
        for path in folder.iterdir():
            match = _SEED_RE.fullmatch(path.name)
            if match:
                found[int(match.group(1))] = path
        return found

    def seed(self, tenant: str, version: int) -> bytes:
        path = self.versions(tenant).get(version)
        if path is None:
            raise KeyMaterialError(
                f"the KEK seed of tenant {tenant!r} version {version} is not in the key directory "
                f"{self.settings.key_dir}: a key rotation destroyed it (the data keys wrapped under it "
                f"are shredded: this is a copy of the data root from before that rotation), or the key "
                f"directory is not this root's (set ${KEY_DIR_ENV})")
        _check_private(path)
        seed = path.read_bytes()
        if len(seed) != KEY_BYTES:
            raise KeyMaterialError(f"the KEK seed file {path} is damaged")
        return seed

    def create(self, tenant: str, version: int) -> None:
        """A new random seed for ``version`` (kept if one exists already): written, synced, then linked."""
        folder = self._tenant_dir(tenant, create=True)
        assert folder is not None
        for level in (self.settings.key_dir, folder.parent.parent, folder.parent, folder):
            _private_dir(level)
        tmp = folder / f".tmp-v{version}-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
                os.link(tmp, folder / f"v{version}.seed")
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_path(folder)

    def destroy(self, tenant: str, version: int) -> None:
        path = self.versions(tenant).get(version)
        if path is not None:
            path.unlink(missing_ok=True)
            _fsync_path(path.parent)


class Vault:
    """Per-subject data keys, wrapped by the tenant KEK, in the state database.

    A data key is wrapped under its tenant's current KEK version (``kek_version``): the
    newest seed in the key directory; version 1 is the legacy KEK of roots from before
    ADR 0009 (and of a vault on an in-memory database).
    """

    def __init__(self, keyring: KeyRing, conn: StateConn) -> None:
        self.keyring = keyring
        self.conn = conn
        self.seeds = KekSeeds.for_connection(conn)
        self._keks: dict[tuple[str, int], bytes] = {}

    def kek(self, tenant: str, version: int) -> bytes:
        """The tenant's KEK of ``version``; a version whose seed is gone is refused."""
        key = self._keks.get((tenant, version))
        if key is None:
            if version == LEGACY_KEK_VERSION:
                key = self.keyring.kek(tenant)
            else:
                key = self.keyring.seeded_kek(tenant, version, self.seeds.seed(tenant, version))
            self._keks[(tenant, version)] = key
        return key

    def current_version(self, tenant: str, *, create: bool) -> int:
        """The KEK version new data keys of ``tenant`` are wrapped under (its newest seed).

        A tenant without a seed gets its first one when ``create``, unless some of its data
        keys are wrapped under a seeded version: then the key directory is missing or wrong,
        and no new seed is made over it.
        """
        versions = self.seeds.versions(tenant)
        if versions:
            return max(versions)
        if not create:
            return LEGACY_KEK_VERSION
        seeded = self.conn.execute(
            "SELECT max(kek_version) FROM subject_keys WHERE tenant_id = ? AND wrapped_dek IS NOT NULL"
            " AND kek_version > ?", (tenant, LEGACY_KEK_VERSION)).fetchone()[0]
        if seeded:
            self.seeds.seed(tenant, int(seeded))  # raises: the seed those keys need is not there
        top = self.conn.execute("SELECT max(kek_version) FROM subject_keys WHERE tenant_id = ?",
                                (tenant,)).fetchone()[0]
        self.seeds.create(tenant, max(int(top or LEGACY_KEK_VERSION), LEGACY_KEK_VERSION) + 1)
        return max(self.seeds.versions(tenant))

    def _fetch(self, tenant: str, subjects: list[str]) -> dict[str, tuple[bytes | None, int]]:
        """(wrapped key or None, KEK version) of each subject with a row: a live key under its
        pseudonym, a destroyed one (tombstone) under its sealed pseudonym (``KeyRing.seal``)."""
        found: dict[str, tuple[bytes | None, int]] = {}
        tombstones = self.conn.execute("SELECT 1 FROM subject_keys WHERE tenant_id = ?"
                                       " AND wrapped_dek IS NULL LIMIT 1", (tenant,)).fetchone() is not None
        for start in range(0, len(subjects), 250):
            chunk = subjects[start:start + 250]
            sealed = {self.keyring.seal(tenant, s): s for s in chunk} if tombstones else {}
            marks = ",".join("?" * (len(chunk) + len(sealed)))
            rows = self.conn.execute(
                f"SELECT subject_id, wrapped_dek, kek_version FROM subject_keys "  # noqa: S608 - marks only
                f"WHERE tenant_id = ? AND subject_id IN ({marks})", [tenant, *chunk, *sealed])
            found.update((sealed.get(s, s), (w, int(v))) for s, w, v in rows)
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
            version = self.current_version(tenant, create=True)
            kek = self.kek(tenant, version)
            fresh = {s: os.urandom(KEY_BYTES) for s in missing}
            wrapped = {s: _wrap(kek, tenant, s, dek) for s, dek in fresh.items()}
            self.conn.executemany(
                "INSERT INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(tenant, s, w, version) for s, w in wrapped.items()])
            if version != LEGACY_KEK_VERSION \
                    and version not in self.seeds.versions(tenant):
                # a rotation finished between choosing the version and this insert (it destroys a
                # seed only while holding the write lock): move these new keys to the current KEK
                current = self.current_version(tenant, create=False)
                kek = self.kek(tenant, current)
                self.conn.executemany(
                    "UPDATE subject_keys SET wrapped_dek = ?, kek_version = ? WHERE tenant_id = ?"
                    " AND subject_id = ? AND wrapped_dek = ?",
                    [(_wrap(kek, tenant, s, fresh[s]), current, tenant, s, w) for s, w in wrapped.items()])
            stored.update(self._fetch(tenant, missing))
        return {s: _unwrap(self.kek(tenant, v), tenant, s, w) for s, (w, v) in stored.items()
                if w is not None}

    def live_keys(self, tenant: str) -> dict[str, bytes]:
        """Every live (not destroyed) data key of ``tenant``, unwrapped, by subject id."""
        rows = self.conn.execute("SELECT subject_id, wrapped_dek, kek_version FROM subject_keys"
                                 " WHERE tenant_id = ? AND wrapped_dek IS NOT NULL", (tenant,)).fetchall()
        return {s: _unwrap(self.kek(tenant, int(v)), tenant, s, w) for s, w, v in rows}

    def rename(self, tenant: str, renames: dict[str, str]) -> dict[str, bytes]:
        """Move data keys (and tombstones) to new subject ids (a pseudonym rotation): each live key
        is re-wrapped under associated data that names its new subject, under the same KEK
        version; the key itself is unchanged.  Returns the live keys by new subject id."""
        moved: dict[str, bytes] = {}
        for old, (wrapped, version) in sorted(self._fetch(tenant, sorted(renames)).items()):
            new = renames[old]
            if wrapped is None:  # a tombstone: kept sealed
                self.conn.execute("UPDATE subject_keys SET subject_id = ? WHERE tenant_id = ?"
                                  " AND subject_id = ?",
                                  (self.keyring.seal(tenant, new), tenant, self.keyring.seal(tenant, old)))
                continue
            kek = self.kek(tenant, version)
            moved[new] = dek = _unwrap(kek, tenant, old, wrapped)
            self.conn.execute("UPDATE subject_keys SET subject_id = ?, wrapped_dek = ? WHERE tenant_id = ?"
                              " AND subject_id = ?", (new, _wrap(kek, tenant, new, dek), tenant, old))
        return moved

    def destroyed(self, tenant: str, subjects: Iterable[str]) -> set[str]:
        stored = self._fetch(tenant, sorted(set(subjects)))
        return {s for s, (w, _v) in stored.items() if w is None}

    def tombstone(self, tenant: str, subject_id: str) -> None:
        """Mark a subject that never had a key as erased, so none is ever created for it."""
        self.conn.execute(
            "INSERT INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version, destroyed_at)"
            " VALUES (?, ?, NULL, ?, ?) ON CONFLICT DO NOTHING",
            (tenant, self.keyring.seal(tenant, subject_id), KEK_VERSION, _now()))

    def destroy(self, tenant: str, subject_id: str) -> bool:
        """Crypto-shred: drop the wrapped key, keep a tombstone row under the sealed pseudonym."""
        cur = self.conn.execute(
            "UPDATE subject_keys SET wrapped_dek = NULL, subject_id = ?, destroyed_at = ?"
            " WHERE tenant_id = ? AND subject_id = ? AND wrapped_dek IS NOT NULL",
            (self.keyring.seal(tenant, subject_id), _now(), tenant, subject_id))
        return cur.rowcount > 0


def encrypt_value(aead: AESGCM, plaintext: str, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + aead.encrypt(nonce, plaintext.encode("utf-8"), ad)


def decrypt_value(aead: AESGCM, blob: bytes, ad: bytes) -> str:
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad).decode("utf-8")
    except InvalidTag:
        raise KeyMaterialError("a PII value does not decrypt (wrong key, subject or column)") from None


# -- KEK rotation (docs/adr/0009-backups-and-erasure.md) --------------------------------------------


def _tenants_with_keys(settings: Settings) -> list[str]:
    from pseudozone import state

    with state.connect(settings) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT tenant_id FROM subject_keys ORDER BY 1")]


def rotate_keks(settings: Settings, keyring: KeyRing | None = None, *, tenants: Iterable[str] | None = None,
                rows_per_commit: int = 1000,
                after_commit: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Rotate the KEK of ``tenants`` (default: every tenant with data keys): a new random seed,
    every live data key re-wrapped under the new version, then every older seed destroyed.

    Crash-safe: each commit re-wraps up to ``rows_per_commit`` keys (a key is always
    wrapped under a version whose seed exists: old seeds go only after no live key needs
    them), and a rotation left unfinished is completed by the next call, not restarted.
    ``after_commit(tenant, rewrapped so far)`` runs after each commit (tests simulate a
    crash there). Returns counts per tenant; never key material.
    """
    from pseudozone import state

    ring = keyring if keyring is not None else KeyRing.load(settings)
    known = _tenants_with_keys(settings)
    chosen = known if tenants is None else sorted(set(tenants) & set(known))
    done: dict[str, Any] = {}
    for tenant in chosen:
        with state.connect(settings) as conn:
            vault = Vault(ring, conn)
            seeds = vault.seeds
            versions = seeds.versions(tenant)
            pending = conn.execute("SELECT max(version) FROM kek_rotations WHERE tenant_id = ? AND"
                                   " finished_at IS NULL", (tenant,)).fetchone()[0]
            resumed = pending is not None and int(pending) in versions
            if resumed:  # a rotation a crash left unfinished: complete it towards its seed
                target = int(pending)
            else:
                conn.execute("DELETE FROM kek_rotations WHERE tenant_id = ? AND finished_at IS NULL",
                             (tenant,))
                top = conn.execute("SELECT max(kek_version) FROM subject_keys WHERE tenant_id = ?",
                                   (tenant,)).fetchone()[0]
                target = max(int(top or LEGACY_KEK_VERSION), *versions, LEGACY_KEK_VERSION) + 1
                conn.execute("INSERT INTO kek_rotations (tenant_id, version) VALUES (?, ?)", (tenant, target))
                seeds.create(tenant, target)  # before the commit: a recorded rotation has its seed
        rewrapped = legacy = 0
        while True:
            with state.connect(settings) as conn:
                vault = Vault(ring, conn)
                rows = conn.execute(
                    "SELECT subject_id, wrapped_dek, kek_version FROM subject_keys WHERE tenant_id = ?"
                    " AND wrapped_dek IS NOT NULL AND kek_version <> ? LIMIT ?",
                    (tenant, target, rows_per_commit)).fetchall()
                if not rows:
                    # no live key needs an older KEK: destroy the older seeds while holding the write
                    # lock, so that a key inserted under one of them sees it gone (Vault.data_keys)
                    destroyed = sorted(v for v in vault.seeds.versions(tenant) if v != target)
                    if destroyed:
                        # the re-wraps must be on disk before a seed goes: a power loss must not
                        # roll them back to keys only the destroyed seed unwraps
                        _fsync_state(settings)
                    for version in destroyed:
                        vault.seeds.destroy(tenant, version)
                    conn.execute("UPDATE kek_rotations SET finished_at = ?, rewrapped = rewrapped + ?"
                                 " WHERE tenant_id = ? AND version = ?", (_now(), rewrapped, tenant, target))
                    break
                new_kek = vault.kek(tenant, target)
                conn.executemany(
                    "UPDATE subject_keys SET wrapped_dek = ?, kek_version = ? WHERE tenant_id = ?"
                    " AND subject_id = ? AND wrapped_dek = ?",
                    [(_wrap(new_kek, tenant, s, _unwrap(vault.kek(tenant, v), tenant, s, w)), target,
                      tenant, s, w) for s, w, v in rows])
                legacy += sum(1 for _s, _w, v in rows if v == LEGACY_KEK_VERSION)
                rewrapped += len(rows)
            if after_commit is not None:
                after_commit(tenant, rewrapped)
        done[tenant] = {"version": target, "rewrapped": rewrapped, "from_legacy": legacy,
                        "destroyed_versions": destroyed, "resumed": resumed}
        log.info("tenant %s: KEK rotated to version %d, %d data key(s) re-wrapped, seed(s) of version(s) "
                 "%s destroyed", tenant, target, rewrapped, destroyed or "none")
    return {"tenants": done, "rotated": len(done)}


def tenants_erased_since_rotation(settings: Settings) -> list[str]:
    """Tenants with a data key destroyed (or a tombstone made) after their last finished KEK rotation
    started (a key re-wrapped before its erasure may be in a backup under the new version), and
    tenants with a rotation a crash left unfinished."""
    from pseudozone import state

    with state.connect(settings) as conn:
        rows = conn.execute(
            "SELECT DISTINCT k.tenant_id FROM subject_keys k WHERE k.destroyed_at IS NOT NULL AND"
            " k.destroyed_at > coalesce((SELECT max(r.started_at) FROM kek_rotations r"
            " WHERE r.tenant_id = k.tenant_id AND r.finished_at IS NOT NULL), '')"
            " UNION SELECT tenant_id FROM kek_rotations WHERE finished_at IS NULL ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _fsync_state(settings: Settings) -> None:
    """Make every committed transaction of a SQLite state database durable (its WAL and file on
    disk; PostgreSQL's commit is durable already)."""
    for path in (settings.state_db.with_name(settings.state_db.name + "-wal"), settings.state_db):
        if path.exists():
            _fsync_path(path)


def rotate_after_erasures(settings: Settings, keyring: KeyRing | None = None) -> dict[str, Any]:
    """The nightly step: rotate the KEK of every tenant that had an erasure since its last rotation
    (also completes a rotation a crash left unfinished in those tenants)."""
    tenants = tenants_erased_since_rotation(settings)
    if not tenants:
        return {"tenants": {}, "rotated": 0}
    return rotate_keks(settings, keyring, tenants=tenants)


# -- the root secret and master-key rotation (docs/adr/0002-key-hierarchy.md, "Root secret") -------

ORIGIN_ADOPTED = "adopted"  # root secret: a root's first master key's bytes (roots from before it)
ORIGIN_RANDOM = "random"  # root secret: random, made by `keys init`


def _root_secret_ad(master_version: int) -> bytes:
    return f"pseudozone/root-secret|master-v{master_version}".encode()


def _wrap_root_secret(master: bytes, master_version: int, secret: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master).encrypt(nonce, secret, _root_secret_ad(master_version))


def _unwrap_root_secret(master: bytes, master_version: int, wrapped: bytes, origin: str) -> bytes:
    try:
        secret = AESGCM(master).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                        _root_secret_ad(master_version))
    except InvalidTag:
        raise KeyMaterialError(
            f"the root secret does not unwrap with the master key from {origin} (master key version "
            f"{master_version}): the state database's root_secret row was changed or damaged; nothing "
            f"was done") from None
    if len(secret) != KEY_BYTES:
        raise KeyMaterialError("the state database's root secret is damaged")
    return secret


def _read_root_secret(settings: Settings) -> tuple[int, bytes] | None:
    """(master key version, wrapped root secret); None when the root has none stored yet."""
    row = _read_state(settings, lambda c: c.execute(
        "SELECT master_version, wrapped FROM root_secret WHERE id = 1").fetchone())
    return None if row is None else (int(row[0]), bytes(row[1]))


def _refuse_unless_current(recorded: dict[int, str], check: str, current: int, origin: str) -> None:
    """Raise unless ``check`` is the recorded check value of master key version ``current``."""
    if recorded.get(current) == check:
        return
    retired = sorted(v for v, c in recorded.items() if c == check)
    if retired:
        raise KeyMaterialError(
            f"the master key from {origin} is not this data root's key any more: it is the root's retired"
            f" master key version {retired[-1]}, replaced by version {current} (pseudozone keys"
            f" rotate-master); nothing was done. Configure the current master key (or, after a killed"
            f" rotation, run 'pseudozone keys rotate-master' again with the new key to finish it)")
    raise KeyMaterialError(
        f"the master key from {origin} is not this data root's key (its key check value differs from the"
        f" one recorded for the root's current master key, version {current}); nothing was done. Use the"
        f" key this root was created with, or the one it was last rotated to")


def _open_root_secret(settings: Settings, master: bytes, origin: str) -> bytes:
    """The root secret, unwrapped once ``master`` is proved to be the root's current master key.

    A root without a stored root secret (one from before it, or one first used right now
    without ``keys init``) is proved as before (``verify_master_key``) and then adopts the
    master key's own bytes as its root secret, stored wrapped: every pseudonym, KEK and
    sealed value it holds stays valid.
    """
    stored = _read_root_secret(settings)  # before the checks: a rotation in between is then benign
    if stored is None:
        recorded = _recorded_checks(settings)
        if len(recorded) > 1:
            # rotated once, so its root secret is not its master key: adopting one would be wrong
            raise KeyMaterialError(
                f"the state database records {len(recorded)} master key versions but holds no root"
                f" secret (its root_secret row is lost); restore the state database from a backup;"
                f" nothing was done")
        ring = KeyRing(master)
        verify_master_key(settings, ring, origin)
        if recorded and _unwraps_a_stored_key(settings, ring) is False:
            # a root made by `keys init` (random root secret) whose row is lost looks like an old root
            raise KeyMaterialError(
                f"the state database holds no root secret and the master key from {origin} does not"
                f" unwrap its data keys by itself: the root's root secret row is lost; restore the"
                f" state database from a backup; nothing was done")
        return _store_root_secret(settings, master, master, origin, kind=ORIGIN_ADOPTED)
    version, wrapped = stored
    _refuse_unless_current(_recorded_checks(settings), key_check_value(master), version, origin)
    return _unwrap_root_secret(master, version, wrapped, origin)


def _store_root_secret(settings: Settings, master: bytes, secret: bytes, origin: str, *, kind: str) -> bytes:
    """Store ``secret`` wrapped under ``master`` (with the key's check value, if none is recorded)
    in one transaction, unless the root has a root secret already; returns the one that stands."""
    from pseudozone import state

    check = key_check_value(master)
    with state.connect(settings) as conn:
        recorded = dict(conn.execute("SELECT version, check_value FROM key_checks").fetchall())
        if not recorded:
            conn.execute("INSERT INTO key_checks (version, check_value) VALUES (?, ?)",
                         (MASTER_KEY_VERSION, check))
            recorded = {MASTER_KEY_VERSION: check}
        version = max(recorded)
        conn.execute("INSERT INTO root_secret (id, master_version, wrapped, origin)"
                     " VALUES (1, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (version, _wrap_root_secret(master, version, secret), kind))
        row = conn.execute("SELECT master_version, wrapped FROM root_secret WHERE id = 1").fetchone()
    # another process may have recorded another key, or rotated the master key, in between
    _refuse_unless_current(recorded, check, int(row[0]), origin)
    return _unwrap_root_secret(master, int(row[0]), bytes(row[1]), origin)


def load_new_master_key(new_key_file: str | os.PathLike[str] | None = None) -> tuple[bytes, str]:
    """The new master key of a rotation and where it came from: ``new_key_file`` (``--new-key-file``),
    else ``$PSEUDOZONE_NEW_MASTER_KEY``, else the Airflow connection named by
    ``$PSEUDOZONE_NEW_MASTER_KEY_CONN_ID``, else the file named by ``$PSEUDOZONE_NEW_MASTER_KEY_FILE``.
    Never from the command line (argv is visible to every user of the machine)."""
    if new_key_file is not None:
        return _key_from_given_file(new_key_file, "--new-key-file")
    env = os.environ.get(NEW_MASTER_KEY_ENV)
    if env:
        origin = f"${NEW_MASTER_KEY_ENV}"
        return _decode_key(env, origin), origin
    conn_id = os.environ.get(NEW_MASTER_KEY_CONN_ENV)
    if conn_id:
        return _key_from_airflow(conn_id, NEW_MASTER_KEY_CONN_ENV), f"Airflow connection {conn_id!r}"
    given = os.environ.get(NEW_MASTER_KEY_FILE_ENV)
    if given:
        return _key_from_given_file(given, f"${NEW_MASTER_KEY_FILE_ENV}")
    raise KeyMaterialError(
        f"no new master key: give --new-key-file PATH (a mode-0600 file holding the base64 of 32 random"
        f" bytes), or set ${NEW_MASTER_KEY_ENV}, ${NEW_MASTER_KEY_CONN_ENV} or ${NEW_MASTER_KEY_FILE_ENV};"
        f" a key is never taken from the command line")
