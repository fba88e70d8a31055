"""No linkage without a key: the event zone cannot be joined back to the tenant's own data.

The attacker holds the landing data (the tenant's copy, with user ids) and the event zone
(what analysts see).  A column whose values pair rows of the two one-to-one would map
every subject pseudonym to its user id (docs/adr/0010-linkage.md).
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pseudozone import contracts, ingest, linkage
from pseudozone.compliance import nightly
from pseudozone.config import Settings
from pseudozone.errors import ContractError
from pseudozone.keys import KeyRing
from pseudozone.landing import read_batch
from pseudozone.pii import scan
from pseudozone.rights import export, process, requests
from pseudozone.validation import detect
from pseudozone.validation.suites import Validator
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
PSEUDONYM = re.compile(rb"v[0-9]+:[0-9a-f]{64}")


def _strings(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr.cast(pa.string())


def _unique(arr: pa.Array) -> set[str]:
    counts = pc.value_counts(pc.drop_null(arr))
    values, times = counts.field(0).to_pylist(), counts.field(1).to_pylist()
    return {v for v, n in zip(values, times, strict=True) if n == 1}


def _landing_and_zone(settings: Settings) -> dict[str, tuple[pa.Table, pa.Table]]:
    raw: dict[str, list[pa.Table]] = {}
    for ref in ingest.pending(settings):
        table, _ = read_batch(settings, ref)
        raw.setdefault(ref.dataset, []).append(table)
    results = ingest.ingest_pending(settings, keyring=KR)
    assert {r.status for r in results} == {"done"}
    out = {}
    for dataset, tables in raw.items():
        files = sorted((settings.event_zone / dataset).rglob("*.parquet"))
        zone = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
        out[dataset] = (pa.concat_tables(tables), zone)
    return out


def test_no_event_zone_column_links_rows_one_to_one_to_the_landing_data(lake: Settings) -> None:
    # a column links when more than 1% of the rows pair up one-to-one through it; below that
    # are coincidences of small data (a byte count under 100 that occurs once, kept as it is
    # by two significant digits), which the ADR names
    linking: list[str] = []
    for dataset, (landing, zone) in _landing_and_zone(lake).items():
        assert zone.num_rows == landing.num_rows
        landing_unique = {c: _unique(_strings(landing[c])) for c in landing.column_names}
        for column in zone.column_names:
            ours = _unique(_strings(zone[column]))
            for source, theirs in landing_unique.items():
                # a pair of values unique on both sides joins one row to one row
                links = len(ours & theirs)
                if links > zone.num_rows // 100:
                    linking.append(f"{dataset}.{column} ~ {source}: {links} of {zone.num_rows} rows")
    assert linking == []


def test_timestamps_keep_the_contracts_precision_and_an_attacker_truncating_them_finds_no_signup(
        lake: Settings) -> None:
    data = _landing_and_zone(lake)
    events = data["events"][1]
    seconds = pc.floor_temporal(events["event_ts"], unit="second")
    assert pc.all(pc.equal(events["event_ts"], seconds)).as_py()
    landing, profiles = data["profiles"]
    days = pc.floor_temporal(profiles["signup_ts"], unit="day")
    assert pc.all(pc.equal(profiles["signup_ts"], days)).as_py()
    # the attacker's best join on signup time: its own values truncated to the published day
    truncated = ingest.truncate_timestamps(landing["signup_ts"].combine_chunks(), "day")
    assert len(_unique(_strings(profiles["signup_ts"])) & _unique(_strings(truncated))) <= 1


def test_an_analyst_still_joins_events_to_server_logs_by_pseudonymous_ids(lake: Settings) -> None:
    data = _landing_and_zone(lake)
    (events_in, events), (logs_in, logs) = data["events"], data["server_logs"]
    # subjects: the same pseudonym in both datasets, as many joined pairs as user ids give
    expected = pa.table({"u": events_in["user_id"]}).group_by("u").aggregate([([], "count_all")]).join(
        pa.table({"u": pc.if_else(pc.equal(logs_in["user_id"], ""), None, logs_in["user_id"])})
        .group_by("u").aggregate([([], "count_all")]).rename_columns(["u", "count_all_right"]), "u",
        join_type="inner")
    pairs = sum(a * b for a, b in zip(expected["count_all"].to_pylist(),
                                      expected["count_all_right"].to_pylist(), strict=True))
    right = pa.table({"s": logs["subject_id"], "x": logs["status"]})
    joined = pa.table({"s": events["subject_id"]}).join(right, "s", join_type="inner")
    assert joined.num_rows == pairs > 0


def test_an_id_in_free_text_gets_one_keyed_token_in_every_dataset_of_a_tenant(settings: Settings) -> None:
    order = "0f8fad5b-d9cb-469f-a165-70867728950e"

    def tokens(tenant: str) -> list[str]:
        return KR.pseudonymize(tenant, linkage.TEXT_PURPOSE, [order])  # what ingest passes

    text = pa.array([f'{{"order": "{order}", "qty": 3}}', f"/api/v1/orders/{order}?page=2",
                     '{"order_id": 1234567890123, "amount": 12.50}', "GET /health 200 12ms"])
    acme = linkage.replace_ids(text, lambda vs: KR.pseudonymize("acme", linkage.TEXT_PURPOSE, vs)).to_pylist()
    token = linkage.token_of(tokens("acme")[0].rpartition(":")[2])
    assert acme[0] == f'{{"order": "{token}", "qty": 3}}' and acme[1] == f"/api/v1/orders/{token}?page=2"
    # JSON stays JSON (a number becomes a string); short numbers and plain text stay as they are
    assert json.loads(acme[2])["amount"] == 12.5 and json.loads(acme[2])["order_id"].startswith("[id:")
    assert acme[3] == "GET /health 200 12ms"
    other = linkage.replace_ids(text, lambda vs: KR.pseudonymize("globex", linkage.TEXT_PURPOSE, vs))
    assert other.to_pylist()[0] != acme[0]
    assert not re.search(r"[0-9aeiou]", token.removeprefix("[id:").removesuffix("]"))
    # the token itself is no PII to the gate's independent checks
    assert detect.matches(pa.array(acme), "phone", ("DE",)).to_pylist() == [False] * 4


@pytest.mark.parametrize("encode", [False, True])
def test_the_tokenizer_leaves_pii_the_scrubber_left_for_the_gate(encode: bool) -> None:
    card, order = "4539148803436467", "48219374651"
    # the scrubber was told to replace nothing: its scan still found the card (and no PII in row 1)
    text = pa.array([f'{{"payment": "{card}", "order": {order}}}', f'{{"order": {order}}}'])
    found = scan.find_with_evidence(text)[1]
    values = pc.dictionary_encode(text) if encode else text
    out = linkage.replace_ids(values, lambda vs: KR.pseudonymize("acme", linkage.TEXT_PURPOSE, vs),
                              evidence=found)
    rows = (out.cast(pa.string()) if encode else out).to_pylist()
    assert card in rows[0] and order not in rows[0] and order not in rows[1]
    assert detect.matches(pa.array(rows), "card").to_pylist() == [True, False]
    # without the evidence the card would be tokenized out of the gate's sight
    plain = linkage.replace_ids(text, lambda vs: KR.pseudonymize("acme", linkage.TEXT_PURPOSE, vs))
    assert card not in plain.to_pylist()[0]


def _clean_events() -> pa.Table:
    """The planted events without their free-text PII (this test is not about scrubbing)."""
    table = planted.events()
    for column, value in (("user_agent", "curl/8.5.0"), ("page_url", "/home"), ("properties_json", "{}")):
        table = table.set_column(table.column_names.index(column), column, pa.array([value] * table.num_rows))
    return table


def _land(settings: Settings, dataset: str, table: pa.Table, name: str) -> None:
    target = settings.landing / dataset / f"tenant={planted.TENANT}" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)


def test_a_redelivered_row_is_dropped_and_counted_once(settings: Settings, master_key_env: None) -> None:
    events = _clean_events()
    _land(settings, "events", events, "first.parquet")
    [first] = ingest.ingest_pending(settings)
    assert first.status == "done" and first.rows_dropped_duplicate == 0
    # the same rows under a new name, two of them twice, plus one new row
    new = events.slice(0, 1).set_column(events.column_names.index("event_id"), "event_id",
                                        pa.array(["evt_brand_new"]))
    again = pa.concat_tables([events, events.slice(0, 2), new])
    _land(settings, "events", again, "second.parquet")
    [second] = ingest.ingest_pending(settings)
    assert second.status == "done"
    assert second.rows_dropped_duplicate == events.num_rows + 2 and second.rows_event == 1
    zone = pa.concat_tables([pq.read_table(f) for f in settings.event_zone.rglob("*.parquet")])
    assert zone.num_rows == events.num_rows + 1
    assert len(pc.unique(zone["event_id"])) == zone.num_rows


def test_two_batches_of_one_run_that_share_rows_publish_them_once(settings: Settings,
                                                                   master_key_env: None) -> None:
    events = _clean_events()
    _land(settings, "events", events, "a.parquet")
    _land(settings, "events", events, "b.parquet")
    results = ingest.ingest_pending(settings)
    assert [r.rows_dropped_duplicate for r in results] == [0, events.num_rows]
    zone = pa.concat_tables([pq.read_table(f) for f in settings.event_zone.rglob("*.parquet")])
    assert zone.num_rows == events.num_rows


def test_a_redelivery_of_a_quarantined_batch_is_not_taken_for_a_duplicate(settings: Settings,
                                                                          master_key_env: None) -> None:
    events = _clean_events()
    broken = events.set_column(events.column_names.index("event_name"), "event_name",
                               pa.array(["Not A Name!"] * events.num_rows))
    _land(settings, "events", broken, "first.parquet")
    [first] = ingest.ingest_pending(settings)
    assert first.status == "quarantined"
    _land(settings, "events", events, "fixed.parquet")
    [fixed] = ingest.ingest_pending(settings)
    assert fixed.status == "done" and fixed.rows_dropped_duplicate == 0
    assert fixed.rows_event == events.num_rows


def test_the_export_archive_names_the_user_and_holds_no_pseudonym(lake: Settings) -> None:
    ingest.ingest_pending(lake, keyring=KR)
    status = requests.submit(lake, {"type": "export", "tenant_id": planted.TENANT, "user_id": planted.USER},
                             source="test", keyring=KR)
    process.process_all(lake, "run-1", keyring=KR)
    done = requests.get_status(lake, status.request_id)
    assert done.state == "completed"
    archive_path = lake.root / done.outcome["archive"]
    blob = archive_path.read_bytes()
    assert PSEUDONYM.search(blob) is None
    zipped = export.open_archive(lake, status.request_id, keyring=KR)
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        assert PSEUDONYM.search(b"".join(archive.read(n) for n in archive.namelist())) is None
        for name in ("events.json", "server_logs.json", "profile_pseudonymous.json"):
            assert {r["user_id"] for r in json.loads(archive.read(name))} == {planted.USER}
    # the REST door's view of the request carries none either
    assert PSEUDONYM.search(json.dumps(done.public_dict()).encode()) is None

    # the nightly check: the archive holds its subject only, and no pseudonym
    sections = nightly._validate_exports(lake, Validator())
    assert [s["success"] for s in sections] == [True]
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    rows = json.loads(files["events.json"])
    rows[0]["user_id"] = "usr_0000005"  # another subject's record slipped in
    rows[1]["note"] = KR.subject_id(planted.TENANT, planted.USER)
    files["events.json"] = json.dumps(rows).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    # encrypted as the export writes it (the archive's own key): the check looks inside
    _, key = export.archive_key(lake, status.request_id, keyring=KR)
    archive_path.write_bytes(export.encrypt_archive(buf.getvalue(), status.request_id, key))
    [section] = nightly._validate_exports(lake, Validator())
    assert not section["success"]
    found = {f["expectation"] for f in section["failures"]}
    assert "archive_free_of_pseudonyms" in found
    assert any(f["expectation"] == "expect_column_values_to_be_in_registered_set"
               and f["unexpected_count"] == 1 for f in section["failures"])


@pytest.mark.parametrize(("column", "message"), [
    ("  event_name: {class: keep, type: string, nullable: false, linkable: \"yes\"}",
     "linkable must be true"),
    ("  ip: {class: quasi, type: string, generalize: ip_prefix, output: ip_prefix, linkable: true}",
     "linkable is only for keep"),
    ("  event_name: {class: keep, type: string, nullable: false, precision: second}",
     "precision is only for timestamp"),
    ("  event_ts: {class: keep, type: timestamp, nullable: false, precision: fortnight}", "has precision"),
    ("  event_name: {class: keep, type: string, nullable: false, tokenize_ids: false}", "tokenize_ids"),
    ("  event_name: {class: quasi, type: string, generalize: significant, digits: 2}",
     "significant needs type int64"),
])
def test_contract_linkage_options_are_checked(column: str, message: str) -> None:
    base = {
        "event_name": "  event_name: {class: keep, type: string, nullable: false}",
        "ip": "  ip: {class: quasi, type: string, generalize: ip_prefix, output: ip_prefix}",
        "event_ts": "  event_ts: {class: keep, type: timestamp, nullable: false}",
    }
    name = column.split(":")[0].strip()
    lines = [column if key == name else line for key, line in base.items()]
    text = "\n".join(["dataset: t", "partition_date_from: event_ts", "columns:",
                      "  tenant_id: {class: keep, type: string, nullable: false}",
                      "  user_id: {class: identifier, type: string, subject: true}", *lines])
    with pytest.raises(ContractError, match=message):
        contracts.parse_contract(text, "t.yaml")


def test_a_unique_key_must_be_a_required_event_zone_column() -> None:
    text = "\n".join(["dataset: t", "partition_date_from: ts", "unique_key: KEY", "columns:",
                      "  tenant_id: {class: keep, type: string, nullable: false}",
                      "  user_id: {class: identifier, type: string, subject: true}",
                      "  ts: {class: keep, type: timestamp, nullable: false}",
                      "  id: {class: keep, type: string, nullable: false, linkable: true}",
                      "  maybe: {class: keep, type: string}", "  email: {class: pii, type: string}"])
    assert contracts.parse_contract(text.replace("KEY", "id"), "t.yaml").unique_key == "id"
    for bad in ("maybe", "email", "nope"):
        with pytest.raises(ContractError, match="unique_key"):
            contracts.parse_contract(text.replace("KEY", bad), "t.yaml")


def test_significant_digits_keep_the_order_of_magnitude_only() -> None:
    from pseudozone.generalize import significant

    values = pa.array([0, 7, 99, 123_456, 249_999, -4_567, None], pa.int64())
    assert significant(values, {"digits": 2}).to_pylist() == [0, 7, 99, 120_000, 240_000, -4_500, None]

