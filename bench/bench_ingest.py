"""Ingest benchmark: pseudozone's event ingest against a plain pyarrow copy (the I/O floor).

One invocation:

1. generates the sample landing data once into ``<workdir>/data`` (skipped when a
   marker file says data of the same size is already there);
2. runs, ``--repeat`` times, two phases over the same *events* landing files, each in
   its own child process so that each phase's peak RSS is its own:

   * ``copy``   - the floor: read each landing file with ``pyarrow.parquet``, add the
     ``date`` column, write it as a Hive-partitioned dataset
     (``events/tenant_id=<t>/date=<YYYY-MM-DD>/*.parquet``) with ``write_dataset``;
   * ``ingest`` - ``pseudozone.ingest.process_batch`` on every events batch, exactly as
     the CLI and the DAG run it, into a fresh data root whose landing tree hard-links
     the same files;

3. prints wall time, rows/s and peak RSS per phase, the ingest/copy ratios against
   the targets (wall <= 2.0x, peak RSS <= 1.5x and < 8 GiB), and writes them as JSON
   to ``<workdir>/results-ingest.json``.

Each child times only its work (not interpreter start-up or imports) and reports JSON
on stdout; the parent reads the child's peak RSS from ``os.wait4`` (``ru_maxrss``).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_WORKDIR = HERE / "out"
TENANTS = 3
SEED = 7
DATASET = "events"
MARKER = ".bench-data.json"
RESULTS = "results-ingest.json"
WALL_TARGET = 2.0
RSS_TARGET = 1.5
RSS_LIMIT_MIB = 8 * 1024
_CHUNK = 1 << 20

Json = dict[str, Any]


# -- helpers shared by parent and children ----------------------------------------------


def _landing_files(landing: Path) -> list[tuple[str, Path]]:
    """``(tenant, path)`` of every events landing file, in the order ingest discovers them."""
    out: list[tuple[str, Path]] = []
    base = landing / DATASET
    if not base.exists():
        return out
    for tenant_dir in sorted(base.iterdir()):
        if not tenant_dir.is_dir() or not tenant_dir.name.startswith("tenant="):
            continue
        tenant = tenant_dir.name.removeprefix("tenant=")
        out.extend((tenant, f) for f in sorted(tenant_dir.iterdir())
                   if f.is_file() and f.name[:1] not in "._")
    return out


def _tree_bytes(*roots: Path) -> int:
    total = 0
    for root in roots:
        if root.exists():
            total += sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return total


def _rss_now_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


# -- child phases ---------------------------------------------------------------------------


def phase_generate(args: argparse.Namespace) -> Json:
    from pseudozone.config import Settings  # type: ignore[import-untyped, unused-ignore]
    from pseudozone.sample import generate  # type: ignore[import-untyped, unused-ignore]

    settings = Settings.from_env(args.data)
    t0 = time.perf_counter()
    counts = generate(settings, events=args.events, tenants=TENANTS, seed=SEED,
                      batch_rows=args.batch_rows)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "counts": counts}


def phase_copy(args: argparse.Namespace) -> Json:
    """The I/O floor: read, add ``date``, write Hive partitions; no other transformation."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    landing = Path(args.data) / "landing"
    out = Path(args.out) / DATASET
    partitioning = ds.partitioning(pa.schema([("tenant_id", pa.string()), ("date", pa.date32())]),
                                   flavor="hive")
    # the same codec as the zones (pseudozone.zones.PARQUET_COMPRESSION)
    options = ds.ParquetFileFormat().make_write_options(compression="snappy")
    baseline = _rss_now_kib()

    t0 = time.perf_counter()
    files = _landing_files(landing)
    rows = 0
    for _tenant, path in files:
        table = pq.read_table(path)
        table = table.append_column("date", pc.cast(table["event_ts"], pa.date32()))
        # tenant_id and date become directory names and leave the file content
        ds.write_dataset(table, out, format="parquet", partitioning=partitioning,
                         basename_template=f"{path.stem}-{{i}}.parquet", file_options=options,
                         existing_data_behavior="overwrite_or_ignore")
        rows += table.num_rows
        del table
    if args.floor_fsync:
        for written in out.rglob("*.parquet"):
            with open(written, "rb") as fh:
                os.fsync(fh.fileno())
    wall = time.perf_counter() - t0

    written_files = list(out.rglob("*.parquet"))
    return {"wall_s": wall, "rows": rows, "batches": len(files), "files_out": len(written_files),
            "bytes_out": sum(p.stat().st_size for p in written_files), "rss_baseline_kib": baseline,
            "fsync": bool(args.floor_fsync), "pyarrow": pa.__version__}


def phase_ingest(args: argparse.Namespace) -> Json:
    """pseudozone's ingest of every events batch, one ``process_batch`` call each."""
    from pseudozone.config import Settings  # type: ignore[import-untyped, unused-ignore]
    from pseudozone.ingest import pending, process_batch  # type: ignore[import-untyped, unused-ignore]
    from pseudozone.keys import KeyRing  # type: ignore[import-untyped, unused-ignore]

    settings = Settings.from_env(args.root)
    keyring = KeyRing(os.urandom(32))
    baseline = _rss_now_kib()

    t0 = time.perf_counter()
    refs = [r for r in pending(settings) if r.dataset == DATASET]
    per_batch: list[Json] = []
    for ref in refs:
        b0 = time.perf_counter()
        result = process_batch(settings, ref, keyring=keyring)
        per_batch.append({"batch_id": ref.batch_id, "status": result.status, "rows": result.rows_in,
                          "files": len(result.files), "wall_s": time.perf_counter() - b0})
    wall = time.perf_counter() - t0

    bad = [b["batch_id"] for b in per_batch if b["status"] != "done"]
    if bad:
        raise SystemExit(f"ingest did not finish every batch: {bad}")
    return {"wall_s": wall, "rows": sum(int(b["rows"]) for b in per_batch), "batches": len(per_batch),
            "files_out": sum(int(b["files"]) for b in per_batch),
            "bytes_out": _tree_bytes(settings.event_zone / DATASET),
            "index_bytes": _tree_bytes(settings.subject_index / DATASET),
            "rss_baseline_kib": baseline, "per_batch": per_batch}


PHASES = {"generate": phase_generate, "copy": phase_copy, "ingest": phase_ingest}


# -- parent -----------------------------------------------------------------------------------


def run_child(phase: str, *extra: str) -> Json:
    """Run one phase in a fresh interpreter; return its JSON plus its peak RSS (``os.wait4``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "include"), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    raw = proc.stdout.read()  # the child's whole report; it closes stdout when it exits
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed with exit code {proc.returncode}")
    report: Json = json.loads(raw)
    report["peak_rss_kib"] = int(usage.ru_maxrss)  # KiB on Linux
    report["cpu_user_s"] = usage.ru_utime
    report["cpu_sys_s"] = usage.ru_stime
    return report


def ensure_data(workdir: Path, events: int, batch_rows: int) -> Json:
    data = workdir / "data"
    marker = data / MARKER
    wanted = {"events": events, "batch_rows": batch_rows, "tenants": TENANTS, "seed": SEED}
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("params") == wanted:
            return {"skipped": True, "wall_s": previous.get("wall_s"), "counts": previous.get("counts")}
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    report = run_child("generate", "--data", str(data), "--events", str(events),
                       "--batch-rows", str(batch_rows))
    marker.write_text(json.dumps({"params": wanted, "wall_s": report["wall_s"],
                                  "counts": report["counts"]}, indent=2) + "\n")
    return {"skipped": False, **report}


def warm_page_cache(files: list[Path]) -> int:
    """Read every landing file once (untimed) so both phases start with a warm cache."""
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                total += len(chunk)
    return total


def link_landing(data: Path, root: Path) -> None:
    """A fresh data root whose ``landing/events`` hard-links the generated files."""
    shutil.rmtree(root, ignore_errors=True)
    src = data / "landing" / DATASET
    for path in sorted(src.rglob("*")):
        target = root / "landing" / DATASET / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def _mib(kib: float) -> float:
    return kib / 1024


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarize(runs: list[Json]) -> Json:
    best: Json = {}
    for phase in ("copy", "ingest"):
        reports = [r[phase] for r in runs]
        fastest = min(reports, key=lambda r: float(r["wall_s"]))
        best[phase] = {"wall_s": fastest["wall_s"], "rows": fastest["rows"],
                       "rows_per_s": fastest["rows"] / fastest["wall_s"] if fastest["wall_s"] else 0.0,
                       # peak RSS: the highest of all repeats (conservative)
                       "peak_rss_kib": max(int(r["peak_rss_kib"]) for r in reports),
                       "rss_baseline_kib": max(int(r["rss_baseline_kib"]) for r in reports),
                       "bytes_out": fastest["bytes_out"], "files_out": fastest["files_out"]}
    wall_ratio = best["ingest"]["wall_s"] / best["copy"]["wall_s"]
    rss_ratio = best["ingest"]["peak_rss_kib"] / best["copy"]["peak_rss_kib"]
    ingest_rss_mib = _mib(best["ingest"]["peak_rss_kib"])
    return {"best": best,
            "ratios": {"wall": wall_ratio, "peak_rss": rss_ratio},
            "targets": {
                "wall": {"max_ratio": WALL_TARGET, "pass": wall_ratio <= WALL_TARGET},
                "peak_rss": {"max_ratio": RSS_TARGET, "pass": rss_ratio <= RSS_TARGET},
                "peak_rss_abs": {"max_mib": RSS_LIMIT_MIB, "pass": ingest_rss_mib < RSS_LIMIT_MIB}}}


def print_table(gen: Json, summary: Json, runs: list[Json], events: int) -> None:
    best = summary["best"]
    print()
    print(f"pseudozone ingest benchmark: {events:,} events, {TENANTS} tenants, "
          f"{len(runs)} repeat(s), {os.cpu_count()} CPU(s)")
    print()
    head = f"{'phase':<16}{'wall s':>10}{'rows/s':>14}{'peak RSS MiB':>15}{'base RSS MiB':>15}{'out MiB':>10}"
    print(head)
    print("-" * len(head))
    gen_wall = gen.get("wall_s")
    gen_rss = f"{_mib(gen['peak_rss_kib']):>15.0f}" if "peak_rss_kib" in gen else f"{'-':>15}"
    gen_label = "generate (cached)" if gen.get("skipped") else "generate"
    gen_wall_txt = f"{gen_wall:>10.2f}" if isinstance(gen_wall, int | float) else f"{'-':>10}"
    print(f"{gen_label:<16}{gen_wall_txt}{'':>14}{gen_rss}{'':>15}{'':>10}")
    for phase, label in (("copy", "copy (floor)"), ("ingest", "ingest")):
        b = best[phase]
        print(f"{label:<16}{b['wall_s']:>10.2f}{b['rows_per_s']:>14,.0f}{_mib(b['peak_rss_kib']):>15.0f}"
              f"{_mib(b['rss_baseline_kib']):>15.0f}{b['bytes_out'] / 2**20:>10.1f}")
    if len(runs) > 1:
        walls = {p: ", ".join(f"{r[p]['wall_s']:.2f}" for r in runs) for p in ("copy", "ingest")}
        print(f"\nall runs (wall s): copy [{walls['copy']}]  ingest [{walls['ingest']}]")
    ratios, targets = summary["ratios"], summary["targets"]
    print()
    print(f"ingest/copy wall      {ratios['wall']:6.2f}x   target <= {WALL_TARGET:.1f}x   "
          f"{_verdict(targets['wall']['pass'])}")
    print(f"ingest/copy peak RSS  {ratios['peak_rss']:6.2f}x   target <= {RSS_TARGET:.1f}x   "
          f"{_verdict(targets['peak_rss']['pass'])}")
    print(f"ingest peak RSS       {_mib(best['ingest']['peak_rss_kib']):6.0f} MiB  target < 8 GiB   "
          f"{_verdict(targets['peak_rss_abs']['pass'])}")


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    run_dir = workdir / "run"

    gen = ensure_data(workdir, args.events, args.batch_rows)
    files = [p for _, p in _landing_files(data / "landing")]
    if not files:
        raise SystemExit("no events landing files were generated")
    landing_bytes = warm_page_cache(files)

    copy_out = run_dir / "copy"
    ingest_root = run_dir / "ingest"
    runs: list[Json] = []
    for i in range(args.repeat):
        shutil.rmtree(copy_out, ignore_errors=True)
        link_landing(data, ingest_root)
        os.sync()  # no dirty pages from earlier phases get flushed inside a timed region
        copy_extra = ["--floor-fsync"] if args.floor_fsync else []
        copy = run_child("copy", "--data", str(data), "--out", str(copy_out), *copy_extra)
        os.sync()
        ingest = run_child("ingest", "--root", str(ingest_root))
        if copy["rows"] != ingest["rows"]:
            raise SystemExit(f"row counts differ: copy {copy['rows']}, ingest {ingest['rows']}")
        runs.append({"copy": copy, "ingest": ingest})
        print(f"run {i + 1}/{args.repeat}: copy {copy['wall_s']:.2f}s "
              f"({_mib(copy['peak_rss_kib']):.0f} MiB), ingest {ingest['wall_s']:.2f}s "
              f"({_mib(ingest['peak_rss_kib']):.0f} MiB)", flush=True)

    summary = summarize(runs)
    print_table(gen, summary, runs, args.events)
    results = {
        "config": {"events": args.events, "batch_rows": args.batch_rows, "tenants": TENANTS,
                   "seed": SEED, "repeat": args.repeat, "floor_fsync": bool(args.floor_fsync),
                   "landing_files": len(files), "landing_bytes": landing_bytes},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pyarrow": runs[0]["copy"].get("pyarrow")},
        "generate": gen,
        "runs": runs,
        **summary,
    }
    out = workdir / RESULTS
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")

    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1M)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                        help="data and results directory (default bench/out)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the generated data and phase outputs (re-runs then skip generation)")
    parser.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="rows per landing file (default 1M)")
    parser.add_argument("--repeat", type=int, default=1, help="copy+ingest pairs to run; best wall wins")
    parser.add_argument("--floor-fsync", action="store_true",
                        help="make the floor fsync its output files, as pseudozone's writes do")
    # internal: which phase a child process runs, and its paths
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch_rows < 1 or args.repeat < 1:
        parser.error("--events, --batch-rows and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        report = PHASES[args.phase](args)
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        return 0
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())
