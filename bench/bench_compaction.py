"""Compaction benchmark: analyst queries on many small files, after compaction, and on the
same rows written as one file per partition-day.

Builds, for one tenant, ``--days`` date partitions of the events dataset with
``--batches`` landing batches a day (hourly landing: 24), each split into the contract's
4 subject buckets, as ingest lays them out (``<batch>.bNN.parquet``), ``--rows`` rows per
batch; and beside it the same rows as one file per partition-day (a plain pyarrow
rewrite, timed: the floor for compaction). Then times, best of ``--repeat``:

* a grouped count (``event_name``, whole lake), a one-month filter (count and distinct
  subjects) and one subject's rows, with DuckDB through ``pseudozone.query``;
* on the small files, after ``pseudozone.lake.compact.compact`` (timed), and on the
  one-file-per-day lake.

Prints the figures and writes ``<workdir>/results-compaction.json``.  Files are written
directly in the zone layout (no pseudonymization: the query cost depends on the file
count and sizes, not on how the values were made).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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


def _batch(rng: np.random.Generator, day: dt.date, hour: int, n: int, subjects: int) -> pa.Table:
    who = rng.integers(0, subjects, n)
    base = dt.datetime(day.year, day.month, day.day, hour, tzinfo=dt.UTC)
    ts = [base + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 3600, n)]
    return pa.table({
        "event_id": pa.array([f"{x:032x}" for x in rng.integers(0, 2**62, n)]),
        "subject_id": pa.array([f"v1:{x:064x}" for x in who]),
        "event_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "event_name": pa.array(rng.choice(NAMES, n)),
        "country": pa.array(rng.choice(["DE", "FR", "US", "GB", "ES"], n)),
        "amount": pa.array(rng.random(n) * 100),
        "_bucket": pa.array(who % BUCKETS),
    })


def build(small: Settings, daily: Settings, days: int, batches: int, rows: int, subjects: int,
          seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    files = 0
    rewrite = 0.0
    for d in range(days):
        day = START + dt.timedelta(days=d)
        parts = []
        for h in range(batches):
            table = _batch(rng, day, h * 24 // batches, rows, subjects)
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
    return {"small_files": files, "rows": days * batches * rows, "plain_rewrite_s": round(rewrite, 2)}


def timed(settings: Settings, sql: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        query.run(settings, sql)
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--batches", type=int, default=24, help="landing batches per day")
    ap.add_argument("--rows", type=int, default=250, help="rows per batch")
    ap.add_argument("--subjects", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "compaction")
    args = ap.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    small, daily = Settings.from_env(args.workdir / "small"), Settings.from_env(args.workdir / "daily")
    small.ensure()
    daily.ensure()
    built = build(small, daily, args.days, args.batches, args.rows, args.subjects, args.seed)
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
                               "rows_per_batch": args.rows}
    answers = {}
    for name, sql in queries.items():
        results[f"{name}_small_s"] = timed(small, sql, args.repeat)
        answers[name] = query.run(small, sql)[1]
    started = time.perf_counter()
    summary = compact.compact(small)
    results["compaction_s"] = round(time.perf_counter() - started, 2)
    results["compacted_files"] = summary["files_out"]
    for name, sql in queries.items():
        results[f"{name}_compacted_s"] = timed(small, sql, args.repeat)
        results[f"{name}_daily_s"] = timed(daily, sql, args.repeat)
        assert query.run(small, sql)[1] == answers[name] == query.run(daily, sql)[1], name
        results[f"{name}_compacted_vs_daily"] = round(results[f"{name}_compacted_s"]
                                                      / max(results[f"{name}_daily_s"], 1e-9), 2)
    floor = max(built["plain_rewrite_s"], 1e-9)
    results["compaction_vs_plain_rewrite"] = round(results["compaction_s"] / floor, 2)
    out = args.workdir / "results-compaction.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    main()
