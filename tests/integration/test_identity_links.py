"""Identity links (ADR 0008): a subject's logged-out rows, found through the cookies seen with it.

The planted subject uses the cookie ``anon-planted-1`` while logged in (tests/planted.py);
the extra batch below adds logged-out rows of that cookie, a cookie shared with another
subject (with logged-out rows too), and another subject's own cookie.
"""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pseudozone import ingest, state
from pseudozone.compliance import nightly
from pseudozone.config import Settings
from pseudozone.keys import KeyRing
from pseudozone.lake import index
from pseudozone.rights import export, process, requests
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)
T = planted.TENANT
SUBJECT = KR.subject_id(T, planted.USER)
OTHER_USER = "usr_linked_0002"
OTHER = KR.subject_id(T, OTHER_USER)
COOKIE_RAW, SHARED_RAW, OTHERS_RAW = "anon-planted-1", "anon-shared-1", "anon-other-2"
COOKIE, SHARED, OTHERS = KR.pseudonymize(T, "anonymous_id", [COOKIE_RAW, SHARED_RAW, OTHERS_RAW])
TS = datetime(2026, 11, 4, 10, 0, tzinfo=UTC)


def _events(rows: list[tuple[str | None, str]], tag: str) -> pa.Table:
    n = len(rows)
    return pa.table({
        "tenant_id": [T] * n, "user_id": pa.array([u for u, _ in rows], pa.string()),
        "anonymous_id": [c for _, c in rows], "event_id": [f"evt_{tag}_{i}" for i in range(n)],
        "event_name": ["page_view"] * n, "event_ts": pa.array([TS] * n, pa.timestamp("us", tz="UTC")),
        "session_id": [f"s_{tag}"] * n, "ip": ["203.0.113.5"] * n, "user_agent": ["Mozilla/5.0"] * n,
        "page_url": ["https://shop.example.com/home"] * n, "properties_json": ["{}"] * n,
    })


LINKED_ROWS: list[tuple[str | None, str]] = [
    (None, COOKIE_RAW), (None, COOKIE_RAW), (None, COOKIE_RAW),           # the subject, logged out
    (OTHER_USER, SHARED_RAW), (planted.USER, SHARED_RAW),                 # one cookie, two subjects
    (None, SHARED_RAW), (None, SHARED_RAW),                               # ...and its logged-out rows
    (OTHER_USER, OTHERS_RAW), (None, OTHERS_RAW),                         # another subject's own cookie
]


def _land(settings: Settings, table: pa.Table, name: str) -> None:
    target = settings.landing / "events" / f"tenant={T}" / f"{name}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target)


@pytest.fixture
def llake(settings: Settings, master_key_env: None) -> Settings:
    from pseudozone.sample import generate

    generate(settings, events=600, tenants=1, seed=11, batch_rows=600)
    planted.plant(settings.landing)
    _land(settings, _events(LINKED_ROWS, "linked"), "linked-0001")
    results = ingest.ingest_pending(settings)
    assert all(r.status == "done" for r in results)
    return settings


def _logged_out(settings: Settings, cookie: str, zones: tuple[Path, ...] | None = None) -> int:
    """Rows without a subject and with this cookie, by reading every file of the zones (no index)."""
    n = 0
    for root in zones or (settings.event_zone, settings.restricted_zone):
        for f in root.rglob("*.parquet"):
            if "anonymous_pid" not in pq.read_schema(f).names:
                continue
            t = pq.read_table(f, columns=["subject_id", "anonymous_pid"])
            same = pc.fill_null(pc.equal(t["anonymous_pid"], cookie), False)
            hit = pc.and_(pc.is_null(t["subject_id"]), same)
            n += int(pc.sum(hit).as_py() or 0)
    return n


def _rows_of(settings: Settings, subject: str, roots: tuple[Path, ...] | None = None) -> int:
    n = 0
    for f in (f for root in roots or (settings.zones,) for f in root.rglob("*.parquet")):
        col = pq.read_table(f, columns=["subject_id"])["subject_id"]
        n += int(pc.sum(pc.fill_null(pc.equal(col, subject), False)).as_py() or 0)
    return n


def _run(settings: Settings, kind: str, user: str = planted.USER) -> requests.RequestStatus:
    status = requests.submit(settings, {"type": kind, "tenant_id": T, "user_id": user}, source="test",
                             keyring=KR)
    process.process_all(settings, f"run-{kind}-{status.request_id[:8]}", keyring=KR)
    return requests.get_status(settings, status.request_id)


def test_ingest_records_links_as_keyed_pseudonyms_only(llake: Settings) -> None:
    with state.connect(llake) as conn:
        rows = conn.execute("SELECT tenant_id, subject_id, anonymous_pid, first_seen, last_seen"
                            " FROM identity_links WHERE tenant_id = ?", (T,)).fetchall()
    pairs = {(s, c) for _, s, c, _, _ in rows}
    assert {(SUBJECT, COOKIE), (SUBJECT, SHARED), (OTHER, SHARED), (OTHER, OTHERS)} <= pairs
    assert all(s.startswith("v1:") and c.startswith("v1:") for _, s, c, _, _ in rows)
    assert len(pairs) == len(rows)  # distinct pairs
    first, last = {(s, c): (f, la) for _, s, c, f, la in rows}[(SUBJECT, COOKIE)]
    assert first == "2026-11-03" and last == "2026-11-03"  # the planted rows; logged-out rows make no link
    raw = sqlite3.connect(llake.state_db).iterdump()
    dump = "\n".join(raw)
    for value in (planted.USER, OTHER_USER, COOKIE_RAW, SHARED_RAW, OTHERS_RAW):
        assert value not in dump


def test_erase_removes_the_linked_cookies_logged_out_rows_from_every_zone(llake: Settings) -> None:
    assert _logged_out(llake, COOKIE) == 3
    shared_before, others_before = _logged_out(llake, SHARED), _logged_out(llake, OTHERS)

    done = _run(llake, "erase")

    assert done.state == "completed" and done.outcome is not None
    assert done.outcome["verified_clean"] and done.outcome["linked_cookies_erased"] == 1
    assert done.outcome["rows_removed"]["events_cookie_rows_erased"] == 3
    # independent scans of the event and restricted zones, every file, no index
    assert _logged_out(llake, COOKIE) == 0
    assert _rows_of(llake, SUBJECT) == 0
    # the other subject's own cookie is untouched
    assert _logged_out(llake, OTHERS) == others_before == 1
    assert _logged_out(llake, SHARED) == shared_before == 2


def test_a_cookie_shared_by_two_subjects_is_reported_and_kept(llake: Settings) -> None:
    done = _run(llake, "erase")

    assert done.outcome is not None and done.outcome["shared_cookies_kept"] == 1
    assert _logged_out(llake, SHARED) == 2            # one subject's request alone does not erase it
    verified = nightly.verify_erasures(llake, {})
    assert verified["incomplete"] == [] and verified["shared_cookies_kept"] == 1
    # the other subject keeps its logged-in row of the shared cookie
    assert _rows_of(llake, OTHER) == 2


def test_a_later_ingest_drops_the_erased_subjects_cookie_rows(llake: Settings) -> None:
    _run(llake, "erase")
    later = [(None, COOKIE_RAW), (None, COOKIE_RAW), (None, SHARED_RAW), (OTHER_USER, OTHERS_RAW)]
    _land(llake, _events(later, "later"), "linked-0002")

    (result,) = ingest.ingest_pending(llake)

    assert result.status == "done" and result.rows_dropped_erased == 2 and result.rows_event == 2
    assert _logged_out(llake, COOKIE) == 0
    assert _logged_out(llake, SHARED) == 3            # shared: kept


def test_nightly_erasure_check_finds_cookie_rows_left_behind(llake: Settings) -> None:
    hits = index.lookup_cookies(llake, T, {COOKIE})
    saved = {rel: (llake.zones / rel).read_bytes() for rel in set(hits["path"].to_pylist())}
    assert saved
    _run(llake, "erase")
    assert nightly.verify_erasures(llake, {})["incomplete"] == []

    for rel, blob in saved.items():  # a stale copy comes back (a restored backup, a bad rewrite)
        (llake.zones / rel).write_bytes(blob)

    (incomplete,) = nightly.verify_erasures(llake, {})["incomplete"]
    assert any("linked cookies" in p for p in incomplete["problems"])


def test_export_includes_the_linked_cookies_rows(llake: Settings) -> None:
    done = _run(llake, "export")

    assert done.outcome is not None
    with zipfile.ZipFile(io.BytesIO(export.open_archive(llake, done.request_id, keyring=KR))) as zf:
        events = json.loads(zf.read("events.json"))
    linked = [r for r in events if r["linked_cookie"]]
    # the subject's own cookie's 3 logged-out rows; a shared cookie's logged-out rows may be
    # another person's: not exported.  Records name the user, never a pseudonym (ADR 0010)
    assert len(linked) == 3
    assert all(r["user_id"] == planted.USER and "anonymous_pid" not in r and "subject_id" not in r
               for r in events)
    logged_in = _rows_of(llake, SUBJECT, (llake.event_zone / "events", llake.restricted_zone / "events"))
    assert len(events) == logged_in + 3
