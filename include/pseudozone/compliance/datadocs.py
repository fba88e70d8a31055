"""Great Expectations Data Docs that open anywhere: nothing in them is loaded from the network.

GX 1.x writes each page with about 21 stylesheets and scripts from public CDNs (Bootstrap,
bootstrap-table, jQuery, Font Awesome, Vega) and its logo from the web; in an air-gapped
network such a page is bare links, and its index is empty (the index's tables are filled
by bootstrap-table from data in a script).  ``build`` makes the site self-contained:

- the index's tables are written as plain HTML tables (``StaticIndexPageView``), each row
  linking to its validation page, newest first;
- every page then loses its external stylesheets and scripts, GX's own inline scripts
  (they need jQuery), external images (the logo, by its alt text) and external link
  targets, and gets one small stylesheet and script of ours, inline: the pages are
  server-rendered, so the tables read as they are; the script only opens "Show more
  info..." and filters failed expectations;
- status icons (Font Awesome) become text (✔ passed, ✘ failed); GX's newsletter footer goes;
- every ``url()`` in a stylesheet or page that is not relative is dropped;
- links into the site's ``static/`` folder are made relative to the page (GX 1.24 puts a
  validation page's favicon one level too high).

Nothing here reads data: the pages hold what the validation results hold (expectations,
columns, counts, row positions; ``SAFE_RESULT_FORMAT`` keeps values out).
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Any

from great_expectations.render.view import DefaultJinjaIndexPageView
from jinja2 import pass_context

SITE = "pseudozone"
_MARK = "pseudozone-offline"

# a reference that leaves the site: a scheme and '//' ("https://", "http://", "ftp://") or '//' alone
_EXTERNAL = r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//"
_EXTERNAL_ATTR = re.compile(r"""\s(?:src|href|srcset|action|poster|background|data)\s*=\s*"""
                            rf"""(?:"\s*{_EXTERNAL}[^"]*"|'\s*{_EXTERNAL}[^']*'|{_EXTERNAL}[^\s>]*)""",
                            re.IGNORECASE)
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)
_LINK = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_ALT = re.compile(r"""\salt\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_CSS_URL = re.compile(rf"""url\(\s*(?:"\s*{_EXTERNAL}[^"]*"|'\s*{_EXTERNAL}[^']*'|{_EXTERNAL}[^)]*)\s*\)""",
                      re.IGNORECASE)
_CSS_IMPORT = re.compile(rf"""@import\s+(?:url\()?\s*["']?\s*{_EXTERNAL}[^;]*;""", re.IGNORECASE)
_ICON = re.compile(r"<i\b[^>]*\bclass\s*=\s*\"([^\"]*\bfa-[^\"]*)\"[^>]*>\s*</i>", re.IGNORECASE)
_HEAD_END = re.compile(r"</head\s*>", re.IGNORECASE)
_FOOTER = re.compile(r"<footer\b.*?</footer\s*>", re.IGNORECASE | re.DOTALL)  # GX's newsletter footer
# a link into the site's static/ folder (GX counts the levels up from a validation page one short)
_STATIC = re.compile(r"""(\s(?:src|href)\s*=\s*["'])(?:\./|(?:\.\./)+)static/""", re.IGNORECASE)

# what the CDN's Bootstrap did for the classes GX uses, in a few lines, light and dark
STYLE = """
:root{color-scheme:light dark;--fg:#1d2125;--muted:#5c636a;--line:#d0d5da;--soft:#f2f4f6;--ok:#1a7f37;
--bad:#c62828;--warn:#8a5a00;--link:#0b5cad}
@media (prefers-color-scheme:dark){:root{--fg:#e8eaed;--muted:#aab0b6;--line:#444b52;--soft:#24282c;
--ok:#4cc26a;--bad:#ff6b6b;--warn:#e0b341;--link:#7db7ff}body{background:#16191c}}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0}
a{color:var(--link)}[hidden],.d-none,.modal,.collapse:not(.show),thead[hidden]{display:none!important}
.d-md-block,.d-sm-block,.tab-pane{display:block!important}.d-md-inline-flex{display:inline-flex!important}
.container-fluid{padding:0 1.5rem}.row{display:flex;flex-wrap:wrap;gap:0 1rem}
.col-lg-2,.col-md-2{flex:0 0 15rem;max-width:15rem}.col-md-10,.col-lg-10{flex:1 1 30rem;min-width:0}
.col-12{flex:1 1 100%}.col-6{flex:1 1 45%}.navbar{display:flex;align-items:center;padding:.5rem 1.5rem;
border-bottom:1px solid var(--line)}.navbar ol,.nav{list-style:none;margin:0;padding:0;display:flex;
flex-wrap:wrap;gap:.25rem 1rem}.ge-navigation-sidebar-content{flex-direction:column}
.breadcrumb-item+.breadcrumb-item::before{content:"/ ";color:var(--muted)}
.pz-brand{font-weight:600;font-size:1.1rem}.alert{background:var(--soft);border-left:4px solid var(--line);
padding:.5rem .75rem;margin:.75rem 0}.alert-warning{border-left-color:var(--warn)}
.card{border:1px solid var(--line);border-radius:4px;margin-bottom:.75rem}.card-header{padding:.4rem .6rem;
background:var(--soft)}.card-body{padding:.5rem .6rem}.lead{color:var(--muted)}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{border:1px solid var(--line);
padding:.3rem .5rem;text-align:left;vertical-align:top}thead th{background:var(--soft)}
.badge{display:inline-block;padding:0 .35rem;border-radius:3px;background:var(--soft);
border:1px solid var(--line);font-size:.85em}.text-success,.pz-ok{color:var(--ok);font-weight:600}
.text-danger,.pz-fail{color:var(--bad);font-weight:600}.text-info{color:var(--link)}
.btn{border:1px solid var(--line);background:var(--soft);color:var(--fg);padding:.2rem .6rem;
border-radius:3px;cursor:pointer;display:inline-block}.btn input{display:none}
.cooltip .top{display:none}.cooltip:hover .top{display:block}pre,code{white-space:pre-wrap}
footer{position:static!important}.sticky{position:static}
"""

# GX's inline scripts need jQuery; these two buttons and the "Show more info..." links do not
SCRIPT = """
document.addEventListener("click", function (e) {
  var link = e.target.closest && e.target.closest('[data-toggle="collapse"]');
  if (!link) return;
  var id = (link.getAttribute("href") || link.getAttribute("data-target") || "").replace(/^#/, "");
  var body = id && document.getElementById(id);
  if (body) { e.preventDefault(); body.classList.toggle("show"); }
});
function pzShowSucceeded(show) {
  document.querySelectorAll(".hide-succeeded-validation-target-child").forEach(function (el) {
    if (el.parentElement) el.parentElement.hidden = !show;
  });
  document.querySelectorAll(".hide-succeeded-validation-target").forEach(function (el) {
    el.hidden = !show;
  });
  document.querySelectorAll(".hide-succeeded-validations-column-section-target-child").forEach(function (el) {
    var section = el.parentElement && el.parentElement.parentElement;
    if (!section) return;
    section.hidden = !show;
    if (section.id) document.querySelectorAll('a[href$="' + section.id + '"]').forEach(function (a) {
      a.hidden = !show;
    });
  });
}
function showAllValidations() { pzShowSucceeded(true); }
function hideSucceededValidations() { pzShowSucceeded(false); }
"""


def site_config(target: Path) -> dict[str, Any]:
    """The GX site config: files under ``target``, the index's tables as plain HTML, no
    "how to" buttons (links to GX's web documentation)."""
    return {"class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(target)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder",
                                   "view": {"module_name": __name__, "class_name": "StaticIndexPageView"}}}


def build(context: Any, target: Path) -> Path:
    """Data Docs of every validation result ``context`` holds, in ``target`` only, self-contained."""
    target.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(SITE, site_config(target))
    context.build_data_docs(site_names=[SITE])
    make_offline(target)
    return target / "index.html"


def make_offline(target: Path) -> int:
    """Rewrite every page and stylesheet under ``target`` to load nothing from the network;
    returns how many files changed (a second call changes none)."""
    changed = 0
    for path in sorted(target.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in (".html", ".htm", ".css"):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".css":
            done = offline_css(text)
        else:
            up = Path(os.path.relpath(target, path.parent)).as_posix()
            done = _STATIC.sub(lambda m: f"{m.group(1)}{up}/static/", offline_html(text))  # noqa: B023
        if done != text:
            path.write_text(done, encoding="utf-8")
            changed += 1
    return changed


def offline_css(text: str) -> str:
    """A stylesheet without ``@import`` or ``url()`` of anything outside the site."""
    return _CSS_URL.sub("none", _CSS_IMPORT.sub("", text))


def _link(match: re.Match[str]) -> str:
    return "" if _EXTERNAL_ATTR.search(match.group(0)) else match.group(0)


def _img(match: re.Match[str]) -> str:
    tag = match.group(0)
    if not _EXTERNAL_ATTR.search(tag):
        return tag
    alt = _ALT.search(tag)
    text = (alt.group(1) or alt.group(2)) if alt else ""
    return f'<span class="pz-brand">{text}</span>' if text else ""


def _icon(match: re.Match[str]) -> str:
    classes = match.group(1).split()
    if "fa-check-circle" in classes or "fa-check" in classes:
        return '<span class="pz-ok" title="passed">&#10004; passed</span>'
    if "fa-times" in classes or "fa-times-circle" in classes or "fa-xmark" in classes:
        return '<span class="pz-fail" title="failed">&#10008; failed</span>'
    return ""  # a decorative icon (a note's speech bubble, say): nothing to read


def offline_html(text: str) -> str:
    """A GX page that loads nothing from the network and still reads (see the module's doc)."""
    # CDN scripts, and GX's inline ones (they need jQuery); ours stays (a second pass)
    text = _SCRIPT.sub(lambda m: m.group(0) if f'id="{_MARK}-js"' in m.group(0)[:80] else "", text)
    text = _LINK.sub(_link, text)  # CDN stylesheets; the relative favicon stays
    text = _FOOTER.sub("", text)
    text = _IMG.sub(_img, text)
    text = _ICON.sub(_icon, text)
    text = _CSS_IMPORT.sub("", text)
    text = _CSS_URL.sub("none", text)
    text = _EXTERNAL_ATTR.sub("", text)  # any other attribute that leaves the site (links to GX's web)
    if _MARK not in text:
        ours = f'<style id="{_MARK}">{STYLE}</style><script id="{_MARK}-js">{SCRIPT}</script>'
        text, n = _HEAD_END.subn(lambda m: ours + m.group(0), text, count=1)
        if not n:
            text = ours + text
    return text


class StaticIndexPageView(DefaultJinjaIndexPageView):
    """GX's index page view, with its bootstrap-table tables written as plain HTML tables.

    GX writes an empty ``<table>`` and the rows as data for bootstrap-table (a script from a
    CDN); here the rows are the table's, newest first, and each row links to its page (GX's
    script made the whole row a link).
    """

    @pass_context
    def render_content_block(self, jinja_context: Any, content_block: Any, index: Any = None,
                             content_block_id: Any = None, render_to_markdown: bool = False) -> Any:
        block = content_block.to_json_dict() if hasattr(content_block, "to_json_dict") else content_block
        if (not render_to_markdown and isinstance(block, dict)
                and block.get("content_block_type") == "bootstrap_table"):
            return self._static_table(jinja_context, block, content_block_id)
        return super().render_content_block(jinja_context, content_block, index, content_block_id,
                                            render_to_markdown)

    def _static_table(self, jinja_context: Any, block: dict[str, Any], block_id: Any) -> str:
        columns = [c for c in block.get("table_columns") or [] if isinstance(c, dict) and c.get("field")]
        rows = [r for r in block.get("table_data") or [] if isinstance(r, dict)]
        if any("_run_time_sort" in r for r in rows):
            rows.sort(key=lambda r: float(r.get("_run_time_sort") or 0), reverse=True)
        linked = any(r.get("_table_row_link_path") for r in rows)
        head = "".join(f"<th>{html.escape(str(c.get('title') or c['field']))}</th>" for c in columns)
        out = [f'<table id="{html.escape(str(block_id or "index"))}-body-table" class="pz-index-table">',
               f"<thead><tr>{head}{'<th>Page</th>' if linked else ''}</tr></thead><tbody>"]
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column["field"])
                shown = "" if value is None else self.render_content_block(jinja_context, value)
                cells.append(f"<td>{shown}</td>")
            if linked:
                target = row.get("_table_row_link_path")
                cells.append(f'<td><a href="{html.escape(str(target))}">open</a></td>' if target
                             else "<td></td>")
            out.append(f"<tr>{''.join(cells)}</tr>")
        out.append("</tbody></table>")
        if not rows:
            out.append("<p>None.</p>")
        return "".join(out)
