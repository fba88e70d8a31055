"""Data Docs of the nightly run: self-contained (nothing from the network), in words, named by data asset."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pytest

from pseudozone import ingest
from pseudozone.compliance import datadocs, nightly, report
from pseudozone.config import Settings
from pseudozone.validation import expectations as gxp
from pseudozone.validation.suites import Validator
from tests import planted

NOW = dt.datetime(2026, 11, 29, 2, 0, tzinfo=dt.UTC)

# what leaves the site: a scheme and '//', or '//' alone
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
TAGS = re.compile(r"<(link|script|img)\b([^>]*)>", re.IGNORECASE)
ATTRS = re.compile(r"""\b(src|href|srcset)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
CSS_URLS = re.compile(r"""url\(\s*["']?([^"')]*)""", re.IGNORECASE)


def external_resources(root: Path) -> list[str]:
    """Every <link>, <script> or <img> target and CSS url() under ``root`` that is not in the site."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".html", ".css"):
            continue
        text = path.read_text(encoding="utf-8")
        for tag in (m.group(0) for m in TAGS.finditer(text)):
            for a in ATTRS.finditer(tag):
                value = a.group(2) or a.group(3) or a.group(4) or ""
                if EXTERNAL.match(value) or "http://" in value or "https://" in value:
                    found.append(f"{path.relative_to(root)}: {tag[:120]}")
        found += [f"{path.relative_to(root)}: url({u})" for u in CSS_URLS.findall(text)
                  if EXTERNAL.match(u) or "http" in u.lower()]
    return found


def _text(page: str) -> str:
    page = re.sub(r"<(style|script)\b.*?</\1>", " ", page, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    return re.sub(r"\(\s+", "(", re.sub(r"\s+([),.;])", r"\1", text))  # GX puts each param in a span


def _broken_links(root: Path) -> list[str]:
    broken = []
    for page in root.rglob("*.html"):
        for a in ATTRS.finditer(page.read_text(encoding="utf-8")):
            value = (a.group(2) or a.group(3) or a.group(4) or "").split("#")[0].split("?")[0]
            local = value and not EXTERNAL.match(value) and not value.startswith(("javascript:", "mailto:"))
            if local and not (page.parent / unquote(value)).exists():
                broken.append(f"{page.relative_to(root)} -> {value}")
    return broken


@pytest.fixture
def published(lake: Settings) -> Settings:
    ingest.ingest_pending(lake)
    return lake


def test_the_nightly_data_docs_load_nothing_from_the_network_and_say_what_was_checked(
        published: Settings) -> None:
    report.run_nightly(published, "nightly-docs", now=NOW)
    docs = report.run_dir(published, "nightly-docs") / "data_docs"
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) > 10

    assert external_resources(docs) == []
    assert _broken_links(docs) == []  # the index, suites, favicon and stylesheet links all resolve

    index = (docs / "index.html").read_text(encoding="utf-8")
    # the index's tables are HTML (GX fills them from a script), each run linking to its page
    validations = sorted(p for p in pages if p.is_relative_to(docs / "validations"))
    assert index.count('<a href="validations/') == len(validations) > 4
    index_text = _text(index)
    assert "events zone, dataset events, tenant acme:" in index_text
    assert ("pii zone, dataset profiles, tenant globex: 1 file(s) in pii/profiles/tenant_id=globex"
            in index_text)
    assert "\u2714 passed" in index_text

    texts = {p: _text(p.read_text(encoding="utf-8")) for p in validations}
    everything = " ".join(texts.values())
    assert "Data asset: None" not in everything and "Data asset:" in everything
    events = [t for t in texts.values() if "Data asset: events zone, dataset events, tenant acme:" in t]
    assert events and all(re.search(r"file\(s\) in events/events/tenant_id=acme/date=2026-\d\d-\d\d", t)
                          for t in events)
    # each custom expectation in words (the column under its own heading), with its verdict
    for sentence in ("No value matches any PII form (email address, phone number, IP address, card number"
                     " or IBAN)",
                     "No text contains a known value of the tenant's subjects",
                     "No value is one of the erased or restricted subjects",
                     "Every value is a pseudonym (v<version>:<64 hex digits>), by the RE2 pattern",
                     "Every value is a network (IPv4 /24 or IPv6 /48)",
                     "Every value is AES-GCM ciphertext",
                     "Every value is one of the subjects with a live data key"):
        assert sentence in everything, sentence
    assert "Status: \u2714 passed Succeeded" in everything
    assert "\u2714 passed No value matches any PII form" in everything
    # GX's fallback for an expectation without a renderer prints its kwargs
    assert "(**{" not in everything and "expect_column_values_to_be_free_of_pii" not in everything
    assert planted.find_needles(" ".join(p.read_text(encoding="utf-8") for p in pages)) == []


def test_every_custom_expectation_is_worded_on_a_real_validation_page(tmp_path: Path) -> None:
    # every custom expectation of the module has words (a new one without them fails here)
    custom = [c for c in vars(gxp).values()
              if isinstance(c, type) and c.__module__ == gxp.__name__ and c.__name__.startswith("Expect")]
    assert len(custom) == 6 and all(issubclass(c, gxp._Worded) for c in custom)

    table = pa.table({
        "subject_id": pa.array(["v1:" + "a" * 64, None, "v1:" + "b" * 64]),
        "anonymous_pid": pa.array(["v1:" + "c" * 64, "v1:" + "d" * 64, None]),
        "note": pa.array(["fine", planted.FREE_TEXT_FORMS["email"], None]),
        "secret": pa.array([b"\x00" * 40, None, b"\x01" * 40]),
    })
    name = "restricted/events/tenant_id=t1/date=2026-11-01/batch-1.parquet"
    validator = Validator()
    with gxp.registered(pa.array(["v1:" + "a" * 64]), ref="test:subjects") as subjects, \
            gxp.registered(pa.array(["v1:" + "d" * 64]), ref="test:cookies") as cookies, \
            gxp.registered(pa.array(["v1:" + "e" * 64]), ref="test:gone") as gone:
        suite = [
            gxp.ExpectColumnValuesToBeFreeOfPii(column="note"),
            gxp.ExpectColumnValuesToBeInRegisteredSet(column="subject_id", set_ref=gone, absent=True,
                                                      set_name="erased subjects"),
            gxp.ExpectRowsToBelongToRegisteredOwners(column_A="subject_id", column_B="anonymous_pid",
                                                     subject_ref=subjects, cookie_ref=cookies,
                                                     subject_set_name="restricted subjects",
                                                     cookie_set_name="cookies frozen with a restriction"),
            gxp.ExpectColumnValuesToBeCiphertext(column="secret"),
            gxp.ExpectColumnValuesToMatchPattern(column="subject_id", pattern=r"^v[0-9]+:[0-9a-f]{64}$")]
        validation = validator.validate([(name, table)], zone="restricted", dataset="events", key="test",
                                        expectations=lambda: suite)
    assert not validation.success  # the email in 'note', the third row's owner
    # the known-value check needs a tenant's values; its words are checked without a run
    known, _ = gxp.ExpectColumnValuesToBeFreeOfKnownValues._sentence(
        {"column": "note", "known_ref": "ref-9"}, True)
    assert known.startswith("No text of column $column contains a known value of the tenant's subjects")

    index = nightly._build_data_docs(validator, tmp_path / "docs")
    docs = index.parent
    assert external_resources(docs) == [] and _broken_links(docs) == []
    [page] = list((docs / "validations").rglob("*.html"))
    text = _text(page.read_text(encoding="utf-8"))
    assert ("Data asset: restricted zone, dataset events, tenant t1: 1 file(s) in"
            " restricted/events/tenant_id=t1/date=2026-11-01") in text
    assert "Status: \u2718 failed Failed" in text
    assert "\u2718 failed No value matches any PII form" in text
    assert ("\u2714 passed No value is one of the erased subjects (a set registered for this run as"
            " test:gone") in text
    assert ("\u2718 failed Every row is of one of the restricted subjects (column subject_id), or is a"
            " logged-out row (no subject_id) of one of the cookies frozen with a restriction (column"
            " anonymous_pid)") in text
    assert "\u2714 passed Every value is AES-GCM ciphertext" in text
    assert "\u2714 passed Every value matches the RE2 pattern ^v[0-9]+:[0-9a-f]{64}$" in text
    assert planted.find_needles(page.read_text(encoding="utf-8")) == []
    # the suite's own page says the same
    suite_text = _text(next((docs / "expectations").rglob("*.html")).read_text(encoding="utf-8"))
    assert "No value matches any PII form" in suite_text, suite_text


def test_offline_pages_drop_every_external_resource_and_keep_their_content() -> None:
    page = ('<html><head><link rel="stylesheet" href="https://example.invalid/a.css">'
            '<link rel="shortcut icon" href="./static/images/favicon.ico"/>'
            "<script src='//example.invalid/x.js'></script><script>$('.x').modal();</script>"
            '<style>.b{background:url("https://example.invalid/i.png") 0 0}'
            "@import url(https://e.invalid/c.css);"
            ".f{src:url('../fonts/f.otf')}</style></head><body>"
            '<img src="https://example.invalid/logo.png" alt="Great Expectations">'
            '<a href="https://example.invalid/news">news</a><a href="validations/r.html">run</a>'
            '<table><tr><td><i class="fas fa-times text-danger"></i></td>'
            "<td>No value matches</td></tr></table>"
            "</body></html>")
    done = datadocs.offline_html(page)
    assert "example.invalid" not in done and "e.invalid" not in done
    assert 'href="./static/images/favicon.ico"' in done and "url('../fonts/f.otf')" in done
    assert '<span class="pz-brand">Great Expectations</span>' in done
    assert '<a href="validations/r.html">run</a>' in done and "<a>news</a>" in done
    assert "\u2718 failed" in html.unescape(done) and "No value matches" in done
    assert "$('.x')" not in done and done.count("<style") == 2 and done.count("<script") == 1
    assert datadocs.offline_html(done) == done  # a second pass changes nothing
    assert datadocs.offline_css("a{background:url(http://e.invalid/x)} b{src:url(x.otf)}") == (
        "a{background:none} b{src:url(x.otf)}")
