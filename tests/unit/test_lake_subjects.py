"""The one rule for which subjects may appear where (docs/adr/0007-lake-layer.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.lake import subjects
from pseudozone.lake.subjects import Hold, Holds, SubjectSets, as_array, keys, legal_holds
from pseudozone.rights import requests, store

ERASED, HELD, RESTRICTED, BOTH, OTHER = "v1:erased", "v1:held", "v1:restricted", "v1:held-restricted", "v1:x"


def _sets(*holds: Hold) -> SubjectSets:
    return SubjectSets("acme", erased=frozenset({ERASED, HELD, BOTH}),
                       restricted=frozenset({RESTRICTED, BOTH}), holds=Holds(holds))


def test_an_erased_subject_held_on_a_dataset_is_allowed_there_and_nowhere_else() -> None:
    sets = _sets(Hold(1, "server_logs", HELD, "audit"), Hold(2, "server_logs", BOTH, "audit"))
    assert sets.held("server_logs") == {HELD, BOTH}
    assert sets.forbidden("server_logs") == {ERASED, RESTRICTED, BOTH}  # BOTH: restricted
    assert sets.forbidden("events") == {ERASED, HELD, RESTRICTED, BOTH}
    assert sets.forbidden_pii("server_logs") == {ERASED}
    assert sets.forbidden_pii("profiles") == {ERASED, HELD, BOTH}


def test_restricted_subjects_are_forbidden_in_events_and_the_only_ones_in_restricted() -> None:
    sets = _sets(Hold(1, None, BOTH, "litigation"))
    assert RESTRICTED in sets.forbidden("events")
    assert sets.allowed_restricted("events") == {RESTRICTED, BOTH}  # BOTH's rows are held
    unheld = _sets()
    # an erased subject that no hold keeps is not allowed back in through the restricted zone
    assert unheld.allowed_restricted("events") == {RESTRICTED}
    assert OTHER not in unheld.forbidden("events") | unheld.allowed_restricted("events")


def test_a_tenant_or_dataset_wide_hold_keeps_every_erased_subject_of_what_it_covers() -> None:
    sets = _sets(Hold(1, "events", None, "tax"))
    assert sets.held("events") == {ERASED, HELD, BOTH}
    assert sets.forbidden("events") == {RESTRICTED, BOTH}
    assert sets.held("server_logs") == frozenset()
    assert _sets(Hold(1, None, None, "all")).forbidden("server_logs") == {RESTRICTED, BOTH}


def test_a_new_batch_has_no_retained_rows_so_every_erased_subject_is_forbidden() -> None:
    sets = _sets(Hold(1, None, None, "all"))
    assert sets.forbidden("events", new_batch=True) == {ERASED, HELD, RESTRICTED, BOTH}
    assert sets.forbidden_pii("profiles", new_batch=True) == {ERASED, HELD, BOTH}
    assert sets.allowed_restricted("events", new_batch=True) == {RESTRICTED}


def test_a_rights_run_applies_its_erasures_and_restrictions() -> None:
    sets = _sets(Hold(1, "events", "v1:new-held", "audit")).during_run(
        erase=["v1:new", "v1:new-held"], restrict=["v1:r2"], unrestrict=[RESTRICTED])
    assert sets.forbidden("events") == {ERASED, HELD, BOTH, "v1:new", "v1:r2"}
    assert sets.allowed_restricted("events") == {"v1:r2"}  # BOTH is erased, not held here
    assert sets.forbidden_pii("events") == {ERASED, HELD, BOTH, "v1:new"}


def test_holds_answer_per_subject_and_dataset() -> None:
    holds = Holds((Hold(1, "server_logs", "v1:a", "r"), Hold(2, None, None, "r"),
                   Hold(3, "events", "v1:b", "r")))
    assert [h.hold_id for h in holds.of_subject("v1:a")] == [1, 2]
    assert holds.keeps("events", "v1:zzz") and holds.keeps_all("events")
    only = Holds((Hold(1, "server_logs", "v1:a", "r"),))
    assert only.keeps("server_logs", "v1:a") and not only.keeps("events", "v1:a")
    assert not only.keeps("server_logs", "v1:b") and not only.keeps_all("server_logs")
    assert only.subjects("server_logs") == {"v1:a"} and only.subjects("events") == frozenset()
    assert only.kept("server_logs", ["v1:a", "v1:b"]) == {"v1:a"}


def test_the_sets_load_from_the_key_vault_and_the_request_ledger(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path)
    with state.connect(settings) as conn:
        conn.executemany("INSERT INTO subject_keys (tenant_id, subject_id, wrapped_dek, kek_version)"
                         " VALUES (?, ?, ?, 1)",
                         [("acme", ERASED, None), ("acme", HELD, None), ("acme", OTHER, b"k"),
                          ("globex", "v1:g", None)])
    with store.transaction(settings) as conn:
        conn.execute(insert(store.restrictions).values(tenant_id="acme", subject_id=RESTRICTED,
                                                       request_id="r1", since=store.utcnow()))
        conn.execute(insert(store.legal_holds).values(tenant_id="acme", dataset="server_logs",
                                                      subject_id=HELD, reason="audit",
                                                      created_at=store.utcnow()))
    requests.add_legal_hold(settings, tenant_id="globex", reason="all of it", keyring=KeyRing(bytes(32)))
    sets = SubjectSets.load(settings, "acme")
    assert sets.erased == {ERASED, HELD} and sets.restricted == {RESTRICTED}
    assert keys(settings, "acme") == ({OTHER}, {ERASED, HELD})
    assert sets.forbidden("server_logs") == {ERASED, RESTRICTED}
    assert sets.forbidden("events") == {ERASED, HELD, RESTRICTED}
    assert legal_holds(settings, "globex").keeps_all("events")
    assert as_array(sets.forbidden("events")).to_pylist() == sorted({ERASED, HELD, RESTRICTED})


def test_a_hold_needs_a_reason_and_a_known_code(settings: Settings, master_key_env: None) -> None:
    from pseudozone.errors import PseudozoneError

    with pytest.raises(PseudozoneError, match="needs a reason"):
        requests.add_legal_hold(settings, tenant_id="acme", reason="  ")
    with pytest.raises(PseudozoneError, match="reason code must be one of") as err:
        requests.add_legal_hold(settings, tenant_id="acme", reason="x", reason_code="Zelda's case")
    assert "Zelda" not in str(err.value)


def test_a_store_from_before_reason_codes_gets_the_column(settings: Settings, master_key_env: None) -> None:
    import sqlite3

    from pseudozone.rights import store

    settings.state.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(settings.state_db)
    conn.execute("CREATE TABLE legal_holds (hold_id INTEGER PRIMARY KEY, tenant_id VARCHAR(64) NOT NULL,"
                 " dataset VARCHAR(64), subject_id VARCHAR(80), reason TEXT NOT NULL,"
                 " created_at DATETIME NOT NULL, released_at DATETIME)")
    conn.execute("INSERT INTO legal_holds (tenant_id, reason, created_at) VALUES"
                 " ('acme', 'old plain reason', '2026-01-01 00:00:00')")
    conn.commit()
    conn.close()
    store._schema.cache_clear()
    holds = subjects.legal_holds(settings, "acme")
    assert [h.to_dict() for h in holds.holds] == [{"hold_id": 1, "dataset": None, "reason_code": "other"}]
    assert requests.hold_reason(settings, 1) == "old plain reason"


def test_audit_show_withholds_a_legacy_hold_reason(settings: Settings) -> None:
    from pseudozone.rights import audit

    with store.transaction(settings) as conn:  # as add_legal_hold wrote it before reasons were encrypted
        audit.append(conn, "hold.added", tenant_id="acme", details={"hold_id": 1, "reason": "Zelda's case"})
    [entry] = audit.entries(settings, action="hold.*")
    assert entry["details"] == {"hold_id": 1, "reason": "[withheld]"}
    assert audit.verify(settings).ok
