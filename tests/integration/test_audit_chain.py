"""The keyed audit chain and its anchored head (ADR 0004): truncation, recomputation without the
audit key, legacy (unkeyed) chains, the checkpoint file and the nightly report's head."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import stat
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from pseudozone.cli import main as cli
from pseudozone.compliance import report
from pseudozone.config import Settings
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import KeyRing
from pseudozone.rights import audit, store
from tests.conftest import TEST_MASTER_KEY

AUDIT_KEY = KeyRing(TEST_MASTER_KEY).audit_key()
WRONG_KEY = KeyRing(bytes(range(1, 33))).audit_key()

# the audit_log table as releases before the keyed chain created it (no ``scheme`` column)
OLD_AUDIT_TABLE = """CREATE TABLE audit_log (
    seq INTEGER NOT NULL PRIMARY KEY, at DATETIME NOT NULL, actor VARCHAR(64) NOT NULL,
    action VARCHAR(64) NOT NULL, request_id VARCHAR(36), tenant_id VARCHAR(64), subject_id VARCHAR(80),
    details TEXT NOT NULL, prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL)"""


@pytest.fixture
def root(settings: Settings, master_key_env: None) -> Settings:
    return settings


def _append(settings: Settings, n: int, action: str = "test.entry") -> None:
    for i in range(n):
        with store.transaction(settings) as conn:
            audit.append(conn, action, tenant_id="acme", details={"i": i})


def _db(settings: Settings) -> sqlite3.Connection:
    return sqlite3.connect(settings.state_db)


def _hash(prev: str, row: dict[str, Any], key: bytes | None) -> str:
    """The chain's hash spelled out here, apart from the module: SHA-256 (no key) or HMAC-SHA256."""
    at = datetime.fromisoformat(row["at"]).replace(tzinfo=UTC).isoformat(timespec="microseconds")
    body = {"seq": row["seq"], "at": at, "actor": row["actor"], "action": row["action"],
            "request_id": row["request_id"], "tenant_id": row["tenant_id"], "subject_id": row["subject_id"],
            "details": row["details"]}
    message = (prev + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()
    return hashlib.sha256(message).hexdigest() if key is None else hmac.new(key, message,
                                                                            hashlib.sha256).hexdigest()


def _rows(db: sqlite3.Connection) -> list[dict[str, Any]]:
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("SELECT * FROM audit_log ORDER BY seq")]


def _remove_and_recompute(settings: Settings, seq: int, key: bytes | None, scheme: str | None) -> None:
    """The attacker who writes the database: drop entry ``seq``, renumber the later ones and
    recompute every later link and hash (with ``key``, or plain SHA-256 when None)."""
    db = _db(settings)
    rows = [r for r in _rows(db) if r["seq"] != seq]
    db.execute("DELETE FROM audit_log")
    prev = audit.GENESIS
    for n, row in enumerate(rows, start=1):
        if n >= seq:
            row.update(seq=n, prev_hash=prev, scheme=scheme)
            row["hash"] = _hash(prev, row, key)
        marks = ",".join("?" * len(row))
        db.execute(f"INSERT INTO audit_log ({','.join(row)}) VALUES ({marks})", list(row.values()))
        prev = row["hash"]
    db.commit()
    db.close()


def test_new_entries_are_hmac_under_the_audit_key_never_stored(root: Settings) -> None:
    _append(root, 3)
    db = _db(root)
    rows = _rows(db)
    db.close()
    assert [r["scheme"] for r in rows] == [audit.KEYED] * 3
    prev = audit.GENESIS
    for row in rows:
        assert row["prev_hash"] == prev and row["hash"] == _hash(prev, row, AUDIT_KEY)
        assert row["hash"] != _hash(prev, row, None)
        prev = row["hash"]
    dumped = b"".join(p.read_bytes() for p in root.state.iterdir() if p.is_file())
    assert AUDIT_KEY not in dumped and AUDIT_KEY.hex().encode() not in dumped
    assert audit.verify(root).ok


def test_truncating_the_last_entries_is_detected_against_the_checkpoint(root: Settings) -> None:
    _append(root, 5)
    anchored = audit.verify(root, update_checkpoint=True)
    assert anchored.ok and anchored.checkpoint_updated and anchored.entries == 5
    db = _db(root)
    db.execute("DELETE FROM audit_log WHERE seq > 3")
    db.commit()
    db.close()
    result = audit.verify(root)
    assert not result.ok and result.first_bad_seq == 4 and result.checkpoint_entries == 5
    assert "truncated" in (result.problem or "")
    # a failed verification never moves the checkpoint back
    assert not audit.verify(root, update_checkpoint=True).ok
    assert json.loads(audit.checkpoint_path(root).read_text())["entries"] == 5


def test_truncating_then_appending_past_the_checkpoint_is_detected(root: Settings) -> None:
    _append(root, 4)
    assert audit.verify(root, update_checkpoint=True).ok
    db = _db(root)
    db.execute("DELETE FROM audit_log WHERE seq > 2")
    db.commit()
    db.close()
    _append(root, 3, "test.refill")  # genuine, keyed entries after the cut
    result = audit.verify(root)
    assert not result.ok and result.first_bad_seq == 4
    assert "checkpoint's hash" in (result.problem or "")


@pytest.mark.parametrize(("key", "scheme"), [
    (None, audit.KEYED),  # the old attacker: plain SHA-256, scheme left as it was
    (None, None),         # plain SHA-256 labelled as legacy entries
    (WRONG_KEY, audit.KEYED),  # HMAC under a key that is not the root's
], ids=["sha256", "sha256-as-legacy", "hmac-wrong-key"])
def test_removing_an_entry_and_recomputing_later_hashes_is_detected(
        root: Settings, key: bytes | None, scheme: str | None) -> None:
    _append(root, 6)
    assert audit.verify(root).ok
    _remove_and_recompute(root, 3, key, scheme)
    db = _db(root)
    assert len(_rows(db)) == 5  # the forged chain is linked and numbered without a gap
    db.close()
    result = audit.verify(root)  # no checkpoint: the key alone exposes it
    assert not result.ok and result.first_bad_seq == 3


def test_a_whole_chain_recomputed_without_the_key_is_caught_by_the_checkpoint(root: Settings) -> None:
    _append(root, 4)
    assert audit.verify(root, update_checkpoint=True).ok
    _remove_and_recompute(root, 1, None, None)  # every entry rewritten as an unkeyed one
    assert not audit.verify(root).ok
    _append(root, 1)  # back to four entries
    result = audit.verify(root)
    assert not result.ok and result.first_bad_seq == 4


def test_a_legacy_unkeyed_chain_still_verifies_and_new_entries_are_keyed_after_it(
        settings: Settings, master_key_env: None) -> None:
    db = _db(settings)  # a ledger made by an earlier release: no scheme column, SHA-256 entries
    db.execute(OLD_AUDIT_TABLE)
    prev = audit.GENESIS
    for seq in (1, 2, 3):
        row = {"seq": seq, "at": f"2025-01-0{seq} 10:00:00.000000", "actor": "pseudozone",
               "action": "tenant.registered", "request_id": None, "tenant_id": f"t{seq}",
               "subject_id": None, "details": "{}"}
        row.update(prev_hash=prev, hash=_hash(prev, row, None))
        db.execute(f"INSERT INTO audit_log ({','.join(row)}) VALUES ({','.join('?' * len(row))})",
                   list(row.values()))
        prev = row["hash"]
    db.commit()
    db.close()

    legacy = audit.verify(settings, update_checkpoint=True)  # adds the column, anchors the legacy head
    assert legacy.ok and legacy.entries == 3 and legacy.head_hash == prev
    _append(settings, 2)
    db = _db(settings)
    assert [r["scheme"] for r in _rows(db)] == [None, None, None, audit.KEYED, audit.KEYED]
    db.close()
    assert audit.verify(settings, update_checkpoint=True).ok

    # a tampered legacy entry is still found, and so is an unkeyed entry after a keyed one
    db = _db(settings)
    db.execute("UPDATE audit_log SET tenant_id = 'mallory' WHERE seq = 2")
    db.commit()
    assert audit.verify(settings).first_bad_seq == 2
    db.execute("UPDATE audit_log SET tenant_id = 't2' WHERE seq = 2")
    db.execute("UPDATE audit_log SET scheme = NULL WHERE seq = 5")
    db.commit()
    db.close()
    result = audit.verify(settings)
    assert not result.ok and result.first_bad_seq == 5 and "not keyed" in (result.problem or "")


def test_a_forged_or_damaged_checkpoint_fails_verification(root: Settings) -> None:
    _append(root, 5)
    assert audit.verify(root, update_checkpoint=True).ok
    path = audit.checkpoint_path(root)
    data = json.loads(path.read_text())
    db = _db(root)
    db.execute("DELETE FROM audit_log WHERE seq > 2")
    db.commit()
    data.update(entries=2, hash=_rows(db)[-1]["hash"])  # the truncated head, but no audit key for the mac
    db.close()
    path.write_text(json.dumps(data))
    result = audit.verify(root)
    assert not result.ok and "checkpoint file" in (result.problem or "")
    path.write_text("{not json")
    assert not audit.verify(root).ok


def test_an_entry_under_another_master_key_is_refused_before_it_is_written(
        root: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _append(root, 1)  # records the root's key check
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(bytes(range(1, 33))).decode())
    with pytest.raises(KeyMaterialError):
        _append(root, 1)
    with store.engine_for(root).connect() as conn:
        assert len(conn.execute(select(store.audit_log)).all()) == 1


def test_nightly_audit_step_writes_a_private_checkpoint_and_reports_the_head(root: Settings) -> None:
    _append(root, 4)
    report.run_step(root, "night-1", "audit")
    report.write_report(root, "night-1")
    path = audit.checkpoint_path(root)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    db = _db(root)
    head = _rows(db)[-1]["hash"]
    db.close()
    assert json.loads(path.read_text())["entries"] == 4
    latest = report.latest(root)
    assert latest is not None
    assert latest["audit"]["ok"] and latest["audit"]["head"] == {"entries": 4, "hash": head}
    assert latest["audit"]["checkpoint"] is None  # the first run had none to check against
    page = (report.run_dir(root, "night-1") / "report.html").read_text()
    assert head in page and "Head: entry <strong>4</strong>" in page

    db = _db(root)
    db.execute("DELETE FROM audit_log WHERE seq = 4")
    db.commit()
    db.close()
    report.run_step(root, "night-2", "audit")
    report.write_report(root, "night-2")
    latest = report.latest(root)
    assert latest is not None and latest["status"] == "fail"
    assert not latest["audit"]["ok"] and latest["audit"]["checkpoint"] == {"entries": 4}
    assert any("truncated" in p for p in latest["problems"])


def test_cli_audit_verify_moves_the_checkpoint_and_prints_the_head(
        root: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    _append(root, 2)
    assert cli(["--home", str(root.root), "audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert "no checkpoint yet" in out and "head: entry 2" in out and "checkpoint updated" in out
    _append(root, 1)
    assert cli(["--home", str(root.root), "audit", "verify"]) == 0
    assert "checkpoint at entry 2 holds" in capsys.readouterr().out
    db = _db(root)
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    db.commit()
    db.close()
    assert cli(["--home", str(root.root), "audit", "verify"]) == 1
    assert "BROKEN at entry 3 of 2: the chain was truncated" in capsys.readouterr().out
