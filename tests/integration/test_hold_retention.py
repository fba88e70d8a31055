"""Retention under a subject's legal hold keeps that subject's rows, not its partitions' other rows.

Uses the identity-link lake of ``test_identity_links``: the planted subject's events on
2026-11-03, and on 2026-11-04 the logged-out rows of its own cookie (3), of a cookie it
shares with another subject (2 logged out, one logged-in row each), and the other subject's
own cookie (1 logged out, 1 logged in).  Keeping 24 days at 2026-11-29 expires 2026-11-01
to 2026-11-04: two partitions hold nothing a hold on the planted subject keeps, two do.

The rule (ADR 0005): a subject hold keeps the subject's rows and the logged-out rows of
every cookie linked to it (a shared one too), as an erasure under a hold keeps them.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from pseudozone import state, tasks
from pseudozone.compliance import html, nightly, report
from pseudozone.config import Settings
from pseudozone.lake import compact, index
from pseudozone.rights import audit, requests, store
from tests import planted
from tests.integration import test_identity_links
from tests.integration.test_identity_links import (
    COOKIE,
    KR,
    OTHER,
    OTHER_USER,
    OTHERS,
    SHARED,
    SUBJECT,
    T,
    _run,
)

llake = test_identity_links.llake  # the identity-link lake fixture

NOW = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)
KEEP_DAYS = {"events": 24}  # partitions before 2026-11-05 are expired
EXPIRED = ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04")
HELD_DAYS = ("2026-11-03", "2026-11-04")  # the planted subject's rows, its cookies' rows


def _hold_subject(settings: Settings) -> None:
    requests.add_legal_hold(settings, tenant_id=T, user_id=planted.USER, reason="case 2026-41",
                            reason_code="litigation", keyring=KR)


def _retention(settings: Settings) -> dict[str, Any]:
    return nightly.enforce_retention(settings, now=NOW, overrides=KEEP_DAYS)


def _partition(root: Path, day: str) -> Path:
    return root / "events" / f"tenant_id={T}" / f"date={day}"


def _rows(root: Path, day: str) -> pa.Table | None:
    """Every row of one partition of the events dataset, read from its files (no index)."""
    files = sorted(_partition(root, day).glob("*.parquet"))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _held(table: pa.Table) -> pa.Table:
    """The rows the hold must keep: the subject's, and logged-out rows of its cookies."""
    subject = pc.fill_null(pc.equal(table["subject_id"], SUBJECT), False)
    linked = pc.fill_null(pc.is_in(table["anonymous_pid"], value_set=pa.array([COOKIE, SHARED])), False)
    return table.filter(pc.or_(subject, pc.and_(pc.is_null(table["subject_id"]), linked)))


def _as_set(table: pa.Table | None) -> list[str]:
    rows = [] if table is None else table.to_pylist()
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)


def _index_pairs(settings: Settings) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for f in settings.subject_index.rglob("*.parquet"):
        t = pq.read_table(f)
        out |= set(zip(t["subject_id"].to_pylist(), t["path"].to_pylist(), strict=True))
    return out


def _zone_pairs(settings: Settings) -> set[tuple[str, str]]:
    """(subject, file) for every subject of every zone file, read from the files."""
    out: set[tuple[str, str]] = set()
    for root in (settings.event_zone, settings.restricted_zone, settings.pii_zone):
        for f in root.rglob("*.parquet"):
            rel = str(f.relative_to(settings.zones))
            col = pq.read_table(f, columns=["subject_id"])["subject_id"]
            out |= {(s, rel) for s in pc.unique(pc.drop_null(col)).to_pylist()}
    return out


def _event_paths(settings: Settings, subjects: set[str]) -> list[str]:
    """The files of the events dataset that the subject index lists for ``subjects``."""
    return [p for p in index.lookup(settings, T, subjects)["path"].to_pylist()
            if p.startswith(("events/events/", "restricted/events/"))]


def _snapshot(settings: Settings) -> dict[str, bytes]:
    """Name and bytes of every file of the zones and the subject index."""
    return {str(p.relative_to(settings.root)): p.read_bytes()
            for base in (settings.zones, settings.subject_index)
            for p in sorted(base.rglob("*")) if p.is_file()}


def _audited(settings: Settings, action: str) -> list[Any]:
    with store.engine_for(settings).connect() as conn:
        return list(conn.execute(select(store.audit_log).where(store.audit_log.c.action == action)))


def test_a_subject_hold_keeps_only_its_rows_and_its_cookies_logged_out_rows(llake: Settings) -> None:
    _hold_subject(llake)
    before = {day: _rows(llake.event_zone, day) for day in HELD_DAYS}
    expected = {day: _held(t) for day, t in before.items() if t is not None}
    assert expected["2026-11-03"].num_rows >= 10          # the planted events
    assert pc.sum(pc.is_null(expected["2026-11-04"]["subject_id"])).as_py() == 5  # 3 own + 2 shared
    assert _index_pairs(llake) == _zone_pairs(llake)      # exact before
    day3 = before["2026-11-03"]
    assert day3 is not None
    others = (set(pc.drop_null(day3["subject_id"]).to_pylist()) - {SUBJECT}) | {OTHER}
    assert {d for p in _event_paths(llake, others) for d in EXPIRED if d in p} == set(EXPIRED)

    section = _retention(llake)

    for day in HELD_DAYS:
        assert _as_set(_rows(llake.event_zone, day)) == _as_set(expected[day]), day
    other = _rows(llake.event_zone, "2026-11-04")
    assert other is not None
    assert OTHER not in other["subject_id"].to_pylist() and OTHERS not in other["anonymous_pid"].to_pylist()
    # partitions holding nothing the hold keeps go whole, later ones stay
    assert not _partition(llake.event_zone, "2026-11-01").exists()
    assert not _partition(llake.event_zone, "2026-11-02").exists()
    assert _rows(llake.event_zone, "2026-11-05") is not None
    assert [d["date"] for d in section["deleted"]] == ["2026-11-01", "2026-11-02"]
    trims = {t["date"]: t for t in section["trimmed_for_hold"]}
    assert sorted(trims) == list(HELD_DAYS) and section["kept_for_hold"] == []
    for day in HELD_DAYS:
        rows_before = before[day]
        assert rows_before is not None
        assert trims[day]["rows_kept"] == expected[day].num_rows
        assert trims[day]["rows_deleted"] == rows_before.num_rows - expected[day].num_rows
        assert trims[day]["subjects_held"] == 1
    assert trims["2026-11-04"]["cookie_rows_kept"] == 5 and trims["2026-11-03"]["cookie_rows_kept"] == 0
    assert section["partitions_trimmed_for_hold"] == 2
    assert section["rows_deleted_by_trim"] == sum(t["rows_deleted"] for t in trims.values())

    # the subject index is exact: the other subjects' entries of the trimmed files are gone
    assert _index_pairs(llake) == _zone_pairs(llake)
    found = _event_paths(llake, others)
    assert found and not [p for p in found if any(day in p for day in EXPIRED)]
    held_paths = index.lookup(llake, T, {SUBJECT})["path"].to_pylist()
    assert [p for p in held_paths if "date=2026-11-03" in p]
    assert not any((llake.zones / compact.WORK_DIR).iterdir())

    # audited before, with counts only (no pseudonym, no raw id)
    entries = _audited(llake, "retention.trimmed")
    assert len(entries) == 2 and all(e.subject_id is None for e in entries)
    text = " ".join(e.details for e in entries)
    for value in (SUBJECT, OTHER, COOKIE, SHARED, OTHERS, planted.USER, OTHER_USER):
        assert value not in text
    assert ({json.loads(e.details)["rows_deleted"] for e in entries}
            == {t["rows_deleted"] for t in trims.values()})
    assert audit.verify(llake).ok

    # the report's summary line, its page and the task's counts show it
    report.save_section(llake, "held", "retention", section)
    assembled = report.assemble(llake, "held", now=NOW)
    assert (f"retention deleted 2 partition(s), {section['rows_deleted_by_trim']} row(s) of 2 partition(s)"
            " trimmed to held subjects" in assembled["summary"])
    page = html.render(assembled)
    trimmed_table = page.split("Partitions trimmed to the rows a subject's legal hold keeps", 1)[1]
    cell = f'<td class="n">{trims["2026-11-04"]["rows_deleted"]}</td>'
    assert cell in trimmed_table.split("</table>", 1)[0]
    assert tasks._step_counts("retention", section)["trimmed_for_hold"] == 2


def test_a_tenant_wide_hold_keeps_whole_partitions(llake: Settings) -> None:
    _hold_subject(llake)
    requests.add_legal_hold(llake, tenant_id=T, reason="tax audit 2026", reason_code="tax_audit", keyring=KR)
    before = {day: {p.name: p.read_bytes() for p in _partition(llake.event_zone, day).glob("*.parquet")}
              for day in EXPIRED}

    section = _retention(llake)

    after = {day: {p.name: p.read_bytes() for p in _partition(llake.event_zone, day).glob("*.parquet")}
             for day in EXPIRED}
    assert after == before and all(before.values())
    assert section["deleted"] == [] and section["trimmed_for_hold"] == []
    assert sorted(k["date"] for k in section["kept_for_hold"] if k["zone"] == "events") == list(EXPIRED)
    assert {k["reason"] for k in section["kept_for_hold"]} == {"tenant-wide hold"}


def test_a_second_run_changes_nothing(llake: Settings) -> None:
    _hold_subject(llake)
    first = _retention(llake)
    assert first["partitions_trimmed_for_hold"] == 2
    lake = _snapshot(llake)

    second = _retention(llake)

    assert _snapshot(llake) == lake
    assert second["deleted"] == [] and second["trimmed_for_hold"] == []
    assert second["partitions_trimmed_for_hold"] == 0 and second["rows_deleted_by_trim"] == 0
    assert sorted((k["date"], k["reason"]) for k in second["kept_for_hold"]) == [
        (day, "subject hold") for day in HELD_DAYS]
    assert len(_audited(llake, "retention.trimmed")) == 2


@pytest.mark.parametrize("step", ["staged", "exchanged"])
def test_a_run_killed_between_staging_and_publishing_ends_as_an_uninterrupted_one(
        llake: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    _hold_subject(llake)
    # the same lake, run without interruption
    clean = Settings.from_env(tmp_path / "clean")
    shutil.copytree(llake.root, clean.root, symlinks=True)
    if llake.key_dir.exists():
        shutil.copytree(llake.key_dir, clean.key_dir, symlinks=True)
    _retention(clean)
    before = _rows(llake.event_zone, "2026-11-03")
    assert before is not None

    def kill(at: str, unit: str) -> None:
        if at == step:
            raise RuntimeError(f"killed after {at}")

    monkeypatch.setattr(compact, "_after", kill)
    with pytest.raises(RuntimeError, match="killed"):
        _retention(llake)
    if step == "staged":  # nothing published: every row is still there
        assert _as_set(_rows(llake.event_zone, "2026-11-03")) == _as_set(before)
    else:  # published; the old files wait in the work directory for the rerun
        assert _as_set(_rows(llake.event_zone, "2026-11-03")) == _as_set(_held(before))
    assert any((llake.zones / compact.WORK_DIR).iterdir())
    monkeypatch.setattr(compact, "_after", lambda at, unit: None)

    rerun = _retention(llake)

    recovered = {"staged": {"rolled_forward": 0, "rolled_back": 1},
                 "exchanged": {"rolled_forward": 1, "rolled_back": 0}}[step]
    assert rerun["trims_recovered"] == recovered
    assert _snapshot(llake) == _snapshot(clean)
    assert _as_set(_rows(llake.event_zone, "2026-11-03")) == _as_set(_held(before))
    assert _index_pairs(llake) == _zone_pairs(llake)
    assert not any((llake.zones / compact.WORK_DIR).iterdir())


def test_the_restricted_zone_is_trimmed_by_the_same_rule(llake: Settings) -> None:
    _run(llake, "restrict")
    _run(llake, "restrict", user=OTHER_USER)
    _run(llake, "restrict")  # both subjects of the shared cookie restricted: it is frozen too
    _hold_subject(llake)
    before = _rows(llake.restricted_zone, "2026-11-04")
    assert before is not None
    expected = _held(before)
    assert OTHER in before["subject_id"].to_pylist() and OTHERS in before["anonymous_pid"].to_pylist()
    assert pc.sum(pc.is_null(expected["subject_id"])).as_py() == 5

    section = _retention(llake)

    assert _as_set(_rows(llake.restricted_zone, "2026-11-04")) == _as_set(expected)
    trims = [(t["zone"], t["date"]) for t in section["trimmed_for_hold"]]
    assert ("restricted", "2026-11-04") in trims
    # the restricted 2026-11-03 partition holds the subject's rows only: kept as it is
    assert ("restricted", "2026-11-03", "subject hold") in {
        (k["zone"], k["date"], k["reason"]) for k in section["kept_for_hold"]}
    # the event zone no longer holds the subject's rows on those days: deleted whole
    assert not _partition(llake.event_zone, "2026-11-03").exists()
    assert _index_pairs(llake) == _zone_pairs(llake)


def test_a_trim_waits_while_a_writer_is_active(llake: Settings) -> None:
    _hold_subject(llake)
    with state.connect(llake) as conn:
        batch = conn.execute("SELECT batch_id FROM batches WHERE status = 'done' AND tenant_id = ?"
                             " ORDER BY batch_id LIMIT 1", (T,)).fetchone()[0]
        conn.execute("UPDATE batches SET status = 'processing' WHERE batch_id = ?", (batch,))
    rows = {day: _as_set(_rows(llake.event_zone, day)) for day in HELD_DAYS}

    deferred = _retention(llake)

    assert deferred["trimmed_for_hold"] == [] and _audited(llake, "retention.trimmed") == []
    assert {(k["date"], k["reason"]) for k in deferred["kept_for_hold"]} == {
        (day, "subject hold, trim deferred (a writer is active)") for day in HELD_DAYS}
    assert {day: _as_set(_rows(llake.event_zone, day)) for day in HELD_DAYS} == rows
    with state.connect(llake) as conn:
        conn.execute("UPDATE batches SET status = 'done' WHERE batch_id = ?", (batch,))

    assert _retention(llake)["partitions_trimmed_for_hold"] == 2
