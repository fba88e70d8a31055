"""``pseudozone`` command line: generate, ingest, query, status, demo.

The data root comes from ``--home`` or ``PSEUDOZONE_HOME`` (default ``./data``).
Errors are one line on stderr with exit status 2, never a traceback: messages
are written to be safe (no data values).
"""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError, describe_os_error

DEMO_QUERY = """
SELECT e.tenant_id, e.event_name, count(*) AS events, count(DISTINCT e.subject_id) AS subjects,
       count(DISTINCT e.ip_prefix) AS networks
FROM events e
GROUP BY ALL
ORDER BY e.tenant_id, events DESC
LIMIT 12
""".strip()


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(args.home)


def cmd_generate(args: argparse.Namespace) -> int:
    from pseudozone.sample import generate

    settings = _settings(args)
    started = time.perf_counter()
    counts = generate(settings, events=args.events, tenants=args.tenants, seed=args.seed,
                      batch_rows=args.batch_rows, fmt=args.format, days=args.days)
    took = time.perf_counter() - started
    print(f"generated under {settings.landing} in {took:.1f}s: "
          + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pseudozone.ingest import BatchResult, ingest_pending
    from pseudozone.keys import KeyRing

    settings = _settings(args)
    # a missing or different master key stops the run before anything is read or written
    # (workers load the key themselves, so it is checked here once, up front)
    KeyRing.load(settings)

    def show(res: BatchResult) -> None:
        extra = f" reason={res.reason['code']}" if res.reason else ""
        print(f"{res.status:<11} {res.batch_id}  rows_in={res.rows_in:,} "
              f"rows_event={res.rows_event:,} rows_pii={res.rows_pii:,}{extra}")

    started = time.perf_counter()
    results = ingest_pending(settings, workers=args.workers, on_result=show)
    took = time.perf_counter() - started
    done = sum(r.status == "done" for r in results)
    quarantined = sum(r.status == "quarantined" for r in results)
    print(f"{len(results)} batch(es): {done} done, {quarantined} quarantined, in {took:.1f}s")
    gate_failed = [r.batch_id for r in results if r.reason and r.reason.get("code") == "validation_failed"]
    if gate_failed:
        print(f"error: the publish gate stopped {len(gate_failed)} batch(es): {', '.join(gate_failed)};"
              " see their .reason.json in zones/quarantine", file=sys.stderr)
        return 1
    return 1 if quarantined and args.strict else 0


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from pseudozone import query
    from pseudozone.report import format_table

    settings = _settings(args)
    if not query.datasets(settings):
        raise PseudozoneError(f"the event zone under {settings.event_zone} is empty; run ingest first")
    try:
        columns, rows = query.run(settings, args.sql)
    except duckdb.Error as exc:  # about the SQL over pseudonymous data: safe to show
        raise PseudozoneError(f"query failed: {exc}") from None
    print(format_table(columns, rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pseudozone.report import status_text

    print(status_text(_settings(args)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.tenants, args.seed, args.batch_rows, args.format, args.days = 3, 7, 1_000_000, "parquet", 7
    cmd_generate(args)
    args.strict, args.workers = False, 1
    cmd_ingest(args)
    cmd_status(args)
    print("\nAnalyst query over the event zone (DuckDB):\n" + DEMO_QUERY + "\n")
    args.sql = DEMO_QUERY
    return cmd_query(args)


def _print_status(status: dict[str, object]) -> None:
    import json

    print(json.dumps(status, indent=2, sort_keys=True))


def cmd_request(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    settings = _settings(args)
    if args.kind == "status":
        _print_status(requests.get_status(settings, args.request_id).to_dict())
        return 0
    if args.kind == "retry":
        _print_status(requests.retry(settings, args.request_id).to_dict())
        return 0
    raw: dict[str, object] = {"type": args.kind, "tenant_id": args.tenant, "user_id": args.user}
    if args.kind == "rectify":
        fields = {}
        for position, item in enumerate(args.set or [], start=1):
            name, sep, value = item.partition("=")
            if not sep:
                # the argument may be the value itself (an email): it is never echoed
                raise PseudozoneError(f"--set expects FIELD=VALUE; --set number {position} has no '='")
            fields[name.strip()] = value
        raw["fields"] = fields
    status = requests.submit(settings, raw, source="cli")
    _print_status(status.to_dict())
    return 0 if status.state == "accepted" else 1


def cmd_requests(args: argparse.Namespace) -> int:
    from pseudozone.report import format_table
    from pseudozone.rights import requests

    rows = requests.list_requests(_settings(args), tenant_id=args.tenant,
                                  states=tuple(args.state) if args.state else None)
    print(format_table(["request_id", "tenant", "type", "state", "received", "due", "completed"],
                       [[r.request_id, r.tenant_id, r.type, r.state, r.received_at[:19], r.due_at[:10],
                         (r.completed_at or "")[:19]] for r in rows]))
    return 0


def cmd_rights_process(args: argparse.Namespace) -> int:
    import uuid

    from pseudozone.keys import KeyRing
    from pseudozone.rights.process import process_all

    settings = _settings(args)
    summary = process_all(settings, f"cli__{uuid.uuid4()}", keyring=KeyRing.load(settings))
    print(f"run {summary['run_id']}: completed {summary['completed']} over {summary['groups']} file group(s)")
    return 0


def cmd_tenant_add(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    if args.tenant_command == "rotate-token":
        token = requests.rotate_tenant_token(_settings(args), args.tenant)
        print(f"tenant {args.tenant}: new API token (the old one no longer works; shown once):")
    else:
        token = requests.register_tenant(_settings(args), args.tenant)
        print(f"tenant {args.tenant} registered; its API token (shown once, store it in your secret store):")
    print(token)
    return 0


def cmd_hold_add(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    hold_id = requests.add_legal_hold(_settings(args), tenant_id=args.tenant, dataset=args.dataset,
                                      user_id=args.user, reason=args.reason, reason_code=args.code)
    print(f"legal hold {hold_id} added")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pseudozone import keys

    settings = _settings(args)
    if args.keys_command == "init":
        origin = keys.init_master_key(settings)
        print(f"master key of {settings.root}: {origin}; its check value is recorded in the state database."
              " Back the key up outside the data root: without it the PII zone is unreadable")
        return 0
    if args.keys_command == "adopt":
        origin = keys.adopt_master_key(settings)
        print(f"master key from {origin} recorded as the key of {settings.root}")
        return 0
    keys.require_configured_key(settings)  # a check never makes a key (a mistyped --home, say)
    keys.KeyRing.load(settings)
    print(f"master key matches {settings.root}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from pseudozone import keys

    settings = _settings(args)
    ring = keys.KeyRing.load(settings)  # a missing or different master key stops it before any write
    if args.after_erasures:
        result = keys.rotate_after_erasures(settings, ring)
    else:
        result = keys.rotate_keks(settings, ring, tenants=args.tenant or None)
    for tenant, done in sorted(result["tenants"].items()):
        print(f"{tenant}: KEK version {done['version']}, {done['rewrapped']} data key(s) re-wrapped,"
              f" {len(done['destroyed_versions'])} older KEK seed(s) destroyed")
    print(f"{result['rotated']} tenant KEK(s) rotated")
    return 0


def cmd_hold_list(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    holds = requests.list_holds(_settings(args), tenant_id=args.tenant, include_lifted=args.all)
    if args.json:
        print(json.dumps(holds, indent=2))
        return 0
    print(f"{'hold':>5}  {'tenant':<16} {'dataset':<12} {'subject':<14} {'code':<24} {'since':<20} lifted")
    for h in holds:
        subject = (h["subject_id"] or "*")[:12] + ("…" if h["subject_id"] else "")
        print(f"{h['hold_id']:>5}  {h['tenant_id']:<16} {h['dataset'] or '*':<12} {subject:<14} "
              f"{h['reason_code']:<24} {h['created_at'][:19]:<20} {(h['lifted_at'] or '-')[:19]}")
    return 0


def cmd_hold_lift(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    requests.lift_legal_hold(_settings(args), args.hold_id, reason_code=args.code)
    print(f"legal hold {args.hold_id} lifted; retention applies again from the next nightly run (rows of"
          " subjects erased while it stood need their erase request filed again)")
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    import datetime as dt

    from pseudozone.rights import audit

    since = None
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            raise PseudozoneError("--since takes an ISO date or time (2026-12-01T08:00)") from None
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    found = audit.entries(_settings(args), tenant_id=args.tenant, action=args.action,
                          request_id=args.request, since=since, limit=args.limit)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for e in found:
        who = " ".join(f"{k}={e[k]}" for k in ("tenant_id", "request_id") if e[k])
        print(f"{e['seq']:>6} {e['at'][:23]} {e['actor']:<22} {e['action']:<24} {who} "
              f"{json.dumps(e['details'], separators=(',', ':'))}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from pseudozone.rights import audit

    result = audit.verify(_settings(args), update_checkpoint=True)
    if result.ok:
        anchor = ("no checkpoint yet" if result.checkpoint_entries is None
                  else f"checkpoint at entry {result.checkpoint_entries} holds")
        print(f"audit log OK: {result.entries} entries, hash chain intact, {anchor}")
        if result.head_hash is not None:
            print(f"head: entry {result.entries}, hash {result.head_hash}"
                  + (" (checkpoint updated)" if result.checkpoint_updated else ""))
        return 0
    where = (f" ({result.entries} entries)" if result.first_bad_seq is None
             else f" at entry {result.first_bad_seq} of {result.entries}")
    print(f"audit log BROKEN{where}: {result.problem}")
    return 1


def _print_report(report: dict[str, Any], settings: Settings) -> int:
    from pseudozone.compliance.report import run_dir

    print(report["summary"])
    for problem in report.get("problems", []):
        print(f"  - {problem}")
    print(f"report: {run_dir(settings, report['run_id']) / 'report.html'}")
    return 0 if report["status"] == "pass" else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pseudozone.compliance.report import latest

    settings = _settings(args)
    report = latest(settings)
    if report is None:
        raise PseudozoneError(f"no compliance report under {settings.reports} yet; run the nightly_compliance"
                              " DAG or `pseudozone compliance run`")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0 if report["status"] == "pass" else 1
    return _print_report(report, settings)


def cmd_compliance_run(args: argparse.Namespace) -> int:
    from pseudozone.compliance.report import latest, run_nightly
    from pseudozone.keys import KeyRing, rotate_after_erasures

    settings = _settings(args)
    keyring = KeyRing.load(settings)  # a missing or different master key stops the run before retention

    overrides = {}
    for item in args.retention or []:
        dataset, _, days = item.partition("=")
        if not days.isdigit():
            raise PseudozoneError("--retention takes DATASET=DAYS, with DAYS a whole number")
        overrides[dataset] = int(days)
    run_id = args.run_id or "manual__" + time.strftime("%Y-%m-%dT%H%M%S", time.gmtime())
    run_nightly(settings, run_id, k=args.k, retention_overrides=overrides)
    # as the DAG's rotate_keys task: no earlier backup decrypts a subject erased since (ADR 0009)
    rotated = rotate_after_erasures(settings, keyring)
    if rotated["rotated"]:
        print(f"key-encryption keys rotated for {rotated['rotated']} tenant(s) with erasures since their last"
              " rotation")
    report = latest(settings)
    assert report is not None
    return _print_report(report, settings)


def cmd_compact(args: argparse.Namespace) -> int:
    from pseudozone.lake.compact import compact

    started = time.perf_counter()
    summary = compact(_settings(args), target_rows=args.target_rows, tenants=args.tenant or None,
                      datasets=args.dataset or None)
    took = time.perf_counter() - started
    print(f"compacted {summary['partitions']} partition(s) in {took:.1f}s: {summary['files_in']} file(s)"
          f" -> {summary['files_out']}, {summary['rows']:,} row(s); killed runs finished"
          f" {summary['rolled_forward']}, undone {summary['rolled_back']};"
          f" {summary['conflicts']} conflict(s)")
    return 1 if summary["conflicts"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pseudozone", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="data root (default: $PSEUDOZONE_HOME or ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write seeded synthetic landing data")
    gen.add_argument("--events", type=int, default=100_000)
    gen.add_argument("--tenants", type=int, default=3)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--batch-rows", type=int, default=1_000_000, help="rows per landing file")
    gen.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet")
    gen.add_argument("--days", type=int, default=7, help="days of activity to spread events over")
    gen.set_defaults(func=cmd_generate)

    ing = sub.add_parser("ingest", help="pseudonymize every pending landing batch (no Airflow)")
    ing.add_argument("--strict", action="store_true", help="exit 1 if any batch was quarantined")
    ing.add_argument("--workers", type=int, default=1,
                     help="batches processed at once, one process each (about 1 GB per 1M-row batch)")
    ing.set_defaults(func=cmd_ingest)

    qry = sub.add_parser("query", help="run SQL with DuckDB over the event zone")
    qry.add_argument("sql", help="e.g. \"SELECT event_name, count(*) FROM events GROUP BY 1\"")
    qry.set_defaults(func=cmd_query)

    sub.add_parser("status", help="rows per zone and the batch ledger").set_defaults(func=cmd_status)

    req = sub.add_parser("request", help="file a data-subject rights request, or show one")
    req_sub = req.add_subparsers(dest="kind", required=True)
    for kind in ("erase", "rectify", "restrict", "unrestrict", "export"):
        p = req_sub.add_parser(kind, help=f"file a{'n' if kind[0] in 'aeiou' else ''} {kind} request")
        p.add_argument("--tenant", required=True)
        p.add_argument("--user", required=True, help="the subject's user id in that tenant")
        if kind == "rectify":
            p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                           help="a corrected profile value (repeatable)")
        p.set_defaults(func=cmd_request)
    st = req_sub.add_parser("status", help="show one request")
    st.add_argument("request_id")
    st.set_defaults(func=cmd_request)
    rt = req_sub.add_parser("retry", help="put a failed request back in the queue")
    rt.add_argument("request_id")
    rt.set_defaults(func=cmd_request)

    lst = sub.add_parser("requests", help="list rights requests")
    lst.add_argument("--tenant")
    lst.add_argument("--state", action="append",
                     choices=["received", "accepted", "in_progress", "completed", "rejected", "failed"])
    lst.set_defaults(func=cmd_requests)

    rights = sub.add_parser("rights", help="process open rights requests without Airflow")
    rights_sub = rights.add_subparsers(dest="rights_command", required=True)
    rights_sub.add_parser("process", help="intake the inbox and apply every open request"
                          ).set_defaults(func=cmd_rights_process)

    tenant = sub.add_parser("tenant", help="tenants of the REST door")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    tadd = tenant_sub.add_parser("add", help="register a tenant and print its API token")
    tadd.add_argument("tenant")
    tadd.set_defaults(func=cmd_tenant_add)
    trot = tenant_sub.add_parser("rotate-token", help="replace a tenant's API token (audited)")
    trot.add_argument("tenant")
    trot.set_defaults(func=cmd_tenant_add)

    hold = sub.add_parser("hold", help="legal holds")
    hold_sub = hold.add_subparsers(dest="hold_command", required=True)
    hadd = hold_sub.add_parser("add", help="keep a tenant's data (or one dataset / subject) through erasure")
    hadd.add_argument("--tenant", required=True)
    hadd.add_argument("--dataset")
    hadd.add_argument("--user")
    hadd.add_argument("--reason", required=True,
                      help="why the data is kept (free text, stored encrypted; tenants see only --code)")
    hadd.add_argument("--code", default="other",
                      choices=["litigation", "regulatory_investigation", "tax_audit", "law_enforcement",
                               "contract", "other"],
                      help="the reason code tenants and the audit log see (default: other)")
    hadd.set_defaults(func=cmd_hold_add)

    key = sub.add_parser("keys", help="the master key of this data root")
    key_sub = key.add_subparsers(dest="keys_command", required=True)
    key_sub.add_parser("init", help="make a new master key (a 0600 key file, unless $PSEUDOZONE_MASTER_KEY or"
                       " an Airflow connection gives it) and record its check value; empty data root only"
                       ).set_defaults(func=cmd_keys)
    key_sub.add_parser("check", help="exit 0 if the configured master key is this data root's, else 2"
                       ).set_defaults(func=cmd_keys)
    key_sub.add_parser("adopt", help="record the configured key as the root's, for a root from before key"
                       " checks that has no data key to prove it on (you vouch that it is the right key)"
                       ).set_defaults(func=cmd_keys)
    krot = key_sub.add_parser("rotate", help="new tenant KEKs: re-wrap every live data key, destroy the old"
                              " KEK seeds, so that no earlier backup of the data root decrypts an erased"
                              " subject's PII (ADR 0009)")
    krot.add_argument("--tenant", action="append", help="only this tenant (repeatable; default: all)")
    krot.add_argument("--after-erasures", action="store_true",
                      help="only the tenants with an erasure since their last rotation (the nightly step)")
    krot.set_defaults(func=cmd_keys_rotate)

    hlist = hold_sub.add_parser("list", help="open legal holds (ids, scope, reason code; never the reason)")
    hlist.add_argument("--tenant")
    hlist.add_argument("--all", action="store_true", help="also holds that were lifted")
    hlist.add_argument("--json", action="store_true")
    hlist.set_defaults(func=cmd_hold_list)
    hlift = hold_sub.add_parser("lift", help="lift a legal hold (audited)")
    hlift.add_argument("hold_id", type=int)
    hlift.add_argument("--code", default="other",
                       choices=["litigation", "regulatory_investigation", "tax_audit", "law_enforcement",
                                "contract", "other"], help="why it is lifted (default: other)")
    hlift.set_defaults(func=cmd_hold_lift)

    aud = sub.add_parser("audit", help="the hash-chained audit log")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True)
    aud_sub.add_parser("verify", help="check the whole chain and its checkpoint, then move the checkpoint"
                                      " to the chain's head").set_defaults(func=cmd_audit_verify)
    ashow = aud_sub.add_parser("show", help="audit entries, oldest first, filtered")
    ashow.add_argument("--tenant")
    ashow.add_argument("--action", help="an action, or a prefix ending in '*' (hold.*)")
    ashow.add_argument("--request", help="a request id")
    ashow.add_argument("--since", help="ISO date or time, UTC unless it says otherwise")
    ashow.add_argument("--limit", type=int, default=100, help="the newest N entries (default 100)")
    ashow.add_argument("--json", action="store_true")
    ashow.set_defaults(func=cmd_audit_show)

    rep = sub.add_parser("report", help="the latest compliance report's summary (exit 1 if it failed)")
    rep.add_argument("--json", action="store_true", help="print the whole report as JSON")
    rep.set_defaults(func=cmd_report)
    comp = sub.add_parser("compliance", help="the nightly compliance run without Airflow")
    comp_sub = comp.add_subparsers(dest="compliance_command", required=True)
    crun = comp_sub.add_parser("run", help="retention, validation of every zone, erasures, deadlines,"
                               " audit chain, k-anonymity, then the report")
    crun.add_argument("--k", type=int, default=5, help="k-anonymity threshold (default 5)")
    crun.add_argument("--retention", action="append", metavar="DATASET=DAYS",
                      help="override a contract's retention_days (repeatable)")
    crun.add_argument("--run-id", help="name of this run (default manual__<UTC time>)")
    crun.set_defaults(func=cmd_compliance_run)

    cmp = sub.add_parser("compact", help="merge each partition-day's small files into one per subject bucket")
    cmp.add_argument("--target-rows", type=int, default=5_000_000,
                     help="most rows per file; a bucket of more is cut into parts (default 5000000)")
    cmp.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    cmp.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    cmp.set_defaults(func=cmd_compact)

    demo = sub.add_parser("demo", help="generate, ingest, show what was produced (no Airflow)")
    demo.add_argument("--events", type=int, default=100_000)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except PseudozoneError as exc:
        print(f"pseudozone: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pseudozone: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except (sqlite3.Error, SQLAlchemyError) as exc:
        # the driver's own sentence ("database or disk is full"); SQLAlchemy's text would add the
        # statement and its parameters, which may hold values
        reason = getattr(exc, "orig", None) or exc
        print(f"pseudozone: error: state database: {str(reason).splitlines()[0][:200]}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"pseudozone: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
