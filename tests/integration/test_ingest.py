"""End-to-end ingest on generated data with planted PII (no Airflow)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import contracts, ingest, scrub, state
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.landing import BatchRef
from tests import planted
from tests.conftest import TEST_MASTER_KEY


def _landing_tables(settings: Settings, dataset: str) -> pa.Table:
    files = sorted((settings.landing / dataset).rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_publishes_every_row_of_every_batch(lake: Settings) -> None:
    expected = {d: _landing_tables(lake, d).num_rows for d in ("profiles", "events", "server_logs")}

    results = ingest.ingest_pending(lake)

    assert {r.status for r in results} == {"done"}
    for dataset, rows in expected.items():
        files = sorted((lake.event_zone / dataset).rglob("*.parquet"))
        assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == rows
    assert sum(r.rows_pii for r in results) == expected["profiles"]


def test_event_zone_holds_no_pii_from_the_input(lake: Settings) -> None:
    raw_profiles = _landing_tables(lake, "profiles")
    raw_values = set()
    for col in ("user_id", "email", "full_name", "phone", "street_address", "city"):
        raw_values.update(v for v in raw_profiles[col].to_pylist() if v)
    long_values = [v for v in raw_values if len(v) >= 8]

    ingest.ingest_pending(lake)

    cells = list(planted.string_cells(lake.event_zone))
    assert cells, "the event zone is empty"
    exact = [(p.name, c) for p, c, v in cells if v in raw_values]
    assert exact == [], f"raw PII values found as cells: {exact[:5]}"
    blob = "\n".join(v for _, _, v in cells).lower()
    substr = [v for v in long_values if v.lower() in blob]
    assert substr == [], f"{len(substr)} raw PII values found inside event-zone text"
    assert planted.find_needles(blob) == []
    # and nothing in any string cell still looks like an email, phone, card, IBAN or IP
    by_column: dict[str, list[str]] = {}
    for path, column, value in cells:
        by_column.setdefault(f"{path.parent.parent.parent.name}.{column}", []).append(value)
    for column, values in by_column.items():
        if column.endswith(".ip_prefix"):
            continue  # generalized networks (x.y.z.0/24) are the point of that column
        found = {k: n for k, n in scrub.find(pa.array(values)).items() if n}
        assert found == {}, f"{column}: {found}"


@pytest.mark.parametrize("form", sorted(planted.FREE_TEXT_FORMS))
def test_each_free_text_pii_form_is_scrubbed(lake: Settings, form: str) -> None:
    ingest.ingest_pending(lake)
    events = pa.concat_tables([pq.read_table(p)
                               for p in (lake.event_zone / "events").rglob("*planted-0000*.parquet")])
    event_id = f"evt_planted_{list(planted.FREE_TEXT_FORMS).index(form)}"
    row = events.filter(pc.equal(events["event_id"], planted.link_id(event_id)))
    assert row.num_rows == 1
    for column in ("page_url", "properties_json", "user_agent"):
        text = row[column][0].as_py()
        assert planted.find_needles(text) == [], f"{form} leaked through {column}"
        assert "[" in text, f"{form}: nothing was replaced in {column}"


def test_pii_zone_is_ciphertext_and_decrypts_to_the_input(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    keyring = KeyRing(TEST_MASTER_KEY)
    contract = contracts.load("profiles")
    encrypted = [c.name for c in contract.columns if c.cls in ("pii", "identifier")]
    raw = _landing_tables(lake, "profiles")
    expected = {(t, u): row for t, u, row in zip(
        raw["tenant_id"].to_pylist(), raw["user_id"].to_pylist(), raw.to_pylist(), strict=True)}

    decrypted = 0
    with state.connect(lake) as conn:
        vault = Vault(keyring, conn)
        for path in sorted(lake.pii_zone.rglob("*.parquet")):
            tenant = path.parent.name.removeprefix("tenant_id=")
            table = pq.read_table(path)
            assert set(table.column_names) == {"subject_id", *encrypted}
            for name in encrypted:
                assert pa.types.is_binary(table[name].type), f"{name} is not ciphertext"
            deks = vault.data_keys(tenant, table["subject_id"].to_pylist(), create=False)
            for row in table.to_pylist():
                aead = AESGCM(deks[row["subject_id"]])
                clear = {n: decrypt_value(aead, row[n], pii_associated_data(tenant, row["subject_id"], n))
                         for n in encrypted if row[n] is not None}
                source = expected[(tenant, clear["user_id"])]
                assert clear == {n: source[n] for n in encrypted if source[n] is not None}
                for n in encrypted:
                    if source[n]:
                        assert source[n].encode() not in row[n]
                decrypted += 1
    assert decrypted == raw.num_rows
    assert any(r["full_name"] == planted.NAME for r in expected.values())  # non-ASCII round trip


def test_ciphertext_is_bound_to_tenant_subject_and_column(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    path = next(lake.pii_zone.rglob("*acme*.parquet"))
    row = pq.read_table(path).to_pylist()[0]
    with state.connect(lake) as conn:
        dek = Vault(KeyRing(TEST_MASTER_KEY), conn).data_keys("acme", [row["subject_id"]], create=False)
    aead = AESGCM(dek[row["subject_id"]])
    with pytest.raises(PseudozoneError):
        decrypt_value(aead, row["email"], pii_associated_data("acme", row["subject_id"], "phone"))
    with pytest.raises(PseudozoneError):
        decrypt_value(aead, row["email"], pii_associated_data("globex", row["subject_id"], "email"))


def test_rerun_changes_nothing(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    before = _digest_tree(lake.zones)

    again = ingest.ingest_pending(lake)
    for ref_result in [ingest.process_batch(lake, BatchRef.from_dict(
            {"batch_id": "events.acme.planted-0000", "dataset": "events", "tenant_id": "acme",
             "path": "events/tenant=acme/planted-0000.parquet"}))]:
        assert ref_result.status == "skipped"

    assert again == []
    assert _digest_tree(lake.zones) == before


def _decrypted_pii(settings: Settings) -> list[tuple[str, ...]]:
    keyring = KeyRing(TEST_MASTER_KEY)
    rows = []
    with state.connect(settings) as conn:
        vault = Vault(keyring, conn)
        for path in sorted(settings.pii_zone.rglob("*.parquet")):
            tenant = path.parent.name.removeprefix("tenant_id=")
            for row in pq.read_table(path).to_pylist():
                s = row["subject_id"]
                aead = AESGCM(vault.data_keys(tenant, [s], create=False)[s])
                rows.append((str(path.relative_to(settings.zones)), s, *(
                    decrypt_value(aead, row[n], pii_associated_data(tenant, s, n)) if row[n] else ""
                    for n in sorted(row) if n != "subject_id")))
    return sorted(rows)


def test_batch_killed_mid_publish_and_rerun_equals_uninterrupted_run(
        tmp_path: Path, master_key_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pseudozone.sample import generate

    roots = []
    for name in ("clean", "crashed"):
        s = Settings.from_env(tmp_path / name)
        generate(s, events=3000, tenants=2, seed=5, batch_rows=1000)
        planted.plant(s.landing)
        roots.append(s)
    clean, crashed = roots
    ingest.ingest_pending(clean)

    real_publish = ingest.publish_file
    calls = {"n": 0}

    def dying_publish(staged: Path, final: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 9:  # part-way through a batch: some files of it are already visible
            raise KeyboardInterrupt("simulated kill")
        real_publish(staged, final)

    monkeypatch.setattr(ingest, "publish_file", dying_publish)
    with pytest.raises(KeyboardInterrupt):
        ingest.ingest_pending(crashed)
    with state.connect(crashed) as conn:
        statuses = dict(conn.execute("SELECT batch_id, status FROM batches").fetchall())
    assert "processing" in statuses.values()
    monkeypatch.setattr(ingest, "publish_file", real_publish)

    ingest.ingest_pending(crashed)

    def event_tree(s: Settings) -> dict[str, str]:
        return _digest_tree(s.event_zone)

    assert event_tree(crashed) == event_tree(clean)
    assert _digest_tree(crashed.subject_index) == _digest_tree(clean.subject_index)
    assert _decrypted_pii(crashed) == _decrypted_pii(clean)
    assert not any(crashed.staging.iterdir())
    assert not [p for p in crashed.zones.rglob(".*tmp-*")]


def test_malformed_batch_is_quarantined_with_reason_and_the_rest_proceeds(lake: Settings) -> None:
    bad = lake.landing / "events" / "tenant=acme" / "broken-0001.csv"
    good_header = ",".join(contracts.load("events").names)
    bad.write_text(good_header + ",ssn\n" + ",".join(["acme"] + ["x"] * 10) + ",123-45-6789\n")
    wrong_type = lake.landing / "server_logs" / "tenant=acme" / "wrongtype-0001.jsonl"
    wrong_type.write_text(json.dumps({
        "tenant_id": "acme", "user_id": "u1", "request_ts": "2026-11-01T10:00:00Z", "ip": "10.0.0.1",
        "method": "GET", "path": "/", "status": "teapot-zelda@example.org", "bytes_sent": 1,
        "user_agent": "x", "request_id": "r1"}) + "\n")

    results = {r.batch_id: r for r in ingest.ingest_pending(lake)}

    assert results["events.acme.broken-0001"].status == "quarantined"
    assert results["events.acme.broken-0001"].reason["code"] == "unknown_columns"
    assert results["events.acme.broken-0001"].reason["columns"] == []  # unknown names may be data
    assert results["events.acme.broken-0001"].reason["positions"] == [11]
    assert results["server_logs.acme.wrongtype-0001"].reason["code"] == "wrong_type"
    assert results["server_logs.acme.wrongtype-0001"].reason["columns"] == ["status"]
    assert sum(r.status == "done" for r in results.values()) == len(results) - 2
    assert not bad.exists()
    moved = lake.quarantine / "events" / "tenant_id=acme" / "broken-0001.csv"
    assert moved.read_text().endswith("123-45-6789\n")  # nothing lost
    reason_text = (moved.parent / "broken-0001.csv.reason.json").read_text()
    assert json.loads(reason_text)["code"] == "unknown_columns"
    reason2 = next((lake.quarantine / "server_logs").rglob("*.reason.json")).read_text()
    assert "zelda" not in reason2.lower() and "teapot" not in reason2
    # nothing of a quarantined batch reached a zone
    assert not list(lake.event_zone.rglob("*broken-0001*"))


def test_csv_jsonl_and_parquet_inputs_give_the_same_event_zone(tmp_path: Path, master_key_env: None) -> None:
    from pseudozone.sample import generate

    zones_by_format = {}
    for fmt in ("parquet", "csv", "jsonl"):
        s = Settings.from_env(tmp_path / fmt)
        generate(s, events=900, tenants=1, seed=3, batch_rows=1000, fmt=fmt)
        results = ingest.ingest_pending(s)
        assert {r.status for r in results} == {"done"}, [r.reason for r in results]
        tables = {}
        for dataset in ("profiles", "events", "server_logs"):
            files = sorted((s.event_zone / dataset).rglob("*.parquet"))
            t = pa.concat_tables([pq.read_table(f) for f in files])
            tables[dataset] = t.sort_by([(t.column_names[i], "ascending") for i in range(3)])
        zones_by_format[fmt] = tables
    for dataset in ("profiles", "events", "server_logs"):
        assert zones_by_format["csv"][dataset].equals(zones_by_format["parquet"][dataset]), dataset
        assert zones_by_format["jsonl"][dataset].equals(zones_by_format["parquet"][dataset]), dataset


def test_same_user_in_two_tenants_gets_unlinkable_pseudonyms(lake: Settings) -> None:
    other = lake.landing / "profiles" / "tenant=globex" / "planted-0000.parquet"
    pq.write_table(planted.profiles().set_column(0, "tenant_id", pa.array(["globex"])), other)
    ingest.ingest_pending(lake)
    subjects = {}
    for tenant in ("acme", "globex"):
        files = (lake.event_zone / "profiles").rglob(f"tenant_id={tenant}/*/*planted-0000.parquet")
        table = pa.concat_tables([pq.read_table(f) for f in files])
        subjects[tenant] = set(table["subject_id"].to_pylist())
    assert len(subjects["acme"]) == len(subjects["globex"]) == 1
    assert subjects["acme"].isdisjoint(subjects["globex"])
    assert all(s.startswith("v1:") and len(s) == 3 + 64 for s in subjects["acme"] | subjects["globex"])


def test_subject_index_lists_every_file_holding_a_subject(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    subject = KeyRing(TEST_MASTER_KEY).subject_id("acme", planted.USER)
    index = pa.concat_tables([pq.read_table(p) for p in lake.subject_index.rglob("*.parquet")])
    listed = {(z, p) for s, z, p in zip(index["subject_id"].to_pylist(), index["zone"].to_pylist(),
                                        index["path"].to_pylist(), strict=True) if s == subject}
    actual = set()
    for zone_name, root in (("events", lake.event_zone), ("pii", lake.pii_zone)):
        for f in root.rglob("*.parquet"):
            if subject in pq.read_table(f, columns=["subject_id"])["subject_id"].to_pylist():
                actual.add((zone_name, str(f.relative_to(lake.zones))))
    assert listed == actual
    assert {z for z, _ in listed} == {"events", "pii"}


def test_redelivery_of_a_done_batch(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    before = _digest_tree(lake.event_zone)
    source = lake.landing / "events" / "tenant=acme" / "planted-0000.parquet"

    # the same bytes written again (new mtime): nothing to do
    source.write_bytes(source.read_bytes())
    assert [r.status for r in ingest.ingest_pending(lake)] == ["skipped"]
    assert ingest.pending(lake) == []

    # other content under a done batch id: parked in quarantine, the zones untouched
    pq.write_table(planted.events().slice(0, 3), source)
    [result] = ingest.ingest_pending(lake)
    assert result.status == "quarantined" and result.reason["code"] == "changed_after_ingest"
    assert not source.exists()
    assert _digest_tree(lake.event_zone) == before
    with state.connect(lake) as conn:
        assert conn.execute("SELECT status FROM batches WHERE batch_id = 'events.acme.planted-0000'"
                            ).fetchone()[0] == "done"


def test_corrected_delivery_of_a_quarantined_batch_is_ingested(lake: Settings) -> None:
    bad = lake.landing / "events" / "tenant=acme" / "fixme-0001.parquet"
    pq.write_table(planted.events().append_column("ssn", pa.array(["x"] * 10)), bad)
    [first] = [r for r in ingest.ingest_pending(lake) if r.batch_id == "events.acme.fixme-0001"]
    assert first.status == "quarantined"

    pq.write_table(planted.events("evt_fixed"), bad)  # (the planted ids are published)
    [second] = ingest.ingest_pending(lake)
    assert second.batch_id == "events.acme.fixme-0001" and second.status == "done"
    assert second.rows_event == 10
    # the rejected delivery is still kept in quarantine
    assert (lake.quarantine / "events" / "tenant_id=acme" / "fixme-0001.parquet").exists()


def test_no_dictionary_array_reaches_the_parquet_writer(
        lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow 26 pads dictionary pages with uninitialized memory for partly-used dictionaries."""
    from pseudozone import zones

    seen: list[pa.Schema] = []
    real = zones.write_parquet

    def spy(table: pa.Table, path: Path, **options: Any) -> Path:
        seen.append(table.schema)
        return real(table, path, **options)

    monkeypatch.setattr(zones, "write_parquet", spy)
    ingest.ingest_pending(lake)
    assert len(seen) > 20
    assert [f for schema in seen for f in schema if pa.types.is_dictionary(f.type)] == []


def test_parallel_workers_give_the_same_zones_as_one_process(tmp_path: Path, master_key_env: None) -> None:
    from pseudozone.sample import generate

    trees = []
    for workers in (1, 2):
        s = Settings.from_env(tmp_path / f"w{workers}")
        generate(s, events=3000, tenants=2, seed=9, batch_rows=1000)
        results = ingest.ingest_pending(s, workers=workers)
        assert [r.status for r in results] == ["done"] * len(results)
        trees.append((_digest_tree(s.event_zone), _digest_tree(s.subject_index), _decrypted_pii(s)))
    assert trees[0] == trees[1]


def test_a_key_ring_cannot_be_pickled(keyring: KeyRing) -> None:
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keyring)
    assert repr(keyring) == "KeyRing(pseudonym_version=1)"


def test_one_batch_of_a_fresh_root_is_ingested_without_a_key_ring_passed_in(
        tmp_path: Path, master_key_env: None) -> None:
    # process_batch loads the root's key itself: before the ledger records the batch, so that a
    # fresh root records its key check first (it used to refuse: a batch, but no key check)
    settings = Settings.from_env(tmp_path / "fresh")
    target = settings.landing / "events" / f"tenant={planted.TENANT}" / "first-0001.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(planted.events("evt_first"), target)
    [ref] = ingest.pending(settings)
    assert ingest.process_batch(settings, ref).status == "done"
