"""Pseudonym rotation (docs/adr/0015-pseudonym-rotation.md): a tenant moves from version 1 to 2.

Every pseudonym and ``[id:…]`` token of the tenant changes, every row and grouping stays, new
batches join the rotated rows, an erase after it leaves no row of either version, a killed
rotation resumes, and the tenant's writers wait while it runs.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import ingest, rotation, state
from pseudozone.compliance import report
from pseudozone.config import Settings
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.lake import compact, index, layout
from pseudozone.rights import audit, process, requests, store
from tests import planted
from tests.conftest import TEST_MASTER_KEY
from tests.integration.test_landing_retention import _scan

T = planted.TENANT
ORDER = "83920117"  # an order number in free text: a linkage token in the event zone
TS = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)


def _ring() -> KeyRing:
    return KeyRing(TEST_MASTER_KEY, pseudonym_version=1)


def _order_events(tag: str, users: list[str]) -> pa.Table:
    n = len(users)
    return pa.table({
        "tenant_id": [T] * n, "user_id": users, "anonymous_id": [f"anon-{u}" for u in users],
        "event_id": [f"evt_{tag}_{i}" for i in range(n)], "event_name": ["purchase"] * n,
        "event_ts": pa.array([TS] * n, pa.timestamp("us", tz="UTC")), "session_id": [f"s_{tag}"] * n,
        "ip": ["203.0.113.7"] * n, "user_agent": ["Mozilla/5.0"] * n,
        "page_url": [f"https://shop.example.com/order/{ORDER}?step=done"] * n,
        "properties_json": [f'{{"order": {ORDER}}}'] * n})


def _land(settings: Settings, table: pa.Table, name: str) -> None:
    path = settings.landing / "events" / f"tenant={T}" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _zone_tables(settings: Settings, tenant: str, zones_: tuple[str, ...] = layout.ZONES) -> list[pa.Table]:
    out = []
    for zone in zones_:
        for dataset, t, tdir in layout.tenant_dirs(layout.zone_root(settings, zone)):
            if t == tenant:
                for f in sorted(tdir.rglob("*.parquet")):
                    table = pq.read_table(f)
                    out.append(table.append_column("dataset", pa.repeat(dataset, table.num_rows)))
    return out


def _pseudonyms(settings: Settings, tenant: str) -> Counter[str]:
    """Version prefix of every pseudonym-column value of the tenant (subject, cookie, linkable ids)."""
    seen: Counter[str] = Counter()
    for table in _zone_tables(settings, tenant):
        for name in ("subject_id", "anonymous_pid", "event_id", "session_id", "request_id"):
            if name in table.column_names:
                seen.update(v.partition(":")[0] for v in table[name].to_pylist() if v is not None)
    return seen


def _shape(settings: Settings, tenant: str) -> Counter[tuple[str, str, int]]:
    """What analysts' groupings see, whatever the pseudonyms: per dataset and event name, the
    multiset of rows per subject."""
    per: Counter[tuple[str, str, str | None]] = Counter()
    for table in _zone_tables(settings, tenant, layout.PARTITIONED):
        names = (table["event_name"].to_pylist() if "event_name" in table.column_names
                 else [""] * table.num_rows)
        for d, e, s in zip(table["dataset"].to_pylist(), names, table["subject_id"].to_pylist(), strict=True):
            per[(d, e, s)] += 1
    return Counter((d, e, n) for (d, e, _s), n in per.items())


def _tokens_of_order(settings: Settings) -> set[str]:
    """The token each event-zone row of the order carries in its page URL."""
    found = set()
    for table in _zone_tables(settings, T, (layout.EVENTS,)):
        if "page_url" in table.column_names:
            found |= {u.split("/order/")[1].split("?")[0] for u in table["page_url"].to_pylist()
                      if u and "/order/" in u}
    return found


def _state_values(settings: Settings) -> str:
    """Every value of the state database and the request ledger, as one text."""
    parts = []
    for db in sorted(settings.state.glob("*.db")):
        conn = sqlite3.connect(db)
        try:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                parts += [repr(r) for r in conn.execute(f'SELECT * FROM "{name}"').fetchall()]
        finally:
            conn.close()
    return "\n".join(parts)


@pytest.fixture
def rotated_world(lake: Settings) -> tuple[Settings, dict[str, object]]:
    _land(lake, _order_events("before", [planted.USER, "usr_order_2"]), "orders-before")
    ingest.ingest_pending(lake, keyring=_ring())
    other_files = sorted(str(p.relative_to(lake.zones)) for p in lake.zones.rglob("*.parquet")
                         if "globex" in str(p))
    before = {"shape": _shape(lake, T), "other": _shape(lake, "globex"), "rows": _pseudonyms(lake, T),
              "tokens": _tokens_of_order(lake), "other_files": other_files}
    return lake, before


def test_rotation_steps_every_pseudonym_and_token_and_keeps_every_row(
        rotated_world: tuple[Settings, dict[str, object]]) -> None:
    lake, before = rotated_world
    v1 = _ring().subject_id(T, planted.USER)
    assert set(before["rows"]) == {"v1"}  # type: ignore[call-overload]

    result = rotation.rotate(lake, T, keyring=_ring())

    assert (result["from_version"], result["to_version"], result["resumed"]) == (1, 2, False)
    assert result["partitions"] > 0 and result["pii_rows"] > 0 and result["data_keys_moved"] > 0
    after = _pseudonyms(lake, T)
    assert set(after) == {"v2"} and sum(after.values()) == sum(before["rows"].values())  # type: ignore[attr-defined]
    assert _shape(lake, T) == before["shape"]                 # every row and grouping stays
    assert _shape(lake, "globex") == before["other"]          # another tenant is untouched
    assert sorted(str(p.relative_to(lake.zones)) for p in lake.zones.rglob("*.parquet")
                  if "globex" in str(p)) == before["other_files"]
    tokens = _tokens_of_order(lake)
    assert len(tokens) == 1 and tokens.isdisjoint(before["tokens"])  # type: ignore[arg-type]
    # the state and the index name the subject at version 2 only
    v2 = KeyRing.load(lake).subject_id(T, planted.USER)
    assert v2.startswith("v2:") and v2 == _ring().subject_id(T, planted.USER, version=2)
    assert index.lookup(lake, T, {v1}).num_rows == 0 and index.lookup(lake, T, {v2}).num_rows > 0
    assert v1 not in _state_values(lake) or _only_in_audit(lake, v1)
    # the PII zone decrypts under the new subject (re-encrypted: the associated data names it)
    with state.connect(lake) as conn:
        dek = Vault(KeyRing.load(lake), conn).data_keys(T, [v2], create=False)[v2]
    pii = [r for f in sorted((lake.pii_zone / "profiles").rglob("*.parquet"))
           for r in pq.read_table(f).to_pylist()]
    [row] = [r for r in pii if r["subject_id"] == v2]
    assert decrypt_value(AESGCM(dek), row["email"], pii_associated_data(T, v2, "email")) == planted.EMAIL
    # a batch after the rotation joins the rotated rows: same subject, same order token
    _land(lake, _order_events("after", [planted.USER]), "orders-after")
    [res] = ingest.ingest_pending(lake)
    assert res.status == "done", res.reason
    assert _tokens_of_order(lake) == tokens
    subjects = {s for t in _zone_tables(lake, T, layout.PARTITIONED) for s in t["subject_id"].to_pylist()}
    assert v2 in subjects and v1 not in subjects
    # a rotation to version 3 is a new one, here through the CLI
    from pseudozone.cli import main as cli

    shape = _shape(lake, T)
    assert cli(["--home", str(lake.root), "keys", "rotate-pseudonyms", "--tenant", T, "--json"]) == 0
    assert set(_pseudonyms(lake, T)) == {"v3"} and state.pseudonym_versions(lake) == {T: 3}
    assert _shape(lake, T) == shape


def _only_in_audit(settings: Settings, value: str) -> bool:
    """Whether ``value`` is in the audit log only (an append-only, keyed chain keeps history)."""
    from sqlalchemy import select

    with store.engine_for(settings).connect() as conn:
        others = [r for r in conn.execute(select(store.requests)).all() if value in repr(r)]
        others += [r for r in conn.execute(select(store.restrictions)).all() if value in repr(r)]
    conn2 = sqlite3.connect(settings.state_db)
    try:
        for table in ("subject_keys", "identity_links", "rectifications", "consent"):
            others += [r for r in conn2.execute(f"SELECT * FROM {table}").fetchall()
                       if value in repr(r)]
    finally:
        conn2.close()
    return not others


def test_an_erase_after_rotation_leaves_no_row_of_either_version(
        rotated_world: tuple[Settings, dict[str, object]]) -> None:
    lake, _ = rotated_world
    ring = _ring()
    v1, v2 = ring.subject_id(T, planted.USER), ring.subject_id(T, planted.USER, version=2)
    # a request filed before the rotation names the subject at version 1
    filed = requests.submit(lake, {"type": "restrict", "tenant_id": T, "user_id": planted.USER},
                            source="test", keyring=ring)
    rotation.rotate(lake, T, keyring=_ring())
    process.process_all(lake, "run-restrict", keyring=_ring())
    outcome = requests.get_status(lake, filed.request_id).outcome
    assert outcome is not None and outcome.get("result") != "no_data_found"
    restricted = {s for t in _zone_tables(lake, T, (layout.RESTRICTED,)) for s in t["subject_id"].to_pylist()}
    assert v2 in restricted

    erase = requests.submit(lake, {"type": "erase", "tenant_id": T, "user_id": planted.USER},
                            source="test", keyring=_ring())
    process.process_all(lake, "run-erase", keyring=_ring())
    outcome = requests.get_status(lake, erase.request_id).outcome
    assert outcome is not None and outcome["verified_clean"] and outcome.get("result") != "no_data_found"
    for table in _zone_tables(lake, T):
        for name in table.column_names:
            if pa.types.is_string(table.schema.field(name).type):
                values = set(table[name].to_pylist())
                assert v1 not in values and v2 not in values, name
    # the independent scan: no pseudonym of the subject or of its cookie, of any version, in any
    # file under the data root (zones, index, state, request ledger, reports), bytes or cells
    report.run_nightly(lake, "after-erase")
    latest = report.latest(lake)
    assert latest is not None and latest["status"] == "pass", latest["summary"]
    cookie = ring.pseudonymize(T, "anonymous_id", ["anon-planted-1"])[0]
    needles = [p.partition(":")[2] for p in (v1, v2, cookie, ring.step(T, "anonymous_id", 2, [cookie])[0])]
    assert _scan(lake.root, needles) == []
    # and the ledger still answers for the request, its audit trail still verifies
    assert requests.get_status(lake, erase.request_id).state == "completed"
    assert audit.verify(lake).ok
    assert [e["action"] for e in audit.entries(lake, subject_id=v2, tenant_id=T)][-1] == "request.completed"


def test_a_killed_rotation_makes_writers_wait_and_resumes(
        rotated_world: tuple[Settings, dict[str, object]], monkeypatch: pytest.MonkeyPatch) -> None:
    lake, before = rotated_world
    steps: list[str] = []

    def die_at_second_exchange(step: str, unit: str) -> None:
        steps.append(step)
        if steps.count("exchanged") == 2:
            raise KeyboardInterrupt("killed")

    partitions = sum(1 for zone in layout.PARTITIONED for _d, t, tdir in layout.tenant_dirs(
        layout.zone_root(lake, zone)) if t == T for _p in layout.date_partitions(tdir))
    monkeypatch.setattr(compact, "_after", die_at_second_exchange)
    with pytest.raises(KeyboardInterrupt):
        rotation.rotate(lake, T, keyring=_ring())
    monkeypatch.setattr(compact, "_after", lambda step, unit: None)
    mixed = _pseudonyms(lake, T)
    assert {"v1", "v2"} <= set(mixed)  # half-way: partitions of both versions

    # its tenant's new batches and requests wait; another tenant's go on
    _land(lake, _order_events("waiting", ["usr_order_3"]), "orders-waiting")
    with pytest.raises(state.TenantRotating, match="rotated to version 2"):
        ingest.ingest_pending(lake)
    filed = requests.submit(lake, {"type": "erase", "tenant_id": T, "user_id": "usr_order_2"},
                            source="test", keyring=_ring())
    process.process_all(lake, "run-during", keyring=_ring())
    assert requests.get_status(lake, filed.request_id).state == "accepted"

    result = rotation.rotate(lake, T)
    assert result["resumed"] and result["to_version"] == 2
    assert result["recovered"] == {"rolled_forward": 1, "rolled_back": 0}
    assert result["partitions"] == partitions - 2  # the two exchanged ones are not redone
    assert set(_pseudonyms(lake, T)) == {"v2"} and _shape(lake, T) == before["shape"]
    assert not any((lake.zones / compact.WORK_DIR).glob("rotate-*"))
    # then the waiting work runs, at version 2
    assert [r.status for r in ingest.ingest_pending(lake)] == ["done"]
    process.process_all(lake, "run-after", keyring=_ring())
    done = requests.get_status(lake, filed.request_id)
    assert done.state == "completed" and done.outcome is not None
    assert done.outcome.get("result") != "no_data_found"


def test_rotation_refuses_an_unknown_tenant_and_a_busy_one(lake: Settings) -> None:
    ingest.ingest_pending(lake, keyring=_ring())
    with pytest.raises(rotation.RotationError, match="no data"):
        rotation.rotate(lake, "nosuchtenant", keyring=_ring())
    with state.connect(lake) as conn:
        conn.execute("UPDATE batches SET status = 'processing' WHERE tenant_id = ?", (T,))
    with pytest.raises(rotation.RotationError, match="in progress"):
        rotation.rotate(lake, T, keyring=_ring())
    assert state.pseudonym_versions(lake) == {}  # nothing recorded: writers go on
    assert not list(Path(lake.zones).rglob("rotate-*"))
