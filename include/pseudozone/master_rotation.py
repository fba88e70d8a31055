"""Master-key rotation (docs/adr/0002-key-hierarchy.md, "Root secret and master-key rotation").

The master key wraps the data root's root secret (``pseudozone.keys``) and nothing else, so a
new master key re-wraps one row of the state database, in one transaction with the new key's
check value, and changes no pseudonym, KEK, sealed value or file.  Then the rotation is
audited (``keys.master_rotated``) and the key directory's generated key file, when it is where
the key comes from, replaced.  Apart from ``pseudozone.keys`` because the audit log
(``pseudozone.rights.audit``) imports the key ring.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import (
    KeyRing,
    _external_key_configured,
    _fsync_path,
    _fsync_state,
    _master_key,
    _open_root_secret,
    _private_dir,
    _read_root_secret,
    _recorded_checks,
    _unwrap_root_secret,
    _wrap_root_secret,
    key_check_value,
    require_configured_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

MASTER_ROTATED_ACTION = "keys.master_rotated"


def rotate_master_key(settings: Settings, new_master: bytes, new_origin: str = "the new key", *,
                      before_commit: Callable[[], None] | None = None) -> dict[str, Any]:
    """Re-wrap the root secret under ``new_master`` (``pseudozone keys rotate-master``).

    The old key is the configured master key (``load_master_key``'s places).  One state
    transaction re-wraps the root secret under the new key (associated data naming the new
    master key version) and records the new key's check value; from its commit on the root
    opens with the new key only, and the old one is refused as retired.  Nothing else
    changes: every key derives from the root secret.  Then the rotation is audited
    (``keys.master_rotated``, versions and counts only) and, when the configured key is the
    key directory's generated ``master.key``, that file is replaced by the new key (written,
    synced, renamed over it).

    Crash-safe and idempotent: a kill before the commit leaves the old key the root's, one
    after it the new one; a rerun with the new key (configured or given as the new one)
    finishes what is left (the audit entry, the key file) and changes nothing else.
    ``before_commit`` runs inside the transaction (tests simulate a crash there).  Returns
    versions and counts only, never key material.
    """
    from pseudozone import state

    require_configured_key(settings)  # never makes a key
    if not state.exists(settings):
        raise KeyMaterialError(f"data root {settings.root} has no state database: no master key to rotate"
                               " ('pseudozone keys init' makes one)")
    old, origin = _master_key(settings)
    old_check, new_check = key_check_value(old), key_check_value(new_master)
    stored = _read_root_secret(settings)
    recorded = _recorded_checks(settings)
    rotated = stored is not None and recorded.get(stored[0]) == new_check
    if rotated:  # done already: a rerun after a kill, or the configured key was switched meanwhile
        assert stored is not None
        version = stored[0]
        secret = _unwrap_root_secret(new_master, version, stored[1], new_origin)
        previous = max((v for v in recorded if v < version), default=None)
        if previous is None:
            raise KeyMaterialError(f"the new master key ({new_origin}) is this data root's master key"
                                   f" already, and it was never rotated: nothing to rotate to; give a"
                                   f" newly generated key")
    else:
        if hmac.compare_digest(old, new_master):
            raise KeyMaterialError(f"the new master key ({new_origin}) is the configured master key"
                                   f" ({origin}): nothing to rotate to")
        secret = _open_root_secret(settings, old, origin)  # refuses an old key that is not the root's
        with state.connect(settings) as conn:
            row = conn.execute("SELECT master_version FROM root_secret WHERE id = 1").fetchone()
            checks = dict(conn.execute("SELECT version, check_value FROM key_checks").fetchall())
            if row is None or checks.get(int(row[0])) != old_check:
                raise KeyMaterialError("the master key of this data root was rotated by another process"
                                       " meanwhile; nothing was done")
            if new_check in checks.values():
                raise KeyMaterialError(
                    f"the new master key ({new_origin}) is a retired master key of this data root; a"
                    f" retired key is never made current again: give a newly generated key")
            previous, version = int(row[0]), max(checks) + 1
            conn.execute("UPDATE root_secret SET master_version = ?, wrapped = ?, rotated_at = ?"
                         " WHERE id = 1 AND master_version = ?",
                         (version, _wrap_root_secret(new_master, version, secret), state.now(), previous))
            conn.execute("INSERT INTO key_checks (version, check_value) VALUES (?, ?)", (version, new_check))
            if before_commit is not None:
                before_commit()
        # durable before the old key file is replaced, or the operator discards the old key
        _fsync_state(settings)
        log.info("master key rotated: the root secret is wrapped under master key version %d (was %d)",
                 version, previous)
    audited = _audit_master_rotation(settings, KeyRing(secret, master=new_master), previous, version)
    # the key directory's generated key file holds the old key (proved current above, or a retired
    # key of this root on a rerun): it is the only place the configured key comes from, so it gets
    # the new one; a key from the environment is the operator's to switch
    replace_file = (not _external_key_configured() and old_check != new_check
                    and (not rotated or old_check in recorded.values()))
    if replace_file:
        _install_master_key_file(settings, new_master)
    return {"master_version": version, "from_master_version": previous, "rewrapped_now": not rotated,
            "already_current": rotated, "audited": audited,
            "key_file_replaced": replace_file}


def _audit_master_rotation(settings: Settings, ring: KeyRing, previous: int, version: int) -> bool:
    """Append ``keys.master_rotated`` for the rotation to ``version`` unless the log has it already."""
    from sqlalchemy import select

    from pseudozone.rights import audit, store

    with store.transaction(settings) as conn:
        log_table = store.audit_log
        for (details,) in conn.execute(select(log_table.c.details).where(
                log_table.c.action == MASTER_ROTATED_ACTION)).all():
            if json.loads(details).get("to_master_version") == version:
                return False
        audit.append(conn, MASTER_ROTATED_ACTION, details={
            "from_master_version": previous, "to_master_version": version, "root_secrets_rewrapped": 1,
            "data_rewritten": 0}, keyring=ring)
    return True


def _install_master_key_file(settings: Settings, master: bytes) -> Path:
    """Replace the key directory's ``master.key`` by ``master``: written and synced aside, then renamed."""
    path = settings.master_key_file
    _private_dir(path.parent)
    tmp = path.with_name(f".tmp-master-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(master).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent)
    if settings.legacy_master_key_file.exists():
        log.warning("state/%s in the data root still holds the retired master key: delete it once the new"
                    " key (now in %s) is backed up", settings.legacy_master_key_file.name, path)
    return path
