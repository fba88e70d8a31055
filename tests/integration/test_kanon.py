"""k-anonymity indicator over the event zone: streamed counts, exact small-class figures, no values."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudozone import contracts, ingest
from pseudozone.compliance import kanon
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

PROFILES = ["postal_prefix", "birth_year"]


def _write(settings: Settings, dataset: str, tenant: str, day: str, name: str, table: pa.Table) -> Path:
    path = settings.event_zone / dataset / f"tenant_id={tenant}" / f"date={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _profiles(postal: list[str | None], year: list[int | None]) -> pa.Table:
    n = len(postal)
    return pa.table({
        "subject_id": [f"s{i}" for i in range(n)],
        "postal_prefix": pa.array(postal, pa.string()),
        "birth_year": pa.array(year, pa.int32()),
        "country": ["DE"] * n,
    })


@pytest.fixture
def handmade(settings: Settings) -> Settings:
    """Tenant t1 profiles over two dates and three files; tenant t2 in one file.

    t1 classes: (10, 1980) × 3, split across both dates and all files; (20, 1990) × 2;
    (99, 1950) × 1, the unique one; (null, null) × 2, split across files.
    t2: (10, 1980) × 4.
    """
    _write(settings, "profiles", "t1", "2026-11-01", "a.parquet",
           _profiles(["10", "20", "99", None], [1980, 1990, 1950, None]))
    _write(settings, "profiles", "t1", "2026-11-01", "b.parquet",
           _profiles(["10", "20"], [1980, 1990]))
    _write(settings, "profiles", "t1", "2026-11-02", "c.parquet",
           _profiles(["10", None], [1980, None]))
    _write(settings, "profiles", "t2", "2026-11-01", "a.parquet", _profiles(["10"] * 4, [1980] * 4))
    return settings


def test_every_tenant_and_dataset_of_an_ingested_lake_has_a_result(lake: Settings) -> None:
    ingest.ingest_pending(lake)
    expected_rows: Counter[tuple[str, str]] = Counter()
    for dataset in contracts.available():
        for path in sorted((lake.event_zone / dataset).rglob("*.parquet")):
            tenant = path.parent.parent.name.removeprefix("tenant_id=")
            expected_rows[(dataset, tenant)] += pq.ParquetFile(path).metadata.num_rows
    with_qis = {d for d in contracts.available() if kanon.quasi_identifiers(contracts.load(d))}
    assert with_qis == {"events", "profiles", "server_logs"}
    assert {d for d, _ in expected_rows} == with_qis and len(expected_rows) >= 6

    results = kanon.k_anonymity(lake, k=5)

    got = {(r.dataset, r.tenant_id): r for r in results}
    assert got.keys() == expected_rows.keys()
    assert [(r.dataset, r.tenant_id) for r in results] == sorted(got)
    for key, res in got.items():
        assert res.rows == expected_rows[key] > 0
        assert res.groups >= 1 and res.min_group_size is not None and res.min_group_size >= 1
        assert res.flagged == (res.min_group_size < 5)
        assert 0 <= res.groups_below_k <= res.groups and res.rows_below_k <= res.rows
    assert all(r.quasi_identifiers == PROFILES for r in results if r.dataset == "profiles")
    assert all(r.quasi_identifiers == ["ip_prefix"] for r in results if r.dataset == "events")
    # a log line's byte count, rounded, is a quasi-identifier too (docs/adr/0010-linkage.md)
    assert all(r.quasi_identifiers == ["ip_prefix", "bytes_sent"] for r in results
               if r.dataset == "server_logs")


def test_small_classes_are_counted_exactly_across_files_and_dates(handmade: Settings) -> None:
    results = kanon.k_anonymity(handmade, k=2, datasets=["profiles"])

    assert [(r.dataset, r.tenant_id) for r in results] == [("profiles", "t1"), ("profiles", "t2")]
    t1, t2 = results
    assert t1.to_dict() == {
        "tenant_id": "t1", "dataset": "profiles", "quasi_identifiers": PROFILES,
        "rows": 8, "groups": 4, "min_group_size": 1,
        "groups_below_k": 1, "rows_below_k": 1, "flagged": True,
    }
    assert (t2.rows, t2.groups, t2.min_group_size, t2.flagged) == (4, 1, 4, False)


def test_a_class_split_across_files_is_summed_not_counted_per_file(handmade: Settings) -> None:
    # (10, 1980) has 3 rows in t1 but only 1 per file: at k=3 it must not be below k
    t1 = kanon.k_anonymity(handmade, k=3, datasets=["profiles"])[0]
    assert (t1.groups_below_k, t1.rows_below_k) == (3, 5)  # (20,1990)×2, (99,1950)×1, (null,null)×2
    t1 = kanon.k_anonymity(handmade, k=4, datasets=["profiles"])[0]
    assert (t1.groups_below_k, t1.rows_below_k, t1.min_group_size) == (4, 8, 1)


def test_compaction_of_partials_gives_the_same_counts(handmade: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = [r.to_dict() for r in kanon.k_anonymity(handmade, k=2, datasets=["profiles"])]
    monkeypatch.setattr(kanon, "COMPACT_ROWS", 1)
    after = [r.to_dict() for r in kanon.k_anonymity(handmade, k=2, datasets=["profiles"])]
    assert after == before


def test_nulls_form_their_own_class(settings: Settings) -> None:
    _write(settings, "profiles", "t1", "2026-11-01", "a.parquet",
           _profiles([None, None, None, "10"], [None, None, None, None]))
    res = kanon.k_anonymity(settings, k=2, datasets=["profiles"])[0]
    assert (res.rows, res.groups, res.min_group_size, res.groups_below_k, res.rows_below_k) == (4, 2, 1, 1, 1)


def test_results_hold_counts_and_column_names_never_values(handmade: Settings,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger=kanon.__name__)
    results = kanon.k_anonymity(handmade, k=2, datasets=["profiles"])
    text = json.dumps([r.to_dict() for r in results]) + caplog.text
    assert "profiles" in caplog.text and "postal_prefix" in caplog.text
    for value in ('"10"', '"20"', '"99"', "1980", "1990", "1950"):
        assert value not in text


def test_a_file_lacking_a_quasi_identifier_column_is_a_schema_error(handmade: Settings) -> None:
    _write(handmade, "profiles", "t1", "2026-11-03", "broken.parquet",
           _profiles(["77"], [1977]).drop_columns(["birth_year"]))
    with pytest.raises(PseudozoneError) as info:
        kanon.k_anonymity(handmade, datasets=["profiles"])
    message = str(info.value)
    assert "birth_year" in message and "'profiles'" in message
    assert "profiles/tenant_id=t1/date=2026-11-03/broken.parquet" in message
    assert str(handmade.root) not in message and "77" not in message


def test_overrides_replace_the_contract_quasi_identifiers(handmade: Settings) -> None:
    res = kanon.k_anonymity(handmade, k=2, datasets=["profiles"],
                            overrides={"profiles": ["postal_prefix"]})[0]
    assert res.quasi_identifiers == ["postal_prefix"]
    # t1 postal prefixes: 10×3, 20×2, 99×1, null×2
    assert (res.groups, res.min_group_size, res.groups_below_k, res.rows_below_k) == (4, 1, 1, 1)
    res = kanon.k_anonymity(handmade, k=2, datasets=["profiles"], overrides={"profiles": ["country"]})[0]
    assert (res.groups, res.min_group_size, res.flagged) == (1, 8, False)


def test_an_empty_override_skips_the_dataset(handmade: Settings) -> None:
    assert kanon.k_anonymity(handmade, datasets=["profiles"], overrides={"profiles": []}) == []


@pytest.mark.parametrize("override", [["email"], ["postal_prefix", "postal_prefix"], "postal_prefix"])
def test_given_an_invalid_override_then_error_raised(handmade: Settings, override: object) -> None:
    with pytest.raises(PseudozoneError, match="quasi-identifiers"):
        kanon.k_anonymity(handmade, datasets=["profiles"], overrides={"profiles": override})  # type: ignore[dict-item]


def test_given_an_override_for_a_dataset_outside_the_run_then_error_raised(handmade: Settings) -> None:
    with pytest.raises(PseudozoneError, match="events"):
        kanon.k_anonymity(handmade, datasets=["profiles"], overrides={"events": ["ip_prefix"]})


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_given_an_invalid_k_then_error_raised(settings: Settings, k: object) -> None:
    with pytest.raises(PseudozoneError, match="k must be"):
        kanon.k_anonymity(settings, k=k)  # type: ignore[arg-type]


def test_a_contract_quasi_identifiers_key_is_honoured(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = (contracts.available()["profiles"].read_text(encoding="utf-8")
            + "quasi_identifiers: [birth_year, country]\n")
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "profiles.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(contracts.CONTRACTS_DIR_ENV, str(tmp_path / "contracts"))
    assert kanon.quasi_identifiers(contracts.load("profiles")) == ["birth_year", "country"]
    assert kanon.quasi_identifiers(contracts.load("events")) == ["ip_prefix"]


def test_a_tenant_with_only_empty_files_has_no_classes(settings: Settings) -> None:
    _write(settings, "profiles", "t1", "2026-11-01", "a.parquet", _profiles([], []))
    res = kanon.k_anonymity(settings, datasets=["profiles"])[0]
    assert (res.rows, res.groups, res.min_group_size, res.flagged) == (0, 0, None, False)
