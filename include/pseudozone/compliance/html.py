"""The nightly compliance report as one self-contained HTML page for a compliance officer.

``render(report)`` takes the JSON-safe dict of the nightly run and returns a full HTML5
document: inline CSS, bar charts drawn by hand as inline SVG, no scripts, no external
resources. Every value from the report is escaped and every key is optional: a section
that is missing says so instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

MAX_HISTORY = 30
FIRST_ROWS = 10

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;margin:2rem auto;
max-width:1100px;padding:0 1rem}
h1{font-size:1.6rem;margin:0 0 .3rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de}
.badge{display:inline-block;padding:.15rem .7rem;border-radius:1rem;color:#fff;font-weight:700;
vertical-align:middle}
.pass{background:#1a7f37}.fail{background:#cf222e}.unknown{background:#6e7781}
.meta{color:#57606a}table{border-collapse:collapse;margin:.6rem 0;width:100%}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#ffebe9}tr.warn td{background:#fff8c5}
.ok{color:#1a7f37;font-weight:600}.no{color:#cf222e;font-weight:700}
code{font-size:.85em;word-break:break-all}.empty,.legend{color:#57606a;font-style:italic}
svg{display:block;max-width:100%;height:auto;margin:.6rem 0}svg text{font:11px sans-serif;fill:#1f2328}
svg .ok{fill:#1a7f37}svg .fail{fill:#cf222e}svg .bar{fill:#0969da}svg .axis{stroke:#57606a}
svg text.failn{fill:#cf222e;font-weight:700}
@media print{body{margin:0}tr.bad td,.badge{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


class _Raw(str):
    """Markup built here from escaped parts; ``_cell`` does not escape it again."""


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        return 0


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in _list(value) if isinstance(v, Mapping)]


def _seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return "?"
    return f"{seconds:.1f}" if math.isfinite(seconds) else "?"


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{_num(value):,}"


def _day(value: Any) -> str:
    return str(value)[:10] if value else "?"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _verdict(value: Any, *, good: str = "pass", bad: str = "FAIL") -> _Raw:
    if value is True:
        return _Raw(f'<span class="ok">{good}</span>')
    if value is False:
        return _Raw(f'<span class="no">{bad}</span>')
    return _Raw("unknown")


def _cell(value: Any) -> str:
    if isinstance(value, _Raw):
        return f"<td>{value}</td>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<td class="n">{_e(f"{value:,}")}</td>'
    return f"<td>{_e('—' if value is None else value)}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
           classes: Sequence[str] | None = None, empty: str = "None.") -> str:
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = classes[i] if classes and classes[i] else ""
        attr = f' class="{css}"' if css else ""
        body.append(f"<tr{attr}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _svg(title: str, description: str, width: int, height: int, body: list[str]) -> str:
    return (f'<svg role="img" aria-label="{_e(f"{title}: {description}")}" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}"><title>{_e(title)}</title>{"".join(body)}</svg>')


def _history_chart(history: list[Mapping[str, Any]]) -> str:
    runs = history[-MAX_HISTORY:]
    if not runs:
        return '<p class="empty">No runs recorded yet.</p>'
    top = max(1, *(_num(r.get("files")) for r in runs))
    slot, bar, plot_h, pad_top, pad_bottom, left = 38, 26, 160, 32, 74, 12
    width, base = 2 * left + slot * len(runs), pad_top + plot_h
    parts = [f'<line class="axis" x1="{left}" y1="{base}" x2="{width - left}" y2="{base}"/>']
    described = []
    for i, run in enumerate(runs):
        files = max(0, _num(run.get("files")))
        failed = min(files, max(0, _num(run.get("failed_files"))))
        day, status = _day(run.get("generated_at")), "PASS" if run.get("status") == "pass" else "FAIL"
        x, cx = left + i * slot + (slot - bar) // 2, left + i * slot + slot // 2
        h, hf = plot_h * files / top, plot_h * failed / top
        described.append(f"{day} {files} files, {failed} failed")
        tip = f"{day}: {files} files validated, {failed} failed, run {status}"
        parts.append(f"<g><title>{_e(tip)}</title><rect "
                     f'class="ok" x="{x}" y="{base - h + hf:.1f}" width="{bar}" height="{h - hf:.1f}"/>')
        if failed:
            parts.append(f'<rect class="fail" x="{x}" y="{base - h:.1f}" width="{bar}" height="{hf:.1f}"/>')
            parts.append(f'<text class="failn" x="{cx}" y="{base - h - 16:.1f}" text-anchor="middle">'
                         f"{failed} fail</text>")
        parts.append(f'<text x="{cx}" y="{base - h - 4:.1f}" text-anchor="middle">{files}</text>')
        parts.append(f'<text x="{cx}" y="{base + 14}" text-anchor="end" '
                     f'transform="rotate(-45 {cx} {base + 14})">{_e(day)}</text></g>')
    title = "Validation results over time"
    chart = _svg(title, "; ".join(described), width, base + pad_bottom, parts)
    return chart + ('<p class="legend">Bar height: files validated in the run (number above the bar). '
                    "Red top part, labelled “N fail”: files that failed validation.</p>")


def _hbar_chart(title: str, items: list[tuple[str, int]], *, empty: str) -> str:
    if not items:
        return f'<p class="empty">{_e(empty)}</p>'
    top = max(1, *(n for _, n in items))
    label_w, bar_max, row = 150, 360, 24
    width, height = label_w + bar_max + 60, row * len(items) + 8
    parts = []
    for i, (label, n) in enumerate(items):
        y, w = 4 + i * row, bar_max * max(0, n) / top
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{_e(_short(label, 22))}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}"/>'
                     f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{n}</text>')
    return _svg(title, ", ".join(f"{label} {n}" for label, n in items), width, height, parts)


def _vbar_chart(title: str, items: list[tuple[str, int]], *, empty: str) -> str:
    if not items:
        return f'<p class="empty">{_e(empty)}</p>'
    top = max(1, *(n for _, n in items))
    slot, bar, plot_h, pad_top, left = 100, 56, 140, 20, 10
    width, base = 2 * left + slot * len(items), pad_top + plot_h
    parts = [f'<line class="axis" x1="{left}" y1="{base}" x2="{width - left}" y2="{base}"/>']
    for i, (label, n) in enumerate(items):
        cx, h = left + i * slot + slot // 2, plot_h * max(0, n) / top
        parts.append(f'<rect class="bar" x="{cx - bar // 2}" y="{base - h:.1f}" width="{bar}" '
                     f'height="{h:.1f}"/>'
                     f'<text x="{cx}" y="{base - h - 4:.1f}" text-anchor="middle">{n}</text>'
                     f'<text x="{cx}" y="{base + 16}" text-anchor="middle">{_e(_short(label, 16))}</text>')
    return _svg(title, ", ".join(f"{label} {n}" for label, n in items), width, base + 26, parts)


def _header(report: Mapping[str, Any]) -> str:
    status = report.get("status")
    badge = {"pass": ("pass", "PASS"), "fail": ("fail", "FAIL")}.get(str(status), ("unknown", "UNKNOWN"))
    return (f'<header><h1>Compliance report <span class="badge {badge[0]}">{badge[1]}</span></h1>'
            f'<p class="summary"><strong>{_e(report.get("summary", ""))}</strong></p>'
            f'<p class="meta">Generated at {_e(report.get("generated_at", "?"))} · run '
            f'<code>{_e(report.get("run_id", "?"))}</code></p></header>')


def _problems(report: Mapping[str, Any]) -> str:
    problems = report.get("problems")
    if not isinstance(problems, list) or not problems:
        return ""
    items = "".join(f"<li>{_e(p)}</li>" for p in problems)
    return f'<section id="problems"><h2>Problems</h2><ul>{items}</ul></section>'


def _data_docs(path: Any) -> str:
    if not isinstance(path, str) or not path:
        return ""
    relative = not path.startswith(("/", "\\")) and ":" not in path.split("/", 1)[0]
    if relative:
        return f'<p>Full results: <a href="{_e(path)}">Great Expectations Data Docs</a></p>'
    return f"<p>Data Docs (not linked, not a relative path): <code>{_e(path)}</code></p>"


def _validation(report: Mapping[str, Any]) -> str:
    v = _dict(report.get("validation"))
    out = ['<section id="validation"><h2>Validation</h2>']
    if not v:
        out.append('<p class="empty">Not reported in this run.</p>')
    else:
        out.append(f"<p>Result: {_verdict(v.get('success'), good='all files passed', bad='FAILED')} · "
                   f"{_fmt(v.get('files'))} file(s), {_fmt(v.get('rows'))} row(s) checked in "
                   f"{_seconds(v.get('seconds'))} s</p>")
        zones = _dicts(v.get("zones"))
        out.append(_table(["Zone", "Dataset", "Tenant", "Files", "Rows", "Result"],
                          [[z.get("zone"), z.get("dataset"), z.get("tenant_id"), _num(z.get("files")),
                            _num(z.get("rows")), _verdict(z.get("success"))] for z in zones],
                          classes=["bad" if z.get("success") is False else "" for z in zones],
                          empty="No zone files were validated."))
        failures = [(z, f) for z in zones for f in _dicts(z.get("failures"))]
        if failures:
            out.append("<h3>Failures</h3>")
            rows = []
            for z, f in failures:
                positions = [str(_num(r)) for r in _list(f.get("rows")) if not isinstance(r, dict | list)]
                first = ", ".join(positions[:FIRST_ROWS]) + (" …" if len(positions) > FIRST_ROWS else "")
                count = f.get("unexpected_count")
                rows.append([f"{z.get('zone', '?')}/{z.get('dataset', '?')}", z.get("tenant_id"),
                             _Raw(f"<code>{_e(f.get('file'))}</code>"), f.get("expectation"),
                             f.get("column"), f.get("kind"), None if count is None else _num(count),
                             first or None])
            out.append(_table(["Zone/dataset", "Tenant", "File", "Expectation", "Column", "Kind", "Count",
                               "First row positions"], rows, classes=["bad"] * len(rows)))
        out.append(_data_docs(v.get("data_docs")))
    out.append("<h3>Validation results over time</h3>")
    out.append(_history_chart(_dicts(report.get("history"))))
    return "".join(out) + "</section>"


def _request_rows(items: list[Mapping[str, Any]]) -> list[list[Any]]:
    return [[r.get("request_id"), r.get("tenant_id"), r.get("type"), r.get("state"), r.get("received_at"),
             r.get("due_at"), _num(r.get("days"))] for r in items]


def _requests(report: Mapping[str, Any]) -> str:
    r = _dict(report.get("requests"))
    out = ['<section id="requests"><h2>Rights requests</h2>']
    if not r:
        return "".join(out) + '<p class="empty">Not reported in this run.</p></section>'
    out.append(f"<p>Open requests: <strong>{_fmt(r.get('open', 0))}</strong></p>")
    by_state = [(str(k), _num(n)) for k, n in _dict(r.get("by_state")).items()]
    out.append("<h3>Requests by state</h3>"
               + _hbar_chart("Requests by state", by_state, empty="No requests."))
    by_age = [(str(b.get("bucket", "?")), _num(b.get("count"))) for b in _dicts(r.get("by_age"))]
    out.append("<h3>Open requests by age</h3>"
               + _vbar_chart("Open requests by age", by_age, empty="No open requests."))
    headers = ["Request", "Tenant", "Type", "State", "Received", "Due"]
    overdue, soon = _dicts(r.get("overdue")), _dicts(r.get("due_soon"))
    out.append("<h3>Overdue</h3>" + _table([*headers, "Days overdue"], _request_rows(overdue),
                                           classes=["bad"] * len(overdue), empty="No request is overdue."))
    out.append("<h3>Due within 7 days</h3>" + _table([*headers, "Days left"], _request_rows(soon),
                                                     classes=["warn"] * len(soon),
                                                     empty="No request falls due within 7 days."))
    late = _dicts(r.get("completed_late"))
    out.append("<h3>Completed after their deadline</h3>"
               + _table([*headers, "Days late"], _request_rows(late), classes=["warn"] * len(late),
                        empty="Every completed request was completed in time."))
    no_data = [[str(k), _num(n)] for k, n in _dict(r.get("no_data_found")).items()]
    out.append("<h3>Completed with no data found</h3>"
               + _table(["Type", "Requests"], no_data, empty="Every completed request found its subject."))
    holds = _dicts(r.get("holds"))
    out.append("<h3>Active legal holds</h3>"
               + _table(["Hold", "Tenant", "Dataset", "Scope", "Reason code", "Since"],
                        [[h.get("hold_id"), h.get("tenant_id"), h.get("dataset"), h.get("scope"),
                          h.get("reason_code"), _day(h.get("since"))] for h in holds],
                        empty="No legal hold is active."))
    restrictions = [[str(t), _num(n)] for t, n in _dict(r.get("restrictions")).items()]
    out.append("<h3>Active restrictions</h3>"
               + _table(["Tenant", "Restricted subjects"], restrictions, empty="No subject is restricted."))
    quarantined = _dicts(r.get("quarantined"))
    out.append("<h3>Quarantined landing batches</h3>"
               + _table(["Dataset", "Tenant", "Reason code", "Batches"],
                        [[q.get("dataset"), q.get("tenant_id"), q.get("reason_code"), _num(q.get("batches"))]
                         for q in quarantined], classes=["warn"] * len(quarantined),
                        empty="No landing batch is quarantined."))
    return "".join(out) + "</section>"


def _erasures(report: Mapping[str, Any]) -> str:
    e = _dict(report.get("erasures"))
    out = ['<section id="erasures"><h2>Erasure re-verification</h2>']
    if not e:
        return "".join(out) + '<p class="empty">Not reported in this run.</p></section>'
    incomplete = _dicts(e.get("incomplete"))
    out.append(f"<p>Completed erasures re-checked: <strong>{_fmt(e.get('checked', 0))}</strong>; "
               f"incomplete: <strong>{len(incomplete)}</strong></p>")
    rows = [[i.get("request_id"), i.get("tenant_id"), _Raw(f"<code>{_e(i.get('subject'))}</code>"),
             "; ".join(str(p) for p in _list(i.get("problems")))] for i in incomplete]
    out.append(_table(["Request", "Tenant", "Subject (pseudonym)", "Problems"], rows,
                      classes=["bad"] * len(rows), empty="Every completed erasure is still complete."))
    return "".join(out) + "</section>"


def _audit(report: Mapping[str, Any]) -> str:
    a = _dict(report.get("audit"))
    if not a:
        body = '<p class="empty">Not checked in this run.</p>'
    elif a.get("ok") is True:
        body = f'<p><span class="ok">Hash chain intact</span> over {_fmt(a.get("entries", 0))} entries.</p>'
    else:
        body = (f'<p><span class="no">Hash chain broken</span> ({_fmt(a.get("entries", 0))} entries): '
                f"{_e(a.get('problem') or 'no detail given')}</p>")
    head, checkpoint = _dict(a.get("head")), _dict(a.get("checkpoint"))
    if head:
        body += (f"<p>Head: entry <strong>{_fmt(head.get('entries'))}</strong>, hash "
                 f"<code>{_e(head.get('hash'))}</code> (keep it: a later chain must still hold it).</p>")
    if a:
        body += ("<p>Checked against the checkpoint of entry "
                 f"<strong>{_fmt(checkpoint.get('entries'))}</strong>.</p>" if checkpoint
                 else '<p class="empty">No checkpoint was there to check against.</p>')
    return f'<section id="audit"><h2>Audit log</h2>{body}</section>'


def _retention(report: Mapping[str, Any]) -> str:
    r = _dict(report.get("retention"))
    out = ['<section id="retention"><h2>Retention</h2>']
    if not r:
        return "".join(out) + '<p class="empty">Not reported in this run.</p></section>'
    policies = [[str(k), _num(days)] for k, days in _dict(r.get("policies")).items()]
    out.append("<h3>Policies</h3>" + _table(["Dataset", "Keep (days)"], policies, empty="No policies."))
    deleted = [[d.get("dataset"), d.get("tenant_id"), d.get("date"), _num(d.get("files")),
                _num(d.get("rows"))] for d in _dicts(r.get("deleted"))]
    out.append("<h3>Partitions deleted in this run</h3>"
               + _table(["Dataset", "Tenant", "Partition date", "Files", "Rows"], deleted,
                        empty="No partition was past its retention period."))
    trimmed = [[d.get("zone"), d.get("dataset"), d.get("tenant_id"), d.get("date"), _num(d.get("rows_kept")),
                _num(d.get("rows_deleted"))] for d in _dicts(r.get("trimmed_for_hold"))]
    if trimmed:
        out.append("<h3>Partitions trimmed to the rows a subject's legal hold keeps</h3>"
                   + _table(["Zone", "Dataset", "Tenant", "Partition date", "Rows kept", "Rows deleted"],
                            trimmed))
    landing = _dict(r.get("landing"))
    if landing:
        files = [[d.get("dataset"), d.get("tenant_id"), d.get("batch_id"), _day(d.get("ingested_at")),
                  _num(d.get("bytes"))] for d in _dicts(landing.get("deleted"))]
        out.append(f"<h3>Landing files deleted in this run (ingested over "
                   f"{_fmt(landing.get('landing_retention_days'))} days ago)</h3>"
                   + _table(["Dataset", "Tenant", "Batch", "Ingested", "Bytes"], files,
                            empty="No ingested landing file was past its retention period."))
        changed = _dicts(landing.get("kept_changed"))
        if changed:
            out.append("<p>Kept, changed since they were ingested (a new delivery): "
                       + ", ".join(_e(d.get("batch_id")) for d in changed) + ".</p>")
        purged = [[d.get("dataset") or "(inbox request)", d.get("tenant_id") or "",
                   d.get("reason_code") or "?", _day(d.get("quarantined_at"))]
                  for d in _dicts(landing.get("quarantine_purged"))]
        out.append(f"<h3>Quarantined files purged in this run (quarantined over "
                   f"{_fmt(landing.get('quarantine_retention_days'))} days ago)</h3>"
                   + _table(["Dataset", "Tenant", "Reason code", "Quarantined"], purged,
                            empty="No quarantined file was past its retention period."))
    return "".join(out) + "</section>"


def _k_anonymity(report: Mapping[str, Any]) -> str:
    k = _dict(report.get("k_anonymity"))
    out = ['<section id="k-anonymity"><h2>Re-identification risk (k-anonymity)</h2>']
    if not k:
        return "".join(out) + '<p class="empty">Not reported in this run.</p></section>'
    results = _dicts(k.get("results"))
    out.append(f"<p>k = <strong>{_fmt(k.get('k'))}</strong>: a dataset is flagged when its smallest group of "
               "rows sharing the same quasi-identifier values is smaller than k.</p>")
    rows = [[x.get("tenant_id"), x.get("dataset"),
             ", ".join(str(q) for q in _list(x.get("quasi_identifiers"))),
             _num(x.get("rows")), _num(x.get("groups")),
             None if x.get("min_group_size") is None else _num(x.get("min_group_size")),
             _Raw('<span class="no">flagged</span>') if x.get("flagged") is True else "ok"] for x in results]
    out.append(_table(["Tenant", "Dataset", "Quasi-identifiers", "Rows", "Groups", "Smallest group", "Risk"],
                      rows, classes=["bad" if x.get("flagged") is True else "" for x in results],
                      empty="No dataset was measured."))
    return "".join(out) + "</section>"


def render(report: dict[str, Any]) -> str:
    """The whole report page; values are escaped, missing sections are named as missing."""
    report = report if isinstance(report, dict) else {}
    title = f"Compliance report {_e(_day(report.get('generated_at')))}"
    body = [_header(report), _problems(report), _validation(report), _requests(report), _erasures(report),
            _audit(report), _retention(report), _k_anonymity(report)]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta http-equiv="Content-Security-Policy" '
            "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
