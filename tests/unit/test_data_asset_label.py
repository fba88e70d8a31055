"""Data Docs' data-asset label of a validation run, for zone files and for export archives.

The nightly run validates export archives (``exports/<tenant>/<request id>.zip.enc``), which
are no zone file paths; labelling them must not fail the run (the integration tier's nightly
run after a completed export failed on it with LayoutError).
"""

from __future__ import annotations

from pseudozone.validation.suites import data_asset_label


def test_zone_files_are_labelled_by_tenant_and_partitions() -> None:
    names = ["events/events/tenant_id=acme/date=2026-11-01/b1.parquet",
             "events/events/tenant_id=acme/date=2026-11-03/b2.parquet"]
    assert data_asset_label("events", "events", names) == (
        "events zone, dataset events, tenant acme: 2 file(s) in "
        "events/events/tenant_id=acme/date=2026-11-01 to date=2026-11-03")


def test_export_archives_are_labelled_by_tenant() -> None:
    names = ["exports/acme/f4bd73a0-0072-46e5-811e-414e2e5d05b6.zip.enc"]
    assert data_asset_label("exports", "*", names) == (
        "exports zone, dataset every dataset, tenant acme: 1 file(s) in exports/acme")


def test_files_outside_the_zones_are_labelled_by_their_directory() -> None:
    assert data_asset_label("events", "events", ["part.parquet"]) == (
        "events zone, dataset events: 1 file(s) in .")
