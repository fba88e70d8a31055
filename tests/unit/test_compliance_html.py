from __future__ import annotations

import re
from typing import Any

from pseudozone.compliance.html import render

HOSTILE = "<script>alert(1)</script>"
SUBJECT = "v1:" + "ab" * 32
SECTION_HEADINGS = ["Problems", "Validation", "Validation results over time", "Rights requests",
                    "Requests by state", "Open requests by age", "Erasure re-verification", "Audit log",
                    "Retention", "Re-identification risk (k-anonymity)"]


def _history() -> list[dict[str, Any]]:
    runs = [{"generated_at": f"2026-10-{day:02d}T02:00:00+00:00", "status": "pass", "files": 10 + day % 3,
             "failed_files": 0, "rows": 1000 * day} for day in range(1, 32)]
    runs.append({"generated_at": "2026-11-29T02:00:00+00:00", "status": "fail", "files": 12,
                 "failed_files": 2, "rows": 48_000})
    return runs


def _report(**overrides: Any) -> dict[str, Any]:
    request = {"tenant_id": "acme", "type": "erasure", "state": "received",
               "received_at": "2026-10-20T09:00:00+00:00"}
    report: dict[str, Any] = {
        "generated_at": "2026-11-29T02:00:00+00:00",
        "run_id": "scheduled__2026-11-29T02:00:00+00:00",
        "status": "fail",
        "summary": "FAIL: 2 zone file(s) failed validation, 1 erasure incomplete, 1 request overdue",
        "problems": ["2 zone file(s) failed validation", "1 erasure incomplete", "1 request overdue"],
        "validation": {
            "success": False, "files": 12, "rows": 48_000, "seconds": 3.25,
            "data_docs": "data_docs/local_site/index.html",
            "zones": [
                {"zone": "events", "dataset": "clicks", "tenant_id": "acme", "files": 8, "rows": 40_000,
                 "success": False,
                 "failures": [{"file": "events/clicks/tenant_id=acme/date=2026-11-28/part-0.parquet",
                               "expectation": "expect_column_values_to_not_contain_pii",
                               "column": "user_agent", "kind": "email", "unexpected_count": 14,
                               "rows": list(range(3, 60, 4))}]},
                {"zone": "pii", "dataset": "subjects", "tenant_id": "globex", "files": 4, "rows": 8_000,
                 "success": True, "failures": []}]},
        "erasures": {"checked": 7, "incomplete": [
            {"request_id": "req-erase-0042", "tenant_id": "acme", "subject": SUBJECT,
             "problems": ["3 row(s) still in events/clicks"]}]},
        "requests": {
            "open": 4, "by_state": {"received": 3, "in_progress": 1, "completed": 10},
            "by_age": [{"bucket": "0-7 days", "count": 2}, {"bucket": "8-21 days", "count": 1},
                       {"bucket": "22-30 days", "count": 0}, {"bucket": "over 30 days", "count": 1}],
            "overdue": [{**request, "request_id": "req-overdue-0017", "due_at": "2026-11-19T09:00:00+00:00",
                         "days": 10}],
            "due_soon": [{**request, "request_id": "req-soon-0023", "due_at": "2026-12-02T09:00:00+00:00",
                          "days": 3}]},
        "audit": {"ok": True, "entries": 321, "problem": None},
        "retention": {"policies": {"events": 400, "server_logs": 90},
                      "deleted": [{"dataset": "server_logs", "tenant_id": "acme", "date": "2026-08-30",
                                   "files": 2, "rows": 5_000}]},
        "k_anonymity": {"k": 5, "results": [
            {"tenant_id": "acme", "dataset": "clicks", "quasi_identifiers": ["country", "birth_year"],
             "rows": 40_000, "groups": 310, "min_group_size": 12, "flagged": False},
            {"tenant_id": "tinyco", "dataset": "signups",
             "quasi_identifiers": ["postcode_prefix", "birth_year"],
             "rows": 90, "groups": 40, "min_group_size": 1, "flagged": True}]},
        "history": _history(),
    }
    report.update(overrides)
    return report


def _row_containing(page: str, text: str) -> str:
    match = re.search(r"<tr[^>]*>(?:(?!</tr>).)*" + re.escape(text) + r".*?</tr>", page, re.S)
    assert match, f"no table row contains {text!r}"
    return match.group(0)


def test_page_is_a_full_document_with_every_section_and_three_charts() -> None:
    page = render(_report())
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    for heading in SECTION_HEADINGS:
        assert re.search(rf"<h[23][^>]*>{re.escape(heading)}</h[23]>", page), heading
    positions = [page.index(f">{h}</h2>") for h in
                 ["Problems", "Validation", "Rights requests", "Erasure re-verification", "Audit log",
                  "Retention", "Re-identification risk (k-anonymity)"]]
    assert positions == sorted(positions)
    assert page.count("<svg") == 3


def test_charts_are_labelled_for_screen_readers_and_without_colour() -> None:
    page = render(_report())
    svgs = re.findall(r"<svg[^>]*>.*?</svg>", page, re.S)
    assert len(svgs) == 3
    for svg in svgs:
        assert 'role="img"' in svg
        assert 'aria-label="' in svg
        assert "<title>" in svg
    history, by_state, by_age = svgs
    assert history.count("<rect") == 30 + 1  # the 30 latest runs, plus the failed part of the last one
    assert ">2026-11-29<" in history and ">2026-10-02<" not in history and ">2026-10-03<" in history
    assert ">2 fail<" in history
    assert ">completed<" in by_state and ">10<" in by_state
    assert ">over 30 days<" in by_age


def test_fail_status_shows_a_red_fail_badge_and_pass_a_green_one() -> None:
    assert 'class="badge fail">FAIL<' in render(_report())
    passed = render(_report(status="pass", summary="PASS"))
    assert 'class="badge pass">PASS<' in passed
    assert "badge fail" not in passed


def test_overdue_request_and_flagged_tenant_are_highlighted() -> None:
    page = render(_report())
    overdue = _row_containing(page, "req-overdue-0017")
    assert overdue.startswith('<tr class="bad">')
    assert _row_containing(page, "req-soon-0023").startswith('<tr class="warn">')
    assert _row_containing(page, "tinyco").startswith('<tr class="bad">')
    assert not _row_containing(page, "birth_year</td><td class=\"n\">40,000").startswith('<tr class="bad">')


def test_validation_failures_list_counts_and_first_row_positions_and_link_data_docs() -> None:
    page = render(_report())
    failure = _row_containing(page, "expect_column_values_to_not_contain_pii")
    assert ">user_agent<" in failure and ">email<" in failure and ">14<" in failure
    assert "3, 7, 11, 15, 19, 23, 27, 31, 35, 39 …" in failure
    assert '<a href="data_docs/local_site/index.html">' in page


def test_hostile_strings_from_the_report_appear_only_escaped() -> None:
    report = _report(problems=[f"tenant {HOSTILE} failed"], run_id='"><img src=x onerror=alert(1)>')
    report["validation"]["zones"][0]["tenant_id"] = HOSTILE
    report["requests"]["by_state"][HOSTILE] = 2
    report["k_anonymity"]["results"][1]["tenant_id"] = HOSTILE
    page = render(report)
    assert "<script" not in page.lower()
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "tenant &lt;script&gt;alert(1)&lt;/script&gt; failed" in page


def test_data_docs_path_that_is_not_relative_is_not_linked() -> None:
    report = _report()
    report["validation"]["data_docs"] = "javascript:alert(1)"
    page = render(report)
    assert "<a href" not in page
    assert "javascript:alert(1)" in page  # shown as text, for the reader to follow up


def test_minimal_report_renders_and_names_missing_sections() -> None:
    page = render({"status": "pass", "summary": "PASS", "generated_at": "2026-11-29T02:00:00+00:00",
                   "run_id": "r"})
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="badge pass">PASS<' in page
    assert ">Problems</h2>" not in page
    assert "<svg" not in page
    assert page.count("Not reported in this run.") == 5
    assert "Not checked in this run." in page


def test_empty_lists_and_wrong_types_do_not_crash() -> None:
    page = render(_report(problems=[], history=[], requests={"open": 0, "by_state": {}, "by_age": [],
                                                              "overdue": [], "due_soon": []},
                          erasures={"checked": "7", "incomplete": "oops"},
                          validation={"success": None, "files": None, "seconds": "slow", "zones": [None]},
                          k_anonymity={"k": 5,
                                       "results": [{"min_group_size": None, "quasi_identifiers": 3}]}))
    assert ">Problems</h2>" not in page
    assert "No request is overdue." in page
    assert "<svg" not in page


def test_page_is_self_contained() -> None:
    page = render(_report())
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "<img" not in page
    assert "<style>" in page
