"""``pseudozone`` command line: generate, ingest, query, status, demo.

The data root comes from ``--home`` or ``PSEUDOZONE_HOME`` (default ``./data``).
Errors are one line on stderr with exit status 2, never a traceback: messages
are written to be safe (no data values).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

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

    settings = _settings(args)

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
    except (ValueError, OSError) as exc:
        print(f"pseudozone: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
