"""``pseudozone`` command line: generate, ingest, query, status, demo.

The data root comes from ``--home`` or ``PSEUDOZONE_HOME`` (default ``./data``); the
global options may also follow the subcommand.  Errors are one line on stderr with exit
status 2, never a traceback: messages are written to be safe (no data values).  Commands
that only read refuse a data root that does not exist, and make nothing under one that does.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pseudozone.config import HOME_ENV, Settings
from pseudozone.contracts import PURPOSES
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


# what a data root holds once pseudozone has used it (``Settings.ensure``, ``generate``, ...)
_ROOT_PLACES = ("landing", "zones", "state", "reports")


def require_data_root(settings: Settings) -> None:
    """Refuse a data root that does not exist or holds no pseudozone state (a mistyped
    ``--home``), before a command could make anything there.  The root's path is no data value."""
    root, hint = settings.root, f"(set {HOME_ENV} or --home)"
    if not root.exists():
        raise PseudozoneError(f"data root {root} does not exist {hint}")
    if not root.is_dir() or not any((root / place).is_dir() for place in _ROOT_PLACES):
        raise PseudozoneError(f"data root {root} holds no pseudozone state {hint}")


def _requests_db_exists(settings: Settings) -> bool:
    """Whether the state database (requests, holds, audit log) exists: reading the default
    SQLite file where there is none would make it (a configured database always exists)."""
    from pseudozone import state

    return state.exists(settings)


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


class _Progress:
    """A line on stderr per finished piece of long work (batch, step, partition), only when
    stderr is a terminal: never in a log or a pipe.  Labels are ids and counts, no data value."""

    def __init__(self, what: str, unit: str, total: int | None = None) -> None:
        self.on = _stderr_is_tty()
        self.what, self.unit, self.total, self.done = what, unit, total, 0
        self.started = time.perf_counter()

    def __call__(self, label: str) -> None:
        self.done += 1
        if not self.on:
            return
        of = f"/{max(self.total, self.done)}" if self.total else ""
        print(f"pseudozone {self.what}: {self.unit} {self.done}{of} {label}"
              f" ({time.perf_counter() - self.started:.1f}s)", file=sys.stderr, flush=True)


def _json_value(value: object) -> object:
    """A query result's value as JSON: dates and times in ISO 8601, NaN as null, the rest
    (decimals, uuids, intervals) as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def _date_arg(text: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from pseudozone.sample import generate

    settings = _settings(args)
    started = time.perf_counter()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = getattr(args, "start", None) or today - timedelta(days=args.days)
    counts = generate(settings, events=args.events, tenants=args.tenants, seed=args.seed,
                      batch_rows=args.batch_rows, fmt=args.format, days=args.days, start=start)
    took = time.perf_counter() - started
    print(f"generated under {settings.landing} in {took:.1f}s: "
          + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pseudozone.ingest import BatchResult, ingest_pending, pending
    from pseudozone.keys import KeyRing

    settings = _settings(args)
    # a missing or different master key stops the run before anything is read or written
    # (workers load the key themselves, so it is checked here once, up front)
    KeyRing.load(settings)
    progress = _Progress("ingest", "batch")
    if progress.on:
        progress.total = len(pending(settings))  # a listing: file names, sizes and times

    def show(res: BatchResult) -> None:
        extra = f" reason={res.reason['code']}" if res.reason else ""
        print(f"{res.status:<11} {res.batch_id}  rows_in={res.rows_in:,} "
              f"rows_event={res.rows_event:,} rows_pii={res.rows_pii:,}{extra}", flush=progress.on)
        progress(res.status)

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
    if args.json:
        if len(set(columns)) < len(columns):
            raise PseudozoneError("--json needs distinct column names: give repeated ones an alias (AS name)")
        _print_json([{c: _json_value(v) for c, v in zip(columns, row, strict=True)} for row in rows])
        return 0
    print(format_table(columns, rows))
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    from pseudozone import query

    settings = _settings(args)
    try:
        rows = query.share(settings, args.purpose, args.dataset, args.out, tenant=args.tenant)
    except ValueError as exc:
        raise PseudozoneError(str(exc)) from None
    print(f"{rows} row(s) of {args.dataset} for {args.purpose} written to {args.out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pseudozone import report

    settings = _settings(args)
    if args.json:
        _print_json({"root": str(settings.root), **report.status(settings)})
    else:
        print(report.status_text(settings))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.tenants, args.seed, args.batch_rows, args.format, args.days = 3, 7, 1_000_000, "parquet", 7
    args.json = False
    cmd_generate(args)
    args.strict, args.workers = False, 1
    cmd_ingest(args)
    cmd_status(args)
    print("\nAnalyst query over the event zone (DuckDB):\n" + DEMO_QUERY + "\n")
    args.sql = DEMO_QUERY
    return cmd_query(args)


def _print_status(status: dict[str, object]) -> None:
    print(json.dumps(status, indent=2, sort_keys=True))


def cmd_request(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    settings = _settings(args)
    if args.kind == "status":
        if not _requests_db_exists(settings):  # as get_status says it, without making the ledger
            raise PseudozoneError(f"no request {args.request_id!r}")
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
    if args.kind in ("object", "unobject"):
        raw["purpose"] = args.purpose
    status = requests.submit(settings, raw, source="cli")
    _print_status(status.to_dict())
    return 0 if status.state == "accepted" else 1


def cmd_requests(args: argparse.Namespace) -> int:
    from pseudozone.report import format_table
    from pseudozone.rights import requests

    settings = _settings(args)
    rows = [] if not _requests_db_exists(settings) else requests.list_requests(
        settings, tenant_id=args.tenant, states=tuple(args.state) if args.state else None)
    if args.json:
        _print_json([{"request_id": r.request_id, "tenant_id": r.tenant_id, "type": r.type, "state": r.state,
                      "received_at": r.received_at, "due_at": r.due_at, "completed_at": r.completed_at}
                     for r in rows])
        return 0
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
    # reading a missing SQLite state would make it; an empty database (PostgreSQL) has no check
    # either: loading the key there would record it, not check it
    if not _requests_db_exists(settings) or keys.root_holds_data(settings) is None:
        raise PseudozoneError(f"data root {settings.root} has no state database, so no recorded key to check"
                              " the configured one against; `pseudozone keys init` records it")
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


def cmd_keys_rotate_pseudonyms(args: argparse.Namespace) -> int:
    from pseudozone import keys, rotation

    settings = _settings(args)
    ring = keys.KeyRing.load(settings)  # a missing or different master key stops it before any write
    progress = _Progress("keys rotate-pseudonyms", "partition")
    result = rotation.rotate(settings, args.tenant, keyring=ring, on_partition=progress)
    if args.json:
        _print_json(result)
        return 0
    print(f"{args.tenant}: pseudonyms at version {result['to_version']} (from {result['from_version']}"
          f"{', resumed' if result['resumed'] else ''}): {result['partitions']} partition(s),"
          f" {result['rows']} zone row(s), {result['pii_rows']} PII row(s),"
          f" {result['data_keys_moved']} data key(s) moved")
    return 0


def cmd_keys_rotate_master(args: argparse.Namespace) -> int:
    from pseudozone import keys, master_rotation

    settings = _settings(args)
    new_master, new_origin = keys.load_new_master_key(args.new_key_file)
    result = master_rotation.rotate_master_key(settings, new_master, new_origin)
    if args.json:
        _print_json(result)
        return 0
    version, previous = result["master_version"], result["from_master_version"]
    if result["rewrapped_now"]:
        print(f"master key rotated: the root secret is wrapped under master key version {version} (was"
              f" {previous}); no pseudonym, KEK or data changed")
    else:
        print(f"master key already rotated to version {version} (from {previous}); nothing re-wrapped"
              f"{', the audit entry written' if result['audited'] else ''}")
    if result["key_file_replaced"]:
        print(f"the key file {settings.master_key_file} now holds the new key; back it up in the secret"
              " store. The old key is refused from now on")
    else:
        places = f"${keys.MASTER_KEY_ENV}, ${keys.MASTER_KEY_CONN_ENV} or ${keys.MASTER_KEY_FILE_ENV}"
        print(f"the old master key is refused from now on: configure the new one where the master key is"
              f" read from ({places}) on every host and worker")
    return 0


def cmd_hold_list(args: argparse.Namespace) -> int:
    from pseudozone.rights import requests

    settings = _settings(args)
    holds = (requests.list_holds(settings, tenant_id=args.tenant, include_lifted=args.all)
             if _requests_db_exists(settings) else [])
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
    settings = _settings(args)
    found = (audit.entries(settings, tenant_id=args.tenant, action=args.action, request_id=args.request,
                           since=since, limit=args.limit) if _requests_db_exists(settings) else [])
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
    from pseudozone.compliance.report import STEPS, latest, run_nightly
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
    progress = _Progress("compliance run", "step", total=len(STEPS) + 1)
    run_nightly(settings, run_id, k=args.k, retention_overrides=overrides, on_step=progress)
    # as the DAG's rotate_keys task: no earlier backup decrypts a subject erased since (ADR 0009)
    rotated = rotate_after_erasures(settings, keyring)
    progress("rotate_keys")
    if rotated["rotated"]:
        print(f"key-encryption keys rotated for {rotated['rotated']} tenant(s) with erasures since their last"
              " rotation")
    report = latest(settings)
    assert report is not None
    return _print_report(report, settings)


def cmd_compact(args: argparse.Namespace) -> int:
    from pseudozone.lake.compact import Unit, compact

    progress = _Progress("compact", "partition")

    def compacted(unit: Unit) -> None:
        progress(f"{unit.zone}/{unit.dataset} tenant={unit.tenant} day={unit.day}")

    started = time.perf_counter()
    summary = compact(_settings(args), target_rows=args.target_rows, tenants=args.tenant or None,
                      datasets=args.dataset or None, on_partition=compacted)
    took = time.perf_counter() - started
    print(f"compacted {summary['partitions']} partition(s) in {took:.1f}s: {summary['files_in']} file(s)"
          f" -> {summary['files_out']}, {summary['rows']:,} row(s); killed runs finished"
          f" {summary['rolled_forward']}, undone {summary['rolled_back']};"
          f" {summary['conflicts']} conflict(s)")
    return 1 if summary["conflicts"] else 0


def cmd_state_migrate(args: argparse.Namespace) -> int:
    from pseudozone.state_migrate import migrate

    result = migrate(_settings(args))
    if args.json:
        _print_json(result)
        return 0
    if not result["moved"]:
        print(f"nothing to move: the state of this root is in {result['target']}")
        return 0
    for moved in result["moved"]:
        rows = ", ".join(f"{table} {n}" for table, n in sorted(moved["rows"].items())) or "no rows"
        print(f"{moved['source']}: {rows}")
    print(f"moved into {result['target']}; deleted {len(result['deleted'])} local file(s)"
          + ("" if result["audited"] else " (not audited: no master key)"))
    for label in result["drop_yourself"]:
        print(f"{label} is no longer read: drop that database yourself once you have checked the move")
    return 0


HOLD_CODES = ["litigation", "regulatory_investigation", "tax_audit", "law_enforcement", "contract", "other"]
REQUEST_STATES = ["received", "accepted", "in_progress", "completed", "rejected", "failed"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none worth showing (None, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    try:
        return importlib.metadata.version("pseudozone")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """``--home`` and ``--verbose``, accepted before the subcommand and after it (where ``default``
    is SUPPRESS, so that they override only when given)."""
    parser.add_argument("--home", default=default, metavar="DIR",
                        help=f"data root (default: ${HOME_ENV}, else ./data)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        default=False if default is None else default, help="log progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pseudozone", formatter_class=_HelpFormatter,
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the installed version and exit")
    _global_options(parser, default=None)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)

    def add(subs: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
            text: str) -> argparse.ArgumentParser:
        return subs.add_parser(name, help=text, description=text, parents=[common],
                               formatter_class=_HelpFormatter)

    def json_option(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of a table")

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = add(sub, "generate", "write seeded synthetic landing data")
    gen.add_argument("--events", type=int, default=100_000, help="events to write")
    gen.add_argument("--tenants", type=int, default=3, help="tenants to spread them over")
    gen.add_argument("--seed", type=int, default=7, help="random seed (the same seed, the same data)")
    gen.add_argument("--batch-rows", type=int, default=1_000_000, help="rows per landing file")
    gen.add_argument("--format", choices=["parquet", "csv", "jsonl"], default="parquet",
                     help="landing file format")
    gen.add_argument("--days", type=int, default=7, help="days of activity to spread events over")
    gen.add_argument("--start", type=_date_arg, default=None, metavar="YYYY-MM-DD",
                     help="first day of activity (default: DAYS days before today, UTC, so that the"
                          " data ends yesterday and no retention period has passed)")
    gen.set_defaults(func=cmd_generate)

    ing = add(sub, "ingest", "pseudonymize every pending landing batch (no Airflow)")
    ing.add_argument("--strict", action="store_true", help="exit 1 if any batch was quarantined")
    ing.add_argument("--workers", type=int, default=1,
                     help="batches processed at once, one process each (about 1 GB per 1M-row batch)")
    ing.set_defaults(func=cmd_ingest)

    qry = add(sub, "query", "run SQL with DuckDB over the event zone")
    qry.add_argument("sql", help="e.g. \"SELECT event_name, count(*) FROM events GROUP BY 1\"")
    json_option(qry, "the rows (one object per row)")
    qry.set_defaults(func=cmd_query, needs_root=True)

    shr = add(sub, "share", "write a dataset as one purpose may use it (consent and objections applied)")
    shr.add_argument("--purpose", required=True, choices=sorted(PURPOSES), help="what the data is shared for")
    shr.add_argument("--dataset", required=True, help="an event-zone dataset, e.g. events")
    shr.add_argument("--tenant", help="only this tenant's rows")
    shr.add_argument("--out", required=True, type=Path, help="the Parquet file to write")
    shr.set_defaults(func=cmd_share, needs_root=True)

    sts = add(sub, "status", "rows per zone and the batch ledger")
    json_option(sts, "the zones and the batch ledger")
    sts.set_defaults(func=cmd_status, needs_root=True)

    req = add(sub, "request", "file a data-subject rights request, or show one")
    req_sub = req.add_subparsers(dest="kind", required=True, metavar="KIND")
    helps = {"object": "file an objection to a purpose (GDPR art. 21; leaves the purpose's views)",
             "unobject": "withdraw an objection to a purpose"}
    for kind in ("erase", "rectify", "restrict", "unrestrict", "export", "object", "unobject"):
        p = add(req_sub, kind, helps.get(kind, f"file a{'n' if kind[0] in 'aeiou' else ''} {kind} request"))
        p.add_argument("--tenant", required=True, help="the tenant the subject belongs to")
        p.add_argument("--user", required=True, help="the subject's user id in that tenant")
        if kind == "rectify":
            p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                           help="a corrected profile value (repeatable)")
        if kind in ("object", "unobject"):
            p.add_argument("--purpose", required=True, choices=sorted(PURPOSES),
                           help="the purpose objected to")
        p.set_defaults(func=cmd_request)
    st = add(req_sub, "status", "show one request")
    st.add_argument("request_id", help="the id printed when the request was filed")
    st.set_defaults(func=cmd_request, needs_root=True)
    rt = add(req_sub, "retry", "put a failed request back in the queue")
    rt.add_argument("request_id", help="the failed request's id")
    rt.set_defaults(func=cmd_request, needs_root=True)

    lst = add(sub, "requests", "list rights requests")
    lst.add_argument("--tenant", help="only this tenant's requests")
    lst.add_argument("--state", action="append", choices=REQUEST_STATES,
                     help="only requests in this state (repeatable)")
    json_option(lst, "the requests")
    lst.set_defaults(func=cmd_requests, needs_root=True)

    rights = add(sub, "rights", "process open rights requests without Airflow")
    rights_sub = rights.add_subparsers(dest="rights_command", required=True, metavar="COMMAND")
    add(rights_sub, "process", "intake the inbox and apply every open request").set_defaults(
        func=cmd_rights_process)

    tenant = add(sub, "tenant", "tenants of the REST door")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")
    tadd = add(tenant_sub, "add", "register a tenant and print its API token")
    tadd.add_argument("tenant", help="the new tenant's id")
    tadd.set_defaults(func=cmd_tenant_add)
    trot = add(tenant_sub, "rotate-token", "replace a tenant's API token (audited)")
    trot.add_argument("tenant", help="the tenant's id")
    trot.set_defaults(func=cmd_tenant_add, needs_root=True)

    hold = add(sub, "hold", "legal holds")
    hold_sub = hold.add_subparsers(dest="hold_command", required=True, metavar="COMMAND")
    hadd = add(hold_sub, "add", "keep a tenant's data (or one dataset / subject) through erasure")
    hadd.add_argument("--tenant", required=True, help="the tenant whose data is kept")
    hadd.add_argument("--dataset", help="only this dataset (default: all of the tenant's)")
    hadd.add_argument("--user", help="only this subject's data, by user id (default: every subject's)")
    hadd.add_argument("--reason", required=True,
                      help="why the data is kept (free text, stored encrypted; tenants see only --code)")
    hadd.add_argument("--code", default="other", choices=HOLD_CODES,
                      help="the reason code tenants and the audit log see")
    hadd.set_defaults(func=cmd_hold_add)

    key = add(sub, "keys", "the master key of this data root")
    key_sub = key.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    add(key_sub, "init", "make a new master key (a 0600 key file, unless $PSEUDOZONE_MASTER_KEY, an"
        " Airflow connection or $PSEUDOZONE_MASTER_KEY_FILE gives it) and record its check value;"
        " empty data root only"
        ).set_defaults(func=cmd_keys)
    add(key_sub, "check", "exit 0 if the configured master key is this data root's, else 2"
        ).set_defaults(func=cmd_keys, needs_root=True)
    add(key_sub, "adopt", "record the configured key as the root's, for a root from before key checks"
        " that has no data key to prove it on (you vouch that it is the right key)"
        ).set_defaults(func=cmd_keys, needs_root=True)
    krot = add(key_sub, "rotate", "new tenant KEKs: re-wrap every live data key, destroy the old KEK"
               " seeds, so that no earlier backup of the data root decrypts an erased subject's PII"
               " (ADR 0009)")
    krot.add_argument("--tenant", action="append", help="only this tenant (repeatable; default: all)")
    krot.add_argument("--after-erasures", action="store_true",
                      help="only the tenants with an erasure since their last rotation (the nightly step)")
    krot.set_defaults(func=cmd_keys_rotate, needs_root=True)
    kps = add(key_sub, "rotate-pseudonyms", "move a tenant's pseudonyms to the next version: every"
              " zone file, the PII zone and the state are rewritten, its batches and requests wait"
              " meanwhile; a killed run is resumed by running it again (ADR 0015)")
    kps.add_argument("--tenant", required=True, help="the tenant whose pseudonyms are rotated")
    json_option(kps, "the rotation's counts")
    kps.set_defaults(func=cmd_keys_rotate_pseudonyms, needs_root=True)
    kmr = add(key_sub, "rotate-master", "re-wrap the root secret under a new master key in one"
              " transaction (no pseudonym, KEK or data changes) and record the new key's check value;"
              " the old key is refused afterwards. The old key is the configured master key, the new"
              " one comes from --new-key-file, else $PSEUDOZONE_NEW_MASTER_KEY, the Airflow connection"
              " named by $PSEUDOZONE_NEW_MASTER_KEY_CONN_ID or the file named by"
              " $PSEUDOZONE_NEW_MASTER_KEY_FILE (never the command line). A generated key file in the"
              " key directory is replaced by the new key; a key from the environment must be switched"
              " by you. Audited (keys.master_rotated); run it again to finish a killed rotation (ADR 0002)")
    kmr.add_argument("--new-key-file", type=Path, metavar="PATH",
                     help="a file holding the new master key, base64 of 32 random bytes, mode 0600"
                          " (default: from the environment, as above)")
    json_option(kmr, "the rotation's versions")
    kmr.set_defaults(func=cmd_keys_rotate_master, needs_root=True)

    hlist = add(hold_sub, "list", "open legal holds (ids, scope, reason code; never the reason)")
    hlist.add_argument("--tenant", help="only this tenant's holds")
    hlist.add_argument("--all", action="store_true", help="also holds that were lifted")
    json_option(hlist, "the holds")
    hlist.set_defaults(func=cmd_hold_list, needs_root=True)
    hlift = add(hold_sub, "lift", "lift a legal hold (audited)")
    hlift.add_argument("hold_id", type=int, help="the hold's number (see hold list)")
    hlift.add_argument("--code", default="other", choices=HOLD_CODES, help="why it is lifted")
    hlift.set_defaults(func=cmd_hold_lift, needs_root=True)

    aud = add(sub, "audit", "the hash-chained audit log")
    aud_sub = aud.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    add(aud_sub, "verify", "check the whole chain and its checkpoint, then move the checkpoint to the"
        " chain's head").set_defaults(func=cmd_audit_verify, needs_root=True)
    ashow = add(aud_sub, "show", "audit entries, oldest first, filtered")
    ashow.add_argument("--tenant", help="only this tenant's entries")
    ashow.add_argument("--action", help="an action, or a prefix ending in '*' (hold.*)")
    ashow.add_argument("--request", help="a request id")
    ashow.add_argument("--since", help="ISO date or time, UTC unless it says otherwise")
    ashow.add_argument("--limit", type=int, default=100, help="the newest N entries")
    json_option(ashow, "the entries")
    ashow.set_defaults(func=cmd_audit_show, needs_root=True)

    rep = add(sub, "report", "the latest compliance report's summary (exit 1 if it failed)")
    rep.add_argument("--json", action="store_true", help="print the whole report as JSON")
    rep.set_defaults(func=cmd_report, needs_root=True)
    comp = add(sub, "compliance", "the nightly compliance run without Airflow")
    comp_sub = comp.add_subparsers(dest="compliance_command", required=True, metavar="COMMAND")
    crun = add(comp_sub, "run", "retention, validation of every zone, erasures, deadlines, audit chain,"
               " k-anonymity, then the report")
    crun.add_argument("--k", type=int, default=5, help="k-anonymity threshold")
    crun.add_argument("--retention", action="append", metavar="DATASET=DAYS",
                      help="override a contract's retention_days (repeatable)")
    crun.add_argument("--run-id", help="name of this run (default: manual__<UTC time>)")
    crun.set_defaults(func=cmd_compliance_run)

    cmp = add(sub, "compact", "merge each partition-day's small files into one per subject bucket")
    cmp.add_argument("--target-rows", type=int, default=5_000_000,
                     help="most rows per file; a bucket of more is cut into parts")
    cmp.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    cmp.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    cmp.set_defaults(func=cmd_compact)

    stt = add(sub, "state", "the state database")
    stt_sub = stt.add_subparsers(dest="state_command", required=True, metavar="COMMAND")
    smig = add(stt_sub, "migrate", "move state kept apart by an earlier release (state/requests.db,"
               " $PSEUDOZONE_REQUESTS_DB_URL) or in the local state file into the state database"
               " ($PSEUDOZONE_STATE_DB_URL, else state/pseudozone.db) in one transaction, then delete"
               " the local files it moved; a database named by URL is left for you to drop (ADR 0018)")
    json_option(smig, "what was moved")
    smig.set_defaults(func=cmd_state_migrate, needs_root=True)

    demo = add(sub, "demo", "generate, ingest, show what was produced (no Airflow)")
    demo.add_argument("--events", type=int, default=100_000, help="events to generate")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "needs_root", False):
            require_data_root(_settings(args))
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
