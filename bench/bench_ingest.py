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
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from upath import UPath

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


def _tree_bytes(*roots: Path | UPath) -> int:
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
    from pseudozone.config import Settings
    from pseudozone.sample import generate

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
    # pyarrow's default codec: the plain copy a data engineer would write (the zones use
    # zstd level 1, which writes as fast here and makes smaller files)
    options = ds.ParquetFileFormat().make_write_options(compression="snappy")
    baseline = _rss_now_kib()
    sampler = TreeRssSampler()

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
    tree_peak = sampler.stop()

    written_files = list(out.rglob("*.parquet"))
    return {"wall_s": wall, "rows": rows, "batches": len(files), "files_out": len(written_files),
            "bytes_out": sum(p.stat().st_size for p in written_files), "rss_baseline_kib": baseline,
            "tree_peak_rss_kib": tree_peak,
            "fsync": bool(args.floor_fsync), "pyarrow": pa.__version__}


def phase_ingest(args: argparse.Namespace) -> Json:
    """pseudozone's ingest of every events batch through ``ingest_pending`` (the CLI's path)."""
    import base64

    from pseudozone.config import Settings
    from pseudozone.ingest import ingest_pending

    # pq.read_table imports pyarrow.dataset (and pandas) on its first call: load them
    # here, outside the timed region, as the copy phase does.
    importlib.import_module("pyarrow.dataset")
    # a throw-away master key, handed to the workers the way a deployment does
    os.environ["PSEUDOZONE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    settings = Settings.from_env(args.root)
    # the tenants' profiles are published first, untimed, as a real run does: the events'
    # free text is then also scrubbed of (and gated against) every known subject's values
    from pseudozone.ingest import pending, process_batch

    for ref in pending(settings):
        if ref.dataset == "profiles":
            process_batch(settings, ref)
    baseline = _rss_now_kib()
    sampler = TreeRssSampler()

    t0 = time.perf_counter()
    results = ingest_pending(settings, workers=args.workers)
    wall = time.perf_counter() - t0
    tree_peak = sampler.stop()

    per_batch: list[Json] = [{"batch_id": r.batch_id, "status": r.status, "rows": r.rows_in,
                               "files": len(r.files)} for r in results]
    bad = [b["batch_id"] for b in per_batch if b["status"] != "done"]
    if bad:
        raise SystemExit(f"ingest did not finish every batch: {bad}")
    return {"wall_s": wall, "rows": sum(int(b["rows"]) for b in per_batch), "batches": len(per_batch),
            "files_out": sum(int(b["files"]) for b in per_batch), "workers": args.workers,
            "bytes_out": _tree_bytes(settings.event_zone / DATASET),
            "index_bytes": _tree_bytes(settings.subject_index / DATASET),
            "rss_baseline_kib": baseline, "tree_peak_rss_kib": tree_peak, "per_batch": per_batch}


class TreeRssSampler:
    """Peak of the summed RSS of this process and all its descendants, sampled every 20 ms.

    ``ru_maxrss`` is per process; with worker processes the memory a machine needs is
    the sum over the tree at the same moment, which only sampling can see.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import threading

        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    kids.extend(int(k) for k in fh.read().split())
        except OSError:
            pass
        return kids

    @staticmethod
    def _rss_kib(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def sample(self) -> int:
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += self._rss_kib(pid)
            todo.extend(self._children(pid))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.sample())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak_kib, self.sample())


PHASES = {"generate": phase_generate, "copy": phase_copy, "ingest": phase_ingest}


# -- parent -----------------------------------------------------------------------------------


def run_child(phase: str, *extra: str, script: Path | None = None) -> Json:
    """Run one phase of ``script`` (default: this one) in a fresh interpreter; return its
    JSON plus its peak RSS (``os.wait4``).  Shared by every benchmark script here."""
    cmd = [sys.executable, str((script or Path(__file__)).resolve()), "--phase", phase, *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO / "include"), os.environ.get("PYTHONPATH", "")) if p)}
    # the state database and the master key must be those inside the benchmark's data root
    env.pop("PSEUDOZONE_STATE_DB_URL", None)
    env.pop("PSEUDOZONE_REQUESTS_DB_URL", None)  # refused while set: no state database on it
    env.pop("PSEUDOZONE_MASTER_KEY_CONN_ID", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    raw = proc.stdout.read()  # the child's whole report; it closes stdout when it exits
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"phase {phase} failed with exit code {code}")
    report: Json = json.loads(raw)
    report["peak_rss_kib"] = int(usage.ru_maxrss)  # KiB on Linux
    report["cpu_user_s"] = usage.ru_utime
    report["cpu_sys_s"] = usage.ru_stime
    return report


def ensure_data(workdir: Path, events: int, batch_rows: int) -> Json:
    data = workdir / "data"
    marker = data / MARKER
    wanted = {"events": events, "batch_rows": batch_rows, "tenants": TENANTS, "seed": SEED,
              "sample": 2}  # bump when pseudozone.sample changes what it writes
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
    """A fresh data root whose ``landing/events`` and ``landing/profiles`` hard-link the generated files."""
    shutil.rmtree(root, ignore_errors=True)
    for dataset in (DATASET, "profiles"):
        src = data / "landing" / dataset
        for path in sorted(src.rglob("*")):
            target = root / "landing" / dataset / path.relative_to(src)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)


def _mib(kib: float) -> float:
    return kib / 1024


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _peak(report: Json) -> int:
    """Peak memory of a phase: the larger of the process's own ``ru_maxrss`` and the
    sampled sum over its process tree (the only honest figure with worker processes)."""
    return max(int(report["peak_rss_kib"]), int(report.get("tree_peak_rss_kib", 0)))


def summarize(runs: list[Json], phases: list[str]) -> Json:
    best: Json = {}
    for phase in phases:
        reports = [r[phase] for r in runs]
        fastest = min(reports, key=lambda r: float(r["wall_s"]))
        best[phase] = {"wall_s": fastest["wall_s"], "rows": fastest["rows"],
                       "rows_per_s": fastest["rows"] / fastest["wall_s"] if fastest["wall_s"] else 0.0,
                       # peak memory: the highest of all repeats (conservative)
                       "peak_rss_kib": max(_peak(r) for r in reports),
                       "rss_baseline_kib": max(int(r["rss_baseline_kib"]) for r in reports),
                       "bytes_out": fastest["bytes_out"], "files_out": fastest["files_out"]}
    verdicts: Json = {}
    for phase in phases:
        if phase == "copy":
            continue
        wall_ratio = best[phase]["wall_s"] / best["copy"]["wall_s"]
        rss_ratio = best[phase]["peak_rss_kib"] / best["copy"]["peak_rss_kib"]
        verdicts[phase] = {
            "ratios": {"wall": wall_ratio, "peak_rss": rss_ratio},
            "targets": {
                "wall": {"max_ratio": WALL_TARGET, "pass": wall_ratio <= WALL_TARGET},
                "peak_rss": {"max_ratio": RSS_TARGET, "pass": rss_ratio <= RSS_TARGET},
                "peak_rss_abs": {"max_mib": RSS_LIMIT_MIB,
                                 "pass": _mib(best[phase]["peak_rss_kib"]) < RSS_LIMIT_MIB}}}
    return {"best": best, "verdicts": verdicts}


def _label(phase: str, runs: list[Json]) -> str:
    if phase == "copy":
        return "copy (floor)"
    return f"ingest x{runs[0][phase]['workers']}"


def print_table(gen: Json, summary: Json, runs: list[Json], events: int, phases: list[str]) -> None:
    best = summary["best"]
    print()
    print(f"pseudozone ingest benchmark: {events:,} events, {TENANTS} tenants, "
          f"{len(runs)} repeat(s), {os.cpu_count()} CPU(s)")
    print()
    head = f"{'phase':<18}{'wall s':>10}{'rows/s':>14}{'peak RSS MiB':>15}{'base RSS MiB':>15}{'out MiB':>10}"
    print(head)
    print("-" * len(head))
    gen_wall = gen.get("wall_s")
    gen_rss = f"{_mib(gen['peak_rss_kib']):>15.0f}" if "peak_rss_kib" in gen else f"{'-':>15}"
    gen_label = "generate (cached)" if gen.get("skipped") else "generate"
    gen_wall_txt = f"{gen_wall:>10.2f}" if isinstance(gen_wall, int | float) else f"{'-':>10}"
    print(f"{gen_label:<18}{gen_wall_txt}{'':>14}{gen_rss}{'':>15}{'':>10}")
    for phase in phases:
        b = best[phase]
        print(f"{_label(phase, runs):<18}{b['wall_s']:>10.2f}{b['rows_per_s']:>14,.0f}"
              f"{_mib(b['peak_rss_kib']):>15.0f}{_mib(b['rss_baseline_kib']):>15.0f}"
              f"{b['bytes_out'] / 2**20:>10.1f}")
    if len(runs) > 1:
        walls = "  ".join(f"{_label(p, runs)} [" + ", ".join(f"{r[p]['wall_s']:.2f}" for r in runs) + "]"
                          for p in phases)
        print(f"\nall runs (wall s): {walls}")
    print()
    for phase, verdict in summary["verdicts"].items():
        ratios, targets = verdict["ratios"], verdict["targets"]
        name = _label(phase, runs)
        print(f"{name + '/copy wall':<26}{ratios['wall']:6.2f}x   target <= {WALL_TARGET:.1f}x   "
              f"{_verdict(targets['wall']['pass'])}")
        print(f"{name + '/copy peak RSS':<26}{ratios['peak_rss']:6.2f}x   target <= {RSS_TARGET:.1f}x   "
              f"{_verdict(targets['peak_rss']['pass'])}")
        print(f"{name + ' peak RSS':<26}{_mib(best[phase]['peak_rss_kib']):6.0f} MiB  target < 8 GiB   "
              f"{_verdict(targets['peak_rss_abs']['pass'])}")


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    run_dir = workdir / "run"

    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: 1-minute load average is {load_start[0]:.2f} before the benchmark; "
              "other work on this machine may skew the timings", flush=True)
    gen = ensure_data(workdir, args.events, args.batch_rows)
    files = [p for _, p in _landing_files(data / "landing")]
    if not files:
        raise SystemExit("no events landing files were generated")
    landing_bytes = warm_page_cache(files)

    copy_out = run_dir / "copy"
    ingest_root = run_dir / "ingest"
    worker_counts = sorted({1, args.workers})
    phases = ["copy"] + [f"ingest_w{w}" for w in worker_counts]
    runs: list[Json] = []
    for i in range(args.repeat):
        shutil.rmtree(copy_out, ignore_errors=True)
        os.sync()  # no dirty pages from earlier phases get flushed inside a timed region
        copy_extra = ["--floor-fsync"] if args.floor_fsync else []
        run: Json = {"copy": run_child("copy", "--data", str(data), "--out", str(copy_out), *copy_extra)}
        for workers in worker_counts:
            link_landing(data, ingest_root)
            os.sync()
            report = run_child("ingest", "--root", str(ingest_root), "--workers", str(workers))
            if report["rows"] != run["copy"]["rows"]:
                raise SystemExit(f"row counts differ: copy {run['copy']['rows']}, ingest {report['rows']}")
            run[f"ingest_w{workers}"] = report
        runs.append(run)
        print(f"run {i + 1}/{args.repeat}: " + ", ".join(
            f"{_label(p, runs)} {run[p]['wall_s']:.2f}s ({_mib(_peak(run[p])):.0f} MiB)" for p in phases),
            flush=True)

    summary = summarize(runs, phases)
    print_table(gen, summary, runs, args.events, phases)
    results = {
        "config": {"events": args.events, "batch_rows": args.batch_rows, "tenants": TENANTS,
                   "workers": worker_counts,
                   "seed": SEED, "repeat": args.repeat, "floor_fsync": bool(args.floor_fsync),
                   "landing_files": len(files), "landing_bytes": landing_bytes},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pyarrow": runs[0]["copy"].get("pyarrow"),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
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


def common_parser(doc: str | None, *, workdir: Path, workdir_help: str, keep_help: str,
                  repeat_help: str) -> argparse.ArgumentParser:
    """The options every benchmark script here takes (the phase options are each script's)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1M)")
    parser.add_argument("--workdir", default=str(workdir), help=workdir_help)
    parser.add_argument("--keep", action="store_true", help=keep_help)
    parser.add_argument("--repeat", type=int, default=1, help=repeat_help)
    return parser


def run_main(args: argparse.Namespace, phases: dict[str, Any], parent: Any) -> int:
    """A child runs its phase and prints its JSON report (the only thing on stdout: what the
    libraries print goes to stderr meanwhile); the parent runs ``parent(args)``."""
    if not args.phase:
        return int(parent(args))
    report_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        report = phases[args.phase](args)
    finally:
        sys.stdout.flush()
        os.dup2(report_fd, 1)
        os.close(report_fd)
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common_parser(
        __doc__, workdir=DEFAULT_WORKDIR, workdir_help="data and results directory (default bench/out)",
        keep_help="keep the generated data and phase outputs (re-runs then skip generation)",
        repeat_help="copy+ingest pairs to run; best wall wins")
    parser.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="rows per landing file (default 1M)")
    parser.add_argument("--workers", type=int, default=2,
                        help="also run the ingest with this many worker processes (default 2)")
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
    return run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    sys.exit(main())
