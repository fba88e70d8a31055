"""Restriction covers a subject's logged-out rows too (ADR 0008): the cookies frozen with it.

Uses the identity-link lake of ``test_identity_links``: the planted subject's own cookie
(3 logged-out rows), a cookie shared with another subject (2 logged-out rows), and the
other subject's own cookie (1 logged-out row).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select

from pseudozone import ingest, query
from pseudozone.compliance import nightly
from pseudozone.config import Settings
from pseudozone.lake.subjects import SubjectSets
from pseudozone.rights import store
from pseudozone.validation import gate
from tests.integration import test_identity_links
from tests.integration.test_identity_links import (
    COOKIE,
    COOKIE_RAW,
    OTHER_USER,
    OTHERS,
    OTHERS_RAW,
    SHARED,
    SHARED_RAW,
    SUBJECT,
    T,
    _events,
    _land,
    _logged_out,
    _run,
)

llake = test_identity_links.llake  # the identity-link lake fixture


def _frozen(settings: Settings) -> set[str]:
    with store.engine_for(settings).connect() as conn:
        return {str(r[0]) for r in conn.execute(select(store.restricted_cookies.c.anonymous_pid))}


def _failed_sections(settings: Settings) -> list[dict[str, object]]:
    return [s for s in nightly.validate_zones(settings)["zones"] if not s["success"]]


def test_restrict_moves_the_subjects_cookie_rows_and_unrestrict_brings_them_back(llake: Settings) -> None:
    events_zone, restricted_zone = (llake.event_zone,), (llake.restricted_zone,)
    assert _logged_out(llake, COOKIE, events_zone) == 3

    done = _run(llake, "restrict")

    assert done.state == "completed" and done.outcome is not None
    assert _frozen(llake) == {COOKIE}  # the shared cookie stays free: its other subject is not restricted
    assert _logged_out(llake, COOKIE, events_zone) == 0
    assert _logged_out(llake, COOKIE, restricted_zone) == 3
    assert _logged_out(llake, SHARED, events_zone) == 2 and _logged_out(llake, OTHERS, events_zone) == 1
    # analysts do not see them
    _, rows = query.run(llake, f"SELECT count(*) FROM events WHERE anonymous_pid = '{COOKIE}'")
    assert rows == [(0,)]
    # the nightly run's checks agree: no row of a restricted cookie in the event zone, and the
    # restricted zone's logged-out rows are a restricted cookie's
    assert _failed_sections(llake) == []

    # a later batch's logged-out rows of that cookie go to the restricted zone at once
    _land(llake, _events([(None, COOKIE_RAW), (None, SHARED_RAW), (OTHER_USER, OTHERS_RAW)], "later"),
          "linked-0002")
    (result,) = ingest.ingest_pending(llake)
    assert result.status == "done" and result.rows_restricted == 1 and result.rows_event == 2
    assert _logged_out(llake, COOKIE, events_zone) == 0 and _logged_out(llake, COOKIE, restricted_zone) == 4

    lifted = _run(llake, "unrestrict")

    assert lifted.state == "completed"
    assert _frozen(llake) == set()
    assert _logged_out(llake, COOKIE, events_zone) == 4 and _logged_out(llake, COOKIE, restricted_zone) == 0
    assert _failed_sections(llake) == []


def test_the_gates_refuse_a_restricted_cookies_row_in_the_event_zone(llake: Settings) -> None:
    from pseudozone import contracts

    _run(llake, "restrict")
    sets = SubjectSets.load(llake, T)
    assert sets.restricted_cookies() == {COOKIE}
    events = contracts.load("events")
    restricted_files = sorted((llake.restricted_zone / "events").rglob("*.b00.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in restricted_files])
    logged_out = table.filter(pc.is_null(table["subject_id"]))
    assert logged_out.num_rows == 3
    forbidden = pa.array(sorted(sets.forbidden_cookies("events")), pa.string())
    # in the event zone: refused
    try:
        gate.check(events, events=[("e.parquet", logged_out)], forbidden=pa.array([SUBJECT]),
                   forbidden_cookies=forbidden)
    except gate.ValidationFailed as exc:
        assert {f.column for r in exc.reports for f in r.failures} == {"anonymous_pid"}
    else:
        raise AssertionError("the event-zone gate let a restricted cookie's rows through")
    # in the restricted zone: admitted only as a restricted cookie's
    assert gate.check(events, restricted=[("r.parquet", logged_out)], restricted_subjects=pa.array([SUBJECT]),
                      restricted_cookies=pa.array([COOKIE]))
    try:
        gate.check(events, restricted=[("r.parquet", logged_out)], restricted_subjects=pa.array([SUBJECT]),
                   restricted_cookies=pa.array([OTHERS]))
    except gate.ValidationFailed as exc:
        [failure] = [f for r in exc.reports for f in r.failures]
        assert failure.expectation == "expect_rows_to_belong_to_registered_owners"
        assert failure.unexpected_count == 3
    else:
        raise AssertionError("the restricted-zone gate admitted logged-out rows of a free cookie")


def test_a_cookie_seen_with_a_free_subject_is_not_frozen(llake: Settings) -> None:
    _run(llake, "restrict")
    assert SHARED not in _frozen(llake)
    _run(llake, "restrict", user=OTHER_USER)
    # now both subjects of the shared cookie are restricted: a new restrict freezes it too
    _run(llake, "restrict")
    assert _frozen(llake) == {COOKIE, SHARED, OTHERS}
    assert _logged_out(llake, SHARED, (llake.event_zone,)) == 0
    assert _logged_out(llake, SHARED, (llake.restricted_zone,)) == 2
