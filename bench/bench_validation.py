"""Nightly validation benchmark: ``validate_zones`` on an event zone against a plain pyarrow copy of it.

One invocation:

1. builds, once and untimed, an event zone in ``<workdir>/validation-zone``: the
   sample landing data comes from ``bench_ingest.ensure_data`` (``<workdir>/data``,
   shared with the ingest benchmark and skipped when its marker matches), the zone's
   ``landing/events`` hard-links those files and ``pseudozone.ingest.ingest_pending``
   ingests them in a child process under a throw-away master key.  A marker file in
   the zone records the parameters; a later ``--keep`` run with the same ones reuses
   the zone without even looking at the landing data;
2. reads every zone file once (untimed) to warm the page cache, then runs, ``--repeat``
   times, two phases over the same files, each in its own child process so that each
   phase's peak RSS is its own:

   * ``copy``     - the floor: every Parquet file of ``zones/events/events/**`` read
     with ``pyarrow.parquet.read_table`` and written with ``pyarrow.parquet.write_table``
     (zstd level 1, the zones' codec) to a scratch tree mirroring the zone's;
   * ``validate`` - ``pseudozone.compliance.nightly.validate_zones(settings)``, the step
     the ``nightly_compliance`` DAG runs: every file of every zone against its Great
     Expectations suite, a few files (up to ``rows_per_run`` rows) per run, so one
     partition's files at a time and never the whole zone in one DataFrame.  It must
     succeed and count as many rows as the copy, or the benchmark exits non-zero;

3. prints wall time, rows/s and peak RSS per phase, the validate/copy wall ratio
   against its target (<= 3.0x) and the validation's peak RSS against 8 GiB, and
   writes them as JSON to ``<workdir>/results-validation.json``.

Each child times only its work, not interpreter start-up or imports: the validate
child imports ``pseudozone.compliance.nightly``, ``pseudozone.validation.suites`` and
``great_expectations`` (and the copy child ``pyarrow.dataset``, which ``read_table``
loads on first use) before its timer starts.  Everything ``validate_zones`` does in
a fresh process is timed, including creating its ephemeral GX context.  The parent
reads a child's peak RSS from ``os.wait4`` (``ru_maxrss``) and the child samples the
summed RSS of its process tree (``bench_ingest.TreeRssSampler``).  See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402  (after the path insert)

DEFAULT_WORKDIR = HERE / "out"
ZONE_DIR = "validation-zone"
RUN_DIR = "validation-run"
ZONE_MARKER = ".bench-validation-zone.json"
RESULTS = "results-validation.json"
WALL_TARGET = 3.0
RSS_LIMIT_MIB = bi.RSS_LIMIT_MIB
COPY_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1}  # as the zones
PHASE_ORDER = ("copy", "validate")
LABELS = {"copy": "copy (floor)", "validate": "validate"}

Json = dict[str, Any]


# -- helpers shared by parent and children ----------------------------------------------


def _zone_dataset(root: Path) -> Path:
    """The events dataset of the event zone under a data root."""
    return root / "zones" / "events" / bi.DATASET


def _zone_files(root: Path) -> list[Path]:
    """Published Parquet files of the events dataset (as ``zones.parquet_files`` lists them)."""
    base = _zone_dataset(root)
    if not base.exists():
        return []
    return sorted(p for p in base.rglob("*.parquet") if not p.name.startswith("."))


# -- child phases ---------------------------------------------------------------------------


def phase_zone(args: argparse.Namespace) -> Json:
    """Build the event zone (untimed by the parent): ``ingest_pending`` on the linked landing."""
    import base64

    from pseudozone.config import Settings
    from pseudozone.ingest import ingest_pending

    # a throw-away master key, as bench_ingest's ingest phase uses
    os.environ["PSEUDOZONE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    settings = Settings.from_env(args.root)
    t0 = time.perf_counter()
    results = ingest_pending(settings)
    wall = time.perf_counter() - t0
    bad = [r.batch_id for r in results if r.status != "done"]
    if bad:
        raise SystemExit(f"ingest did not finish every batch: {bad}")
    files = _zone_files(Path(args.root))
    return {"wall_s": wall, "rows": sum(r.rows_in for r in results), "batches": len(results),
            "files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def phase_copy(args: argparse.Namespace) -> Json:
    """The floor: read each zone file, write it back unchanged to a mirrored scratch tree."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    importlib.import_module("pyarrow.dataset")  # read_table loads it on its first call
    src = _zone_dataset(Path(args.root))
    out = Path(args.out)
    baseline = bi._rss_now_kib()
    sampler = bi.TreeRssSampler()

    t0 = time.perf_counter()
    files = _zone_files(Path(args.root))
    rows = 0
    for path in files:
        table = pq.read_table(path)
        target = out / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target, **COPY_OPTIONS)
        rows += table.num_rows
        del table
    wall = time.perf_counter() - t0
    tree_peak = sampler.stop()

    written = list(out.rglob("*.parquet"))
    return {"wall_s": wall, "rows": rows, "files": len(files),
            "bytes_in": sum(p.stat().st_size for p in files),
            "bytes_out": sum(p.stat().st_size for p in written), "files_out": len(written),
            "rss_baseline_kib": baseline, "tree_peak_rss_kib": tree_peak, "pyarrow": pa.__version__}


def phase_validate(args: argparse.Namespace) -> Json:
    """``validate_zones`` on the whole data root, as the nightly DAG calls it."""
    # imports are not the work: load the validation stack before the timer
    nightly = importlib.import_module("pseudozone.compliance.nightly")
    importlib.import_module("pseudozone.validation.suites")
    gx = importlib.import_module("great_expectations")
    importlib.import_module("pyarrow.dataset")
    from pseudozone.config import Settings

    settings = Settings.from_env(args.root)
    rows_per_run = args.rows_per_run if args.rows_per_run is not None else nightly.ROWS_PER_RUN
    baseline = bi._rss_now_kib()
    sampler = bi.TreeRssSampler()

    t0 = time.perf_counter()
    result = nightly.validate_zones(settings, rows_per_run=rows_per_run)
    wall = time.perf_counter() - t0
    tree_peak = sampler.stop()

    sections = [{"zone": s["zone"], "dataset": s["dataset"], "tenant_id": s["tenant_id"],
                 "files": s["files"], "rows": s["rows"], "success": s["success"],
                 "failures": len(s["failures"]),
                 # failures name file, expectation, column and PII form, never a value
                 "first_failures": s["failures"][:5]} for s in result["zones"]]
    return {"wall_s": wall, "rows": int(result["rows"]), "files": int(result["files"]),
            "success": bool(result["success"]), "failed_files": int(result["failed_files"]),
            "seconds_reported": result["seconds"], "rows_per_run": rows_per_run,
            "sections": sections, "rss_baseline_kib": baseline, "tree_peak_rss_kib": tree_peak,
            "great_expectations": getattr(gx, "__version__", None)}


PHASES = {"zone": phase_zone, "copy": phase_copy, "validate": phase_validate}


# -- parent -----------------------------------------------------------------------------------


def run_child(phase: str, *extra: str) -> Json:
    """One phase of this script in a fresh interpreter (``bench_ingest.run_child``)."""
    return bi.run_child(phase, *extra, script=Path(__file__))


def ensure_zone(workdir: Path, events: int, batch_rows: int) -> Json:
    """The ingested event zone, built once; reused when its marker has the same parameters."""
    root = workdir / ZONE_DIR
    marker = root / ZONE_MARKER
    wanted = {"events": events, "batch_rows": batch_rows, "tenants": bi.TENANTS, "seed": bi.SEED}
    if marker.exists() and _zone_files(root):
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("params") == wanted:
            return {**previous, "skipped": True}
    gen = bi.ensure_data(workdir, events, batch_rows)
    bi.link_landing(workdir / "data", root)  # removes any previous zone first
    zone = run_child("zone", "--root", str(root))
    built = {"params": wanted, "generate": gen, "zone": zone}
    marker.write_text(json.dumps(built, indent=2) + "\n")
    return {**built, "skipped": False}


def summarize(runs: list[Json]) -> Json:
    best: Json = {}
    for phase in PHASE_ORDER:
        reports = [r[phase] for r in runs]
        fastest = min(reports, key=lambda r: float(r["wall_s"]))
        best[phase] = {"wall_s": fastest["wall_s"], "rows": fastest["rows"], "files": fastest["files"],
                       "rows_per_s": fastest["rows"] / fastest["wall_s"] if fastest["wall_s"] else 0.0,
                       # peak memory: the highest of all repeats (conservative)
                       "peak_rss_kib": max(bi._peak(r) for r in reports),
                       "rss_baseline_kib": max(int(r["rss_baseline_kib"]) for r in reports)}
    wall_ratio = best["validate"]["wall_s"] / best["copy"]["wall_s"]
    rss_ratio = best["validate"]["peak_rss_kib"] / best["copy"]["peak_rss_kib"]
    verdicts = {"validate": {
        "ratios": {"wall": wall_ratio, "peak_rss": rss_ratio},
        "targets": {"wall": {"max_ratio": WALL_TARGET, "pass": wall_ratio <= WALL_TARGET},
                    "peak_rss_abs": {"max_mib": RSS_LIMIT_MIB,
                                     "pass": bi._mib(best["validate"]["peak_rss_kib"]) < RSS_LIMIT_MIB}}}}
    return {"best": best, "verdicts": verdicts}


def print_table(built: Json, summary: Json, runs: list[Json], events: int) -> None:
    best = summary["best"]
    print()
    print(f"pseudozone nightly validation benchmark: {events:,} events, {bi.TENANTS} tenants, "
          f"{best['validate']['files']} zone files, {len(runs)} repeat(s), {os.cpu_count()} CPU(s)")
    print()
    head = f"{'phase':<20}{'wall s':>10}{'rows/s':>14}{'peak RSS MiB':>15}{'base RSS MiB':>15}"
    print(head)
    print("-" * len(head))
    zone = built.get("zone", {})
    label = "zone build (cached)" if built.get("skipped") else "zone build"
    rss = f"{bi._mib(zone['peak_rss_kib']):>15.0f}" if "peak_rss_kib" in zone else f"{'-':>15}"
    wall = f"{zone['wall_s']:>10.2f}" if isinstance(zone.get("wall_s"), int | float) else f"{'-':>10}"
    print(f"{label:<20}{wall}{'':>14}{rss}{'':>15}   (untimed setup: ingest_pending)")
    for phase in PHASE_ORDER:
        b = best[phase]
        print(f"{LABELS[phase]:<20}{b['wall_s']:>10.2f}{b['rows_per_s']:>14,.0f}"
              f"{bi._mib(b['peak_rss_kib']):>15.0f}{bi._mib(b['rss_baseline_kib']):>15.0f}")
    if len(runs) > 1:
        walls = "  ".join(f"{LABELS[p]} [" + ", ".join(f"{r[p]['wall_s']:.2f}" for r in runs) + "]"
                          for p in PHASE_ORDER)
        print(f"\nall runs (wall s): {walls}")
    print()
    verdict = summary["verdicts"]["validate"]
    ratios, targets = verdict["ratios"], verdict["targets"]
    print(f"{'validate/copy wall':<26}{ratios['wall']:6.2f}x   target <= {WALL_TARGET:.1f}x   "
          f"{bi._verdict(targets['wall']['pass'])}")
    print(f"{'validate/copy peak RSS':<26}{ratios['peak_rss']:6.2f}x   (no target)")
    print(f"{'validate peak RSS':<26}{bi._mib(best['validate']['peak_rss_kib']):6.0f} MiB  target < 8 GiB   "
          f"{bi._verdict(targets['peak_rss_abs']['pass'])}")


def check_validation(copy: Json, validate: Json) -> None:
    """The validation must pass and must have seen exactly the rows the copy read."""
    problems = []
    if not validate["success"]:
        problems.append(f"validation failed ({validate['failed_files']} file(s) with failures)")
    if validate["rows"] != copy["rows"]:
        problems.append(f"row counts differ: copy {copy['rows']}, validate {validate['rows']}")
    if problems:
        for section in validate["sections"]:
            if not section["success"] or section["failures"]:
                print(f"  {section['zone']}/{section['dataset']}/tenant_id={section['tenant_id']}: "
                      f"{section['failures']} failure(s), first: {section['first_failures']}",
                      file=sys.stderr)
        raise SystemExit("VALIDATION CHECK FAILED: " + "; ".join(problems))


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / ZONE_DIR
    run_dir = workdir / RUN_DIR
    copy_out = run_dir / "copy"

    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: 1-minute load average is {load_start[0]:.2f} before the benchmark; "
              "other work on this machine may skew the timings", flush=True)
    built = ensure_zone(workdir, args.events, args.batch_rows)
    files = _zone_files(root)
    if not files:
        raise SystemExit("the event zone has no files")
    zone_bytes = bi.warm_page_cache(files)

    extra = ["--rows-per-run", str(args.rows_per_run)] if args.rows_per_run is not None else []
    runs: list[Json] = []
    for i in range(args.repeat):
        shutil.rmtree(copy_out, ignore_errors=True)
        os.sync()  # no dirty pages from earlier phases get flushed inside a timed region
        run: Json = {"copy": run_child("copy", "--root", str(root), "--out", str(copy_out))}
        shutil.rmtree(copy_out, ignore_errors=True)
        os.sync()
        run["validate"] = run_child("validate", "--root", str(root), *extra)
        check_validation(run["copy"], run["validate"])
        runs.append(run)
        print(f"run {i + 1}/{args.repeat}: " + ", ".join(
            f"{LABELS[p]} {run[p]['wall_s']:.2f}s ({bi._mib(bi._peak(run[p])):.0f} MiB)"
            for p in PHASE_ORDER), flush=True)

    summary = summarize(runs)
    print_table(built, summary, runs, args.events)
    results = {
        "config": {"events": args.events, "batch_rows": args.batch_rows, "tenants": bi.TENANTS,
                   "seed": bi.SEED, "repeat": args.repeat,
                   "rows_per_run": runs[0]["validate"]["rows_per_run"],
                   "copy_write_options": COPY_OPTIONS, "zone_files": len(files), "zone_bytes": zone_bytes},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pyarrow": runs[0]["copy"].get("pyarrow"),
                    "great_expectations": runs[0]["validate"].get("great_expectations"),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "zone_build": built,
        "runs": runs,
        **summary,
    }
    out = workdir / RESULTS
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")

    shutil.rmtree(run_dir, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        if not built.get("skipped") and not built["generate"].get("skipped"):
            # landing data this run generated (data kept by an earlier --keep run stays)
            shutil.rmtree(workdir / "data", ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bi.common_parser(
        __doc__, workdir=DEFAULT_WORKDIR, workdir_help="data, zone and results directory (default bench/out)",
        keep_help="keep the landing data and the ingested zone (re-runs then skip building it)",
        repeat_help="copy+validate pairs to run; best wall wins")
    parser.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="rows per landing file (default 1M)")
    parser.add_argument("--rows-per-run", type=int, default=None,
                        help="validate_zones(rows_per_run=...): rows per GX run "
                             "(default: the library's, 2,000,000)")
    # internal: which phase a child process runs, and its paths
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch_rows < 1 or args.repeat < 1:
        parser.error("--events, --batch-rows and --repeat must be positive")
    if args.rows_per_run is not None and args.rows_per_run < 1:
        parser.error("--rows-per-run must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return bi.run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    sys.exit(main())
