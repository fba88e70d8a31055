"""Pseudonym rotation benchmark (issue 10): one tenant moved from version 1 to 2, against a plain
rewrite of that tenant's event zone.

Uses the rights benchmark's lake (``bench_rights.ensure_lake``: the same generated and ingested
data, built once and reused with ``--keep``), restored to a fresh working copy before each
phase. Phases, each in its own interpreter:

* ``rewrite``: every event- and restricted-zone file of the tenant read and written back
  atomically (``zones.write_parquet``): the I/O floor of touching each of its files once;
* ``rotate``: ``pseudozone.rotation.rotate`` of the tenant: every partition read, every
  pseudonym and ``[id:]`` token stepped, rows re-bucketed and sorted, swapped in, the PII
  zone re-encrypted, the state and the request ledger re-keyed.

Target: rotate <= 1.5x rewrite (the issue's). A check after the rotation reads every file of
the tenant and counts values of version 1 left (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402  (after the path insert)
import bench_rights as br  # noqa: E402

TENANT = "acme"
TARGET = 1.5
RESULTS = "results-rotation.json"
Json = dict[str, Any]


def _tenant_files(settings: Any) -> list[Any]:
    from pseudozone import zones
    from pseudozone.lake import layout

    files: list[Any] = []
    for zone in layout.PARTITIONED:
        root = layout.zone_root(settings, zone)
        for _dataset, tenant, tdir in layout.tenant_dirs(root):
            if tenant == TENANT:
                files += zones.parquet_files(tdir)
    return files


def phase_rewrite(args: argparse.Namespace) -> Json:
    import pyarrow.parquet as pq

    from pseudozone import zones
    from pseudozone.config import Settings

    settings = Settings.from_env(args.root)
    t0 = time.perf_counter()
    files = _tenant_files(settings)
    rows = 0
    for path in files:
        table = pq.read_table(path)
        rows += table.num_rows
        zones.write_parquet(table, path)
        del table
    return {"wall_s": time.perf_counter() - t0, "files": len(files), "rows": rows}


def phase_rotate(args: argparse.Namespace) -> Json:
    from pseudozone.config import Settings
    from pseudozone.keys import KeyRing
    from pseudozone.rotation import rotate

    settings = Settings.from_env(args.root)
    ring = KeyRing.load(settings)
    t0 = time.perf_counter()
    result = rotate(settings, TENANT, keyring=ring, helpers=args.helpers)
    return {"wall_s": time.perf_counter() - t0, "files_in": result["files_in"],
            "files_out": result["files_out"], "rows": result["rows"], "partitions": result["partitions"],
            "pii_rows": result["pii_rows"], "data_keys_moved": result["data_keys_moved"]}


def phase_check(args: argparse.Namespace) -> Json:
    """Values of version 1 left in the tenant's event and restricted zones (after a rotation)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pseudozone.config import Settings

    settings = Settings.from_env(args.root)
    left = checked = 0
    for path in _tenant_files(settings):
        table = pq.read_table(path)
        for name in ("subject_id", "anonymous_pid", "event_id", "session_id", "request_id"):
            if name in table.column_names:
                col = table[name]
                checked += len(col) - col.null_count
                left += int(pc.sum(pc.starts_with(col, "v1:")).as_py() or 0)
    return {"wall_s": 0.0, "values_checked": checked, "v1_left": left}


PHASES = {"rewrite": phase_rewrite, "rotate": phase_rotate, "check": phase_check}


def run_child(phase: str, root: Path, events: int, helpers: int | None = None) -> Json:
    extra = ["--helpers", str(helpers)] if helpers is not None else []
    return bi.run_child(phase, "--root", str(root), "--events", str(events), *extra, script=Path(__file__))


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pristine, run_dir = workdir / "pristine", workdir / "run-rotation"
    os.environ.pop(br.KEY_DIR_ENV, None)
    load_start = os.getloadavg()
    # the rights benchmark's lake (its child phases generate and ingest run from this script)
    lake = br.ensure_lake(workdir, args.events)
    print(f"lake {'reused' if lake['skipped'] else 'built'}: {args.events:,} events, "
          f"event zone {lake['ingest']['event_zone_files']} files", flush=True)
    br.warm_page_cache(pristine / "zones")
    runs: list[Json] = []
    for i in range(args.repeat):
        run: Json = {}
        for phase in ("rewrite", "rotate"):
            br.restore(pristine, run_dir)
            os.sync()
            run[phase] = run_child(phase, run_dir, args.events, args.helpers)
        run["check"] = run_child("check", run_dir, args.events)
        if run["check"]["v1_left"]:
            raise SystemExit(f"rotation left {run['check']['v1_left']} version-1 values")
        runs.append(run)
        print(f"run {i + 1}/{args.repeat}: rewrite {run['rewrite']['wall_s']:.2f} s, "
              f"rotate {run['rotate']['wall_s']:.2f} s", flush=True)
    rewrite = min(r["rewrite"]["wall_s"] for r in runs)
    rotate = min(r["rotate"]["wall_s"] for r in runs)
    best = min(runs, key=lambda r: r["rotate"]["wall_s"])
    ratio = rotate / rewrite
    print()
    print(f"tenant {TENANT}: {best['rewrite']['files']} event/restricted-zone files, "
          f"{best['rewrite']['rows']:,} rows")
    print(f"{'rewrite of the tenant (base)':<32}{rewrite:>9.2f} s")
    print(f"{'rotation v1 -> v2':<32}{rotate:>9.2f} s   ({best['rotate']['partitions']} partitions, "
          f"{best['rotate']['files_in']} -> {best['rotate']['files_out']} files, "
          f"{best['rotate']['pii_rows']} PII rows, {best['rotate']['data_keys_moved']} data keys moved)")
    verdict = br._verdict(ratio <= TARGET)
    print(f"{'rotation / rewrite':<32}{ratio:>9.2f}x   target <= {TARGET:.2f}x   {verdict}")
    print(f"check: {best['check']['values_checked']:,} pseudonym values read after the rotation, "
          f"{best['check']['v1_left']} of version 1")
    out = workdir / RESULTS
    out.write_text(json.dumps({"events": args.events, "tenant": TENANT, "runs": runs, "ratio": ratio,
                               "target": TARGET, "loadavg_start": load_start,
                               "loadavg_end": os.getloadavg()}, indent=2) + "\n")
    print(f"\nresults: {out}")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(br.key_dir(run_dir), ignore_errors=True)
    if not args.keep:
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.rmtree(br.key_dir(pristine), ignore_errors=True)
        (workdir / br.KEY_FILE).unlink(missing_ok=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bi.common_parser(__doc__, workdir=br.DEFAULT_WORKDIR,
                              workdir_help="the rights benchmark's lake and this script's results",
                              keep_help="keep the lake for a later run", repeat_help="rounds of both phases")
    parser.add_argument("--helpers", type=int, default=None,
                        help="hash helper processes of the rotation (default: one per further core, max 3)")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bi.run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    raise SystemExit(main())
