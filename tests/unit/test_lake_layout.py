from __future__ import annotations

import datetime as dt
from pathlib import Path, PurePosixPath

import pytest

from pseudozone import zones
from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError
from pseudozone.lake import layout
from pseudozone.lake.layout import LayoutError, ZoneFile


@pytest.mark.parametrize("zone_file, rel", [
    (layout.event_file("events", "events", "acme", "2026-11-03", "events.acme.b-0001"),
     "events/events/tenant_id=acme/date=2026-11-03/events.acme.b-0001.parquet"),
    (layout.event_file("events", "server_logs", "acme", "2026-11-03", "server_logs.acme.x", bucket=3),
     "events/server_logs/tenant_id=acme/date=2026-11-03/server_logs.acme.x.b03.parquet"),
    (layout.event_file("restricted", "events", "t.1", "2026-01-31", "events.t.1.x", bucket=0),
     "restricted/events/tenant_id=t.1/date=2026-01-31/events.t.1.x.b00.parquet"),
    (layout.pii_file("profiles", "acme", "profiles.acme.p-0001"),
     "pii/profiles/tenant_id=acme/profiles.acme.p-0001.parquet"),
])
def test_zone_files_build_the_documented_paths_and_parse_back(zone_file: ZoneFile, rel: str) -> None:
    assert zone_file.rel == rel
    assert layout.parse(rel) == zone_file
    assert layout.parse(PurePosixPath(rel)) == zone_file
    root = Path("/data/zones")
    assert zone_file.path(root) == root / rel
    assert layout.parse(zone_file.path(root), root) == zone_file
    assert layout.zone_of(rel) == zone_file.zone


def test_a_bucket_suffix_is_split_from_the_batch_only_in_partitioned_zones() -> None:
    parsed = layout.parse("events/events/tenant_id=acme/date=2026-11-03/events.acme.x.b12.parquet")
    assert (parsed.batch, parsed.bucket, parsed.date) == ("events.acme.x", 12, "2026-11-03")
    pii = layout.parse("pii/profiles/tenant_id=acme/profiles.acme.x.b12.parquet")
    assert (pii.batch, pii.bucket, pii.date) == ("profiles.acme.x.b12", None, None)


def test_mirror_pair_names_the_same_file_in_both_event_like_zones() -> None:
    rel = "restricted/events/tenant_id=acme/date=2026-11-03/events.acme.x.b01.parquet"
    assert layout.mirror_pair(rel) == (
        "events/events/tenant_id=acme/date=2026-11-03/events.acme.x.b01.parquet", rel)
    with pytest.raises(LayoutError, match="not an event or restricted zone file"):
        layout.mirror_pair("pii/profiles/tenant_id=acme/p.parquet")


@pytest.mark.parametrize("bad, why", [
    ("", "first part"),
    ("landing/events/tenant=acme/x.csv", "first part"),
    ("events/events/tenant_id=acme/x.parquet", "expected events/<dataset>/tenant_id=<tenant>/date=<date>"),
    ("events/events/tenant=acme/date=2026-11-03/x.parquet", "tenant_id=<tenant> directory"),
    ("events/events/tenant_id=/date=2026-11-03/x.parquet", "tenant_id=<tenant> directory"),
    ("events/events/tenant_id=acme/day=2026-11-03/x.parquet", "date=<date> directory"),
    ("events/events/tenant_id=acme/date=yesterday/x.parquet", "not an ISO date"),
    ("events/events/tenant_id=acme/date=2026-11-03/x.csv", "<batch>.parquet file"),
    ("events/events/tenant_id=acme/date=2026-11-03/.x.parquet", "<batch>.parquet file"),
    ("pii/profiles/tenant_id=acme/date=2026-11-03/x.parquet", "expected pii/<dataset>/tenant_id=<tenant>"),
])
def test_a_path_that_is_no_zone_file_is_a_clear_error_naming_it(bad: str, why: str) -> None:
    with pytest.raises(LayoutError) as info:
        layout.parse(bad)
    assert isinstance(info.value, PseudozoneError)
    assert "not a zone file path" in str(info.value) and why in str(info.value)
    assert bad in str(info.value)


def test_a_path_outside_the_given_root_is_refused() -> None:
    with pytest.raises(LayoutError, match="not under the zones root"):
        layout.parse(Path("/elsewhere/events/events/tenant_id=a/date=2026-11-03/x.parquet"),
                     Path("/data/zones"))


def test_zone_files_refuse_impossible_fields() -> None:
    with pytest.raises(LayoutError, match="unknown zone"):
        ZoneFile("exports", "events", "acme", "b")
    with pytest.raises(LayoutError, match="needs a date partition"):
        ZoneFile("events", "events", "acme", "b")
    with pytest.raises(LayoutError, match="no date partition"):
        ZoneFile("pii", "profiles", "acme", "b", date="2026-11-03")
    with pytest.raises(LayoutError, match="invalid tenant"):
        layout.event_file("events", "events", "a/b", "2026-11-03", "b")
    with pytest.raises(LayoutError, match="between 0 and 99"):
        layout.event_file("events", "events", "acme", "2026-11-03", "b", bucket=100)
    with pytest.raises(LayoutError, match="no date partition"):
        layout.event_file("pii", "profiles", "acme", "2026-11-03", "b")


def test_directories_iterate_tenants_and_date_partitions(tmp_path: Path) -> None:
    settings = Settings(root=tmp_path)
    for zone_file in (layout.event_file("events", "events", "acme", "2026-11-03", "x"),
                      layout.event_file("events", "events", "acme", "2026-11-01", "x"),
                      layout.event_file("events", "server_logs", "globex", "2026-11-02", "y")):
        path = zone_file.path(settings.zones)
        path.parent.mkdir(parents=True)
        path.touch()
    (settings.event_zone / "events" / "tenant_id=acme" / "date=garbage").mkdir()
    (settings.event_zone / ".staging").mkdir()
    dirs = list(layout.tenant_dirs(layout.zone_root(settings, "events")))
    assert [(d, t) for d, t, _ in dirs] == [("events", "acme"), ("server_logs", "globex")]
    assert dirs[0][2] == layout.partition_dir(settings.event_zone, "events", "acme")
    parts = list(layout.date_partitions(dirs[0][2]))
    assert [(p.day, p.date) for p in parts] == [("2026-11-01", dt.date(2026, 11, 1)),
                                                ("2026-11-03", dt.date(2026, 11, 3))]
    assert parts[1].path == layout.partition_dir(settings.event_zone, "events", "acme", "2026-11-03")
    assert list(layout.tenant_dirs(tmp_path / "missing")) == []
    leaf = layout.event_file("events", "events", "acme", "2026-11-03", "x").path(settings.zones)
    assert layout.tenant_of(leaf, settings.event_zone) == "acme"
    with pytest.raises(LayoutError, match="not under a tenant_id=<tenant> directory"):
        layout.tenant_of(settings.event_zone / "events" / "stray.parquet", settings.event_zone)


def test_state_quarantine_and_export_paths(tmp_path: Path) -> None:
    s = Settings(root=tmp_path)
    index = layout.index_file(s, "events", "acme", "events.acme.x")
    assert index == tmp_path / "state/subject_index/events/tenant_id=acme/events.acme.x.parquet"
    index.parent.mkdir(parents=True)
    index.touch()
    assert list(layout.index_files(s, "acme")) == [("events", "events.acme.x", index)]
    assert list(layout.index_files(s, "globex")) == []
    assert layout.quarantine_dir(s, "events", "acme") == tmp_path / "zones/quarantine/events/tenant_id=acme"
    assert layout.rights_quarantine_file(s, "acme", "g1") == \
        tmp_path / "zones/quarantine/rights/tenant_id=acme/g1.reason.json"
    assert layout.request_quarantine_file(s, "r1") == tmp_path / "zones/quarantine/requests/r1.json"
    archive = layout.export_file(s, "acme", "r2")
    assert archive == tmp_path / "zones/exports/acme/r2.zip.enc"
    legacy = layout.legacy_export_file(s, "acme", "r1")
    assert legacy == tmp_path / "zones/exports/acme/r1.zip"
    archive.parent.mkdir(parents=True)
    for path in (archive, legacy, zones.temp_path(archive), archive.with_name(".zip.enc")):
        path.touch()
    assert list(layout.export_archives(s)) == [("acme", "r2", archive)]
    assert list(layout.export_archives(s, legacy=True)) == [("acme", "r1", legacy), ("acme", "r2", archive)]
