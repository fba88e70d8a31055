"""Compaction benchmark: analyst queries on many small files, after compaction, and on the
same rows written as one file per partition-day.

Builds, for one tenant, ``--days`` date partitions of the events dataset with
``--batches`` landing batches a day (hourly landing: 24), each split into the contract's
4 subject buckets, as ingest lays them out (``<batch>.bNN.parquet``), ``--rows`` rows per
batch (or ``--events`` rows in all, spread evenly over the ``days × batches`` batches:
``make bench`` gives ``--events $(BENCH_EVENTS) --days 365``, a year of hourly batches); and
beside it the same rows as one file per partition-day (a plain pyarrow rewrite, timed: the
floor for compaction). Then times, best of ``--repeat``:

* a grouped count (``event_name``, whole lake), a one-month filter (count and distinct
  subjects) and one subject's rows, with DuckDB through ``pseudozone.query``;
* on the small files, after ``pseudozone.lake.compact.compact`` (timed), and on the
  one-file-per-day lake.

Prints the figures (with the 1-minute load average around each phase and the process's
peak RSS after the build, after the small-file queries and after the compaction) and writes
``<workdir>/results-compaction.json``.  Files are written
directly in the zone layout (no pseudonymization: the query cost depends on the file
count and sizes, not on how the values were made).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pseudozone import query, zones
from pseudozone.config import Settings
from pseudozone.lake import compact, layout

HERE = Path(__file__).resolve().parent
TENANT = "acme"
BUCKETS = 4
NAMES = ["page_view", "click", "search", "add_to_cart", "checkout:started", "purchase", "login",
         "logout", "signup", "share", "scroll", "video_play"]
START = dt.date(2026, 1, 1)


def _batch(rng: np.random.Generator, day: dt.date, hour: int, n: int, ids: pa.Array) -> pa.Table:
    who = rng.integers(0, len(ids), n)
    base = dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)
    micros = int(base.timestamp()) * 1_000_000 + rng.integers(0, 3600, n) * 1_000_000
    return pa.table({
        "event_id": pa.array([f"{x:032x}" for x in rng.integers(0, 2**62, n)]),
        "subject_id": ids.take(pa.array(who)),
        "event_ts": pa.array(micros, pa.timestamp("us", tz="UTC")),
        "event_name": pa.array(rng.choice(NAMES, n)),
        "country": pa.array(rng.choice(["DE", "FR", "US", "GB", "ES"], n)),
        "amount": pa.array(rng.random(n) * 100),
        "_bucket": pa.array(who % BUCKETS),
    })


def batch_rows(events: int, days: int, batches: int) -> list[int]:
    """Rows of each of the ``days × batches`` batches: ``events`` in all, spread evenly."""
    count = days * batches
    return [events // count + (1 if i < events % count else 0) for i in range(count)]


def build(small: Settings, daily: Settings, days: int, batches: int, rows: list[int], subjects: int,
          seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ids = pa.array([f"v1:{x:064x}" for x in range(subjects)])
    files = 0
    rewrite = 0.0
    for d in range(days):
        day = START + dt.timedelta(days=d)
        parts = []
        for h in range(batches):
            table = _batch(rng, day, h * 24 // batches, rows[d * batches + h], ids)
            batch = f"events.{TENANT}.events-{d:04d}{h:02d}"
            for b in range(BUCKETS):
                rows_b = table.filter(pa.compute.equal(table["_bucket"], b)).drop_columns(["_bucket"])
                f = layout.event_file(layout.EVENTS, "events", TENANT, day.isoformat(), batch, b)
                zones.write_parquet(rows_b, f.path(small.zones), sync_dir=False)
                files += 1
                parts.append(f.path(small.zones))
        # the floor: read the day's small files, write them as one file (no sort)
        started = time.perf_counter()
        merged = pa.concat_tables([pq.read_table(p) for p in parts])
        out = layout.event_file(layout.EVENTS, "events", TENANT, day.isoformat(), "daily").path(daily.zones)
        zones.write_parquet(merged, out, sync_dir=False)
        rewrite += time.perf_counter() - started
    return {"small_files": files, "rows": sum(rows), "plain_rewrite_s": round(rewrite, 2)}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def timed(settings: Settings, sql: str, repeat: int) -> tuple[float, list[tuple[object, ...]]]:
    """Best wall time of ``repeat`` runs (each opens its own connection, as the CLI does), and
    the answer."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        answer = query.run(settings, sql)[1]
        best = min(best, time.perf_counter() - started)
    return round(best, 3), answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--batches", type=int, default=24, help="landing batches per day")
    ap.add_argument("--rows", type=int, default=250, help="rows per batch (ignored with --events)")
    ap.add_argument("--events", type=int, default=None,
                    help="rows in all, spread evenly over the days × batches batches")
    ap.add_argument("--subjects", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "compaction")
    args = ap.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    small, daily = Settings.from_env(args.workdir / "small"), Settings.from_env(args.workdir / "daily")
    small.ensure()
    daily.ensure()
    rows = (batch_rows(args.events, args.days, args.batches) if args.events is not None
            else [args.rows] * (args.days * args.batches))
    load = {"build": _load()}
    started = time.perf_counter()
    built = build(small, daily, args.days, args.batches, rows, args.subjects, args.seed)
    built["build_s"] = round(time.perf_counter() - started, 1)
    built["peak_rss_after_build_mib"] = _peak_rss_mib()
    month = START + dt.timedelta(days=min(31, args.days // 2))
    end = month + dt.timedelta(days=30)
    subject = f"v1:{42:064x}"
    queries = {
        "grouped_count": "SELECT event_name, count(*) FROM events GROUP BY 1 ORDER BY 1",
        "one_month": (f"SELECT count(*), count(DISTINCT subject_id) FROM events "
                      f"WHERE date BETWEEN '{month}' AND '{end}'"),
        "one_subject": f"SELECT count(*), max(event_ts) FROM events WHERE subject_id = '{subject}'",
    }
    results: dict[str, Any] = {**built, "days": args.days, "batches_per_day": args.batches,
                               "rows_per_batch": f"{min(rows)}-{max(rows)}" if min(rows) != max(rows)
                               else rows[0], "subjects": args.subjects}
    answers = {}
    load["queries_small"] = _load()
    for name, sql in queries.items():
        results[f"{name}_small_s"], answers[name] = timed(small, sql, args.repeat)
    results["peak_rss_after_small_queries_mib"] = _peak_rss_mib()
    load["compaction"] = _load()
    started = time.perf_counter()
    summary = compact.compact(small)
    results["compaction_s"] = round(time.perf_counter() - started, 2)
    results["peak_rss_after_compaction_mib"] = _peak_rss_mib()
    assert summary["tenants_busy"] == 0 and summary["conflicts"] == 0, summary
    assert summary["partitions"] == args.days and summary["rows"] == built["rows"], summary
    assert summary["files_in"] == built["small_files"], summary
    results["compacted_files"] = summary["files_out"]
    results["daily_files"] = args.days
    load["queries_compacted_daily"] = _load()
    for name, sql in queries.items():
        results[f"{name}_compacted_s"], compacted_answer = timed(small, sql, args.repeat)
        results[f"{name}_daily_s"], daily_answer = timed(daily, sql, args.repeat)
        assert compacted_answer == answers[name] == daily_answer, name
        results[f"{name}_compacted_vs_daily"] = round(results[f"{name}_compacted_s"]
                                                      / max(results[f"{name}_daily_s"], 1e-9), 2)
    floor = max(built["plain_rewrite_s"], 1e-9)
    results["compaction_vs_plain_rewrite"] = round(results["compaction_s"] / floor, 2)
    load["end"] = _load()
    results["load_1min"] = load
    out = args.workdir / "results-compaction.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
