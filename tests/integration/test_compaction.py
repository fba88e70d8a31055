"""Compaction (issue 9): one file per partition-day and bucket, same query results, an exact
subject index, erasure afterwards, and a run killed after any commit step converges."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pseudozone import ingest, query
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.lake import compact, layout
from pseudozone.rights import process, requests
from pseudozone.sample import generate
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
TENANT = "acme"
RESTRICTED_USER = "usr_0000003"
ERASED_USER = "usr_0000007"

QUERIES = [
    "SELECT tenant_id, date, event_name, count(*) AS n, count(DISTINCT subject_id) AS s FROM events "
    "GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM events WHERE tenant_id = 'acme' AND date BETWEEN '2026-11-02' AND '2026-11-04' "
    "ORDER BY ALL",
    "SELECT tenant_id, date, count(*) FROM server_logs GROUP BY ALL ORDER BY ALL",
    "SELECT tenant_id, count(*) FROM profiles GROUP BY ALL ORDER BY ALL",
]


def _submit(settings: Settings, kind: str, user: str) -> None:
    requests.submit(settings, {"type": kind, "tenant_id": TENANT, "user_id": user}, source="test", keyring=KR)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Many small batches (250 events each: several files per partition-day and bucket) for two
    tenants, ingested, and one subject restricted (so the restricted zone has files too)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(TEST_MASTER_KEY).decode())
    root = tmp_path_factory.mktemp("compaction") / "lake"
    settings = Settings.from_env(root)
    settings.ensure()
    generate(settings, events=3000, tenants=2, seed=5, batch_rows=250)
    ingest.ingest_pending(settings, keyring=KR)
    _submit(settings, "restrict", RESTRICTED_USER)
    process.process_all(settings, "restrict-1", keyring=KR)
    yield root
    mp.undo()


@pytest.fixture
def clake(template: Path, tmp_path: Path, master_key_env: None) -> Settings:
    root = tmp_path / "lake"
    shutil.copytree(template, root)
    return Settings.from_env(root)


def _results(settings: Settings) -> list[list[tuple[object, ...]]]:
    return [query.run(settings, sql)[1] for sql in QUERIES]


def _partition_files(settings: Settings) -> dict[tuple[str, str, str, str], list[Path]]:
    out: dict[tuple[str, str, str, str], list[Path]] = defaultdict(list)
    for zone in layout.PARTITIONED:
        for f in sorted(layout.zone_root(settings, zone).rglob("*.parquet")):
            zf = layout.parse(f, settings.zones)
            assert zf.date is not None
            out[(zone, zf.dataset, zf.tenant, zf.date)].append(f)
    return out


def _assert_index_exact(settings: Settings) -> None:
    """Every entry names an existing file holding the subject, in its batch's index file;
    every file's subjects are indexed; no entry twice."""
    entries: set[tuple[str, str, str]] = set()
    for dataset, batch, f in (e for t in ("acme", "globex") for e in layout.index_files(settings, t)):
        table = pq.read_table(f)
        rows = list(zip(*(table[c].to_pylist() for c in ("subject_id", "zone", "path")), strict=True))
        assert len(rows) == len(set(rows)), f"duplicate entries in {f}"
        for subject, zone, rel in rows:
            zf = layout.parse(rel)
            assert (zf.dataset, zf.batch, zf.zone) == (dataset, batch, zone), rel
            entries.add((subject, zone, rel))
    listed: set[tuple[str, str, str]] = set()
    for zone in layout.ZONES:
        for f in layout.zone_root(settings, zone).rglob("*.parquet"):
            rel = layout.parse(f, settings.zones).rel
            col = pq.read_table(f, columns=["subject_id"])["subject_id"]
            listed |= {(s, zone, rel) for s in pc.unique(pc.drop_null(col)).to_pylist()}
    assert entries == listed


def _lake_state(settings: Settings) -> dict[str, object]:
    """Bytes of every zone file, and the rows of every index file."""
    out: dict[str, object] = {}
    for zone in layout.ZONES:
        for f in sorted(layout.zone_root(settings, zone).rglob("*.parquet")):
            out[str(f.relative_to(settings.zones))] = hashlib.sha256(f.read_bytes()).hexdigest()
    for f in sorted(settings.subject_index.rglob("*.parquet")):
        out["index/" + str(f.relative_to(settings.subject_index))] = sorted(
            map(tuple, zip(*pq.read_table(f).to_pydict().values(), strict=True)))
    return out


def _assert_sorted(f: Path, time_column: str) -> None:
    t = pq.read_table(f, columns=["subject_id", time_column])
    keys = list(zip(t["subject_id"].to_pylist(), t[time_column].to_pylist(), strict=True))
    present = [k for k in keys if k[0] is not None]
    assert present == sorted(present) and keys[: len(present)] == present  # nulls last


def test_compaction_leaves_one_file_per_partition_day_and_bucket(clake: Settings) -> None:
    before, files_before = _results(clake), _partition_files(clake)
    assert max(len(v) for v in files_before.values()) >= 8  # several batches x buckets per day
    assert any(zone == layout.RESTRICTED for zone, *_ in files_before)
    _assert_index_exact(clake)

    summary = compact.compact(clake)

    after = _partition_files(clake)
    assert summary["partitions"] == len(files_before)
    assert summary["files_out"] == sum(map(len, after.values()))
    assert set(after) == set(files_before)
    for (zone, dataset, _, _), files in after.items():
        buckets = [layout.parse(f, clake.zones).bucket for f in files]
        assert len(buckets) == len(set(buckets)), files  # one file per bucket
        assert all(f.name.startswith("compact-") for f in files)
        time_column = {"events": "event_ts", "server_logs": "request_ts", "profiles": "signup_ts"}[dataset]
        for f in files:
            _assert_sorted(f, time_column)
            assert f.stat().st_mode & 0o777 == (0o640 if zone == layout.EVENTS else 0o600)
    assert _results(clake) == before
    _assert_index_exact(clake)
    assert not any((clake.zones / compact.WORK_DIR).iterdir())
    for part in {f.parent for files in after.values() for f in files}:
        zone = part.relative_to(clake.zones).parts[0]
        assert part.stat().st_mode & 0o777 == (0o750 if zone == layout.EVENTS else 0o700)

    assert (clake.zones / compact.WORK_DIR).stat().st_mode & 0o777 == 0o700
    state = _lake_state(clake)
    again = compact.compact(clake)
    assert again["partitions"] == 0 and _lake_state(clake) == state  # idempotent


def test_target_rows_cuts_a_partition_into_parts(clake: Settings) -> None:
    before = _results(clake)
    compact.compact(clake, target_rows=40, datasets=["events"], tenants=["acme"])
    for (zone, dataset, tenant, _), files in _partition_files(clake).items():
        if (dataset, tenant) != ("events", "acme"):
            assert not any(f.name.startswith("compact-") for f in files)
            continue
        per_bucket: dict[int | None, list[int]] = defaultdict(list)
        for f in files:
            assert f.name.startswith("compact-")
            per_bucket[layout.parse(f, clake.zones).bucket].append(pq.read_metadata(f).num_rows)
        for sizes in per_bucket.values():
            assert max(sizes) <= 40 and len(sizes) == max(1, math.ceil(sum(sizes) / 40)), (zone, sizes)
    assert _results(clake) == before
    _assert_index_exact(clake)
    # a new target recompacts into its own size
    compact.compact(clake, target_rows=10_000)
    assert all(len({layout.parse(f, clake.zones).bucket for f in files}) == len(files)
               for files in _partition_files(clake).values())
    assert _results(clake) == before
    _assert_index_exact(clake)


def _rows_of(settings: Settings, subject: str) -> int:
    n = 0
    for f in settings.zones.rglob("*.parquet"):
        if f.is_relative_to(settings.zones / compact.WORK_DIR):
            continue
        col = pq.read_table(f, columns=["subject_id"])["subject_id"]
        n += int(pc.sum(pc.fill_null(pc.equal(col, subject), False)).as_py() or 0)
    return n


def test_erase_after_compaction_removes_every_row(clake: Settings) -> None:
    compact.compact(clake)
    erased, restricted = KR.subject_id(TENANT, ERASED_USER), KR.subject_id(TENANT, RESTRICTED_USER)
    assert _rows_of(clake, erased) > 0 and _rows_of(clake, restricted) > 0
    _submit(clake, "erase", ERASED_USER)
    _submit(clake, "erase", RESTRICTED_USER)  # rows in the (compacted) restricted zone
    summary = process.process_all(clake, "erase-1", keyring=KR)
    assert summary["completed"] == {"erase": 2}
    assert _rows_of(clake, erased) == 0 and _rows_of(clake, restricted) == 0
    _assert_index_exact(clake)
    # and compacting again afterwards keeps it so
    compact.compact(clake)
    assert _rows_of(clake, erased) == 0
    _assert_index_exact(clake)


@pytest.fixture(scope="module")
def reference_state(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The lake an uninterrupted compaction of the template makes."""
    reference = Settings.from_env(tmp_path_factory.mktemp("reference") / "lake")
    shutil.copytree(template, reference.root)
    compact.compact(reference)
    return _lake_state(reference)


class Killed(Exception):
    pass


@pytest.mark.parametrize("step", compact.STEPS)
def test_a_run_killed_after_any_step_converges_on_the_uninterrupted_lake(
        clake: Settings, reference_state: dict[str, object], step: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    expected = reference_state
    before = _results(clake)

    seen: list[str] = []

    def kill(at: str, unit: str) -> None:
        if at == step:
            seen.append(unit)
            if len(seen) == 3:  # the third unit: two are done already
                raise Killed(at)

    monkeypatch.setattr(compact, "_after", kill)
    with pytest.raises(Killed):
        compact.compact(clake)
    # a reader between the kill and the rerun sees every row once
    assert _results(clake) == before
    monkeypatch.setattr(compact, "_after", lambda at, unit: None)
    summary = compact.compact(clake)
    assert summary["rolled_forward"] + summary["rolled_back"] == 1
    assert _lake_state(clake) == expected
    _assert_index_exact(clake)
    assert not any((clake.zones / compact.WORK_DIR).iterdir())


def test_an_input_changed_during_compaction_rolls_the_unit_back(clake: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = _results(clake)
    state = _lake_state(clake)
    target: list[Path] = []

    def rewrite_an_input(at: str, unit: str) -> None:
        if at == "staged" and not target:
            work = clake.zones / compact.WORK_DIR / (compact.PREFIX + unit)
            m = json.loads((work / "manifest.json").read_text())
            part = compact.Unit(m["zone"], m["dataset"], m["tenant"], m["day"]).partition(clake)
            victim = part / sorted(m["inputs"])[0]
            table = pq.read_table(victim)
            pq.write_table(table, victim)  # a concurrent rewrite (new inode, same rows)
            target.append(victim)

    monkeypatch.setattr(compact, "_after", rewrite_an_input)
    summary = compact.compact(clake)
    assert summary["conflicts"] == 1 and target and target[0].exists()
    assert _results(clake) == before
    _assert_index_exact(clake)
    names_before = {k for k in state if not k.startswith("index/")}
    for files in _partition_files(clake).values():
        if files[0].parent == target[0].parent:  # rolled back: the inputs as they were
            assert {str(f.relative_to(clake.zones)) for f in files} <= names_before
            assert not any(f.name.startswith("compact-") for f in files)
        else:
            assert all(f.name.startswith("compact-") for f in files)
    monkeypatch.setattr(compact, "_after", lambda at, unit: None)
    assert compact.compact(clake)["partitions"] == 1
    assert _results(clake) == before
    _assert_index_exact(clake)


def test_subject_lookups_prune_row_groups(clake: Settings) -> None:
    compact.compact(clake, target_rows=10_000)
    f = next(iter(sorted((clake.event_zone / "events").rglob("compact-*.parquet"))))
    md = pq.ParquetFile(f).metadata
    col = md.schema.to_arrow_schema().get_field_index("subject_id")
    stats = [md.row_group(i).column(col).statistics for i in range(md.num_row_groups)]
    assert all(s is not None and s.has_min_max for s in stats)
    mins = [s.min for s in stats]
    assert mins == sorted(mins)


def test_a_batch_published_during_compaction_stays_visible(clake: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sql = "SELECT count(*) FROM events"
    before = int(str(query.run(clake, sql)[1][0][0]))
    added: list[tuple[Path, int]] = []

    def publish_a_batch(at: str, unit: str) -> None:
        if at == "staged" and not added:  # an ingest publishes into the partition meanwhile
            work = clake.zones / compact.WORK_DIR / (compact.PREFIX + unit)
            m = json.loads((work / "manifest.json").read_text())
            part = compact.Unit(m["zone"], m["dataset"], m["tenant"], m["day"]).partition(clake)
            source = part / sorted(m["inputs"])[0]
            new = part / ("late-" + source.name)
            shutil.copyfile(source, new)
            added.append((new, pq.read_metadata(new).num_rows))

    monkeypatch.setattr(compact, "_after", publish_a_batch)
    summary = compact.compact(clake)
    assert summary["conflicts"] == 0 and added
    new, rows = added[0]
    assert new.exists()  # moved into the compacted partition, not deleted with the old files
    assert query.run(clake, sql)[1] == [(before + rows if new.is_relative_to(clake.event_zone) else before,)]


def test_a_tenant_with_a_rights_run_in_progress_is_skipped(clake: Settings) -> None:
    """Until writers take leases, compaction leaves a tenant alone while a rights run is under way."""
    from sqlalchemy import update

    from pseudozone.rights import store

    before = _partition_files(clake)
    _submit(clake, "erase", "usr_0000003")
    with store.transaction(clake) as conn:  # the run has planned its work and not closed yet
        conn.execute(update(store.requests).values(state="in_progress"))
    summary = compact.compact(clake, tenants=[TENANT])
    assert summary["tenants_busy"] == 1 and summary["partitions"] == 0
    assert _partition_files(clake) == before
