"""Ingest into S3 zones (moto's S3 server on loopback) against ingest into local zones.

One invocation:

1. generates the sample landing data once into ``<workdir>/data`` (as
   ``bench/bench_ingest.py`` does: same seed, tenants and marker; skipped when cached);
2. starts moto's S3 server as a process on loopback (``tests/s3_server.py``; stopped by
   its PID at the end, and it exits with this process);
3. runs, ``--repeat`` times and back to back, the same ingest twice, each in its own child
   process on a fresh data root whose landing tree hard-links the same files:

   * ``local`` - zones under the data root (``<root>/zones``), the default;
   * ``s3``    - ``PSEUDOZONE_ZONES=s3://<fresh bucket>/zones`` on the moto server, the
     AWS settings pointing at it (ADR 0017);

   timing ``pseudozone.ingest.ingest_pending(settings, workers=1)`` (the CLI's path) after
   the profiles were published untimed. Round 1 runs local first, round 2 S3 first, and
   so on. In the S3 child every request s3fs sends is counted, per operation, with its
   summed latency and the request bodies' bytes (a wrapper around
   ``S3FileSystem._call_s3``, the one place s3fs calls botocore), and the moto server's CPU
   time over the timed region is read from ``/proc``;
4. prints wall time, rows/s, bytes written, requests and the ratio S3/local, and writes
   ``<workdir>/results-ingest-s3.json``.

See bench/README.md, "Ingest into S3 zones".
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402  (after the path insert)

DEFAULT_WORKDIR = HERE / "out" / "ingest-s3"
RESULTS = "results-ingest-s3.json"
KINDS = ("local", "s3")
BUCKET_PREFIX = "pz-bench"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "bench-key-id", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_DEFAULT_REGION": "us-east-1"}

Json = dict[str, Any]


# -- child ------------------------------------------------------------------------------------


class S3Calls:
    """Counts every request s3fs makes (operation, summed latency, body bytes) by wrapping
    ``S3FileSystem._call_s3``. Latencies of concurrent requests add up, so ``seconds`` is
    time spent waiting per operation, not wall time."""

    def __init__(self) -> None:
        self.count: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.body_bytes: dict[str, int] = defaultdict(int)
        self.on = False

    def install(self) -> None:
        s3fs = importlib.import_module("s3fs")  # untyped: no stubs
        original = s3fs.S3FileSystem._call_s3
        calls = self

        async def counted(fs: Any, method: str, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(fs, method, *args, **kwargs)
            finally:
                if calls.on:
                    calls.count[method] += 1
                    calls.seconds[method] += time.perf_counter() - t0
                    body = kwargs.get("Body")
                    if isinstance(body, bytes | bytearray | memoryview):
                        calls.body_bytes[method] += len(body)

        s3fs.S3FileSystem._call_s3 = counted

    def report(self) -> Json:
        return {method: {"requests": n, "seconds": round(self.seconds[method], 4),
                         "body_bytes": self.body_bytes[method]}
                for method, n in sorted(self.count.items())}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    if pid <= 0:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase_ingest(args: argparse.Namespace) -> Json:
    from pseudozone.config import Settings
    from pseudozone.ingest import ingest_pending, pending, process_batch

    importlib.import_module("pyarrow.dataset")  # loaded outside the timed region, as bench_ingest does
    os.environ["PSEUDOZONE_MASTER_KEY"] = base64.b64encode(os.urandom(32)).decode()
    calls = S3Calls()
    if args.zones:
        calls.install()
    settings = Settings.from_env(args.root, zones=args.zones or None)
    for ref in pending(settings):  # the tenants' profiles first, untimed (as bench_ingest)
        if ref.dataset == "profiles":
            process_batch(settings, ref)
    baseline = bi._rss_now_kib()
    sampler = bi.TreeRssSampler()
    calls.on = True
    moto0, self0 = _cpu_s(args.moto_pid), time.process_time()

    t0 = time.perf_counter()
    results = ingest_pending(settings, workers=1)
    wall = time.perf_counter() - t0
    moto_cpu, self_cpu = _cpu_s(args.moto_pid) - moto0, time.process_time() - self0
    calls.on = False
    tree_peak = sampler.stop()

    bad = [r.batch_id for r in results if r.status != "done"]
    if bad:
        raise SystemExit(f"ingest did not finish every batch: {bad}")
    events = [r for r in results if r.dataset == bi.DATASET]
    if settings.remote_zones:
        fs, base = settings.zones.fs, settings.zones.path.rstrip("/")
        found = fs.find(base, detail=True)
        files = [k for k in found if "/.staging/" not in k]
        out_bytes = sum(int(found[k]["size"]) for k in files)
        events_prefix = f"{base}/events/{bi.DATASET}/"
        event_bytes = sum(int(found[k]["size"]) for k in files if k.startswith(events_prefix))
    else:
        local = [Path(str(settings.zones)), Path(str(settings.subject_index))]
        files = [str(p) for root in local for p in root.rglob("*")
                 if p.is_file() and ".staging" not in p.parts]
        out_bytes = bi._tree_bytes(*local) - bi._tree_bytes(Path(str(settings.zones)) / ".staging")
        event_bytes = bi._tree_bytes(settings.event_zone / bi.DATASET)
    return {"wall_s": wall, "rows": sum(r.rows_in for r in events), "batches": len(results),
            "files_published": sum(len(r.files) for r in results), "objects_out": len(files),
            "bytes_out": out_bytes, "event_bytes": event_bytes, "cpu_s": self_cpu, "moto_cpu_s": moto_cpu,
            "s3_calls": calls.report(), "rss_baseline_kib": baseline, "tree_peak_rss_kib": tree_peak,
            "zones": args.zones or "local"}


PHASES = {"generate": bi.phase_generate, "ingest": phase_ingest}


# -- parent -----------------------------------------------------------------------------------


def _puts(report: Json) -> tuple[int, int]:
    calls = report.get("s3_calls", {})
    put = calls.get("put_object", {})
    return int(put.get("requests", 0)), int(put.get("body_bytes", 0))


def _requests(report: Json) -> int:
    return sum(int(c["requests"]) for c in report.get("s3_calls", {}).values())


def summarize(runs: list[Json]) -> Json:
    best: Json = {}
    for kind in KINDS:
        fastest = min((r[kind] for r in runs), key=lambda r: float(r["wall_s"]))
        best[kind] = {"wall_s": fastest["wall_s"], "rows": fastest["rows"],
                      "rows_per_s": fastest["rows"] / fastest["wall_s"],
                      "bytes_out": fastest["bytes_out"], "objects_out": fastest["objects_out"],
                      "requests": _requests(fastest), "puts": _puts(fastest)[0],
                      "peak_rss_kib": max(bi._peak(r[kind]) for r in runs)}
    return {"best": best, "ratio_s3_local_wall": best["s3"]["wall_s"] / best["local"]["wall_s"]}


def print_table(runs: list[Json], summary: Json, events: int, loads: list[Json]) -> None:
    print()
    print(f"pseudozone ingest into local zones and S3 zones (moto on loopback): {events:,} events, "
          f"{bi.TENANTS} tenants, {len(runs)} round(s), {os.cpu_count()} CPU(s)")
    print()
    head = (f"{'round':<6}{'zones':<7}{'wall s':>9}{'rows/s':>11}{'cpu s':>8}{'moto cpu s':>11}"
            f"{'out MiB':>9}{'objects':>9}{'requests':>10}{'PUTs':>7}{'PUT MiB':>9}{'load':>14}")
    print(head)
    print("-" * len(head))
    for i, (run, load) in enumerate(zip(runs, loads, strict=True), 1):
        for kind in run["order"]:
            r = run[kind]
            puts, put_bytes = _puts(r)
            lo = load[kind]
            print(f"{i:<6}{kind:<7}{r['wall_s']:>9.2f}{r['rows'] / r['wall_s']:>11,.0f}{r['cpu_s']:>8.1f}"
                  f"{r['moto_cpu_s']:>11.1f}{r['bytes_out'] / 2**20:>9.1f}{r['objects_out']:>9}"
                  f"{_requests(r):>10}{puts:>7}{put_bytes / 2**20:>9.1f}{f'{lo[0]:.1f} -> {lo[1]:.1f}':>14}")
    print()
    for kind in KINDS:
        b = summary["best"][kind]
        print(f"best {kind:<6}{b['wall_s']:8.2f} s  {b['rows_per_s']:>9,.0f} rows/s  "
              f"peak RSS {bi._mib(b['peak_rss_kib']):.0f} MiB")
    print(f"S3/local wall (best of each)   {summary['ratio_s3_local_wall']:.2f}x")
    last = runs[-1]["s3"]["s3_calls"]
    if last:
        print("\nS3 requests of the last S3 run (operation: requests, summed latency s, body MiB):")
        for method, c in last.items():
            print(f"  {method:<24}{c['requests']:>7}{c['seconds']:>10.2f}{c['body_bytes'] / 2**20:>10.1f}")


def main_parent(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    s3_server = importlib.import_module("tests.s3_server")  # the tests' moto server (not type-checked here)
    client, run_moto_server = s3_server.client, s3_server.run_moto_server

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data, run_dir = workdir / "data", workdir / "run"
    load_start = os.getloadavg()
    print(f"1-minute load average at the start: {load_start[0]:.2f}", flush=True)
    gen = bi.ensure_data(workdir, args.events, args.batch_rows)
    files = [p for _, p in bi._landing_files(data / "landing")]
    if not files:
        raise SystemExit("no events landing files were generated")
    landing_bytes = bi.warm_page_cache(files)

    runs: list[Json] = []
    loads: list[Json] = []
    with run_moto_server() as server:
        os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=server.endpoint_url)
        s3 = client("s3", server.endpoint_url)
        for i in range(args.repeat):
            order = list(KINDS) if i % 2 == 0 else list(reversed(KINDS))
            run: Json = {"order": order}
            load: Json = {}
            for kind in order:
                root = run_dir / kind
                bi.link_landing(data, root)
                extra = ["--root", str(root), "--moto-pid", str(server.pid)]
                if kind == "s3":
                    bucket = f"{BUCKET_PREFIX}-{i}"
                    s3.create_bucket(Bucket=bucket)
                    extra += ["--zones", f"s3://{bucket}/zones"]
                os.sync()
                before = os.getloadavg()[0]
                run[kind] = bi.run_child("ingest", *extra, script=Path(__file__))
                load[kind] = (before, os.getloadavg()[0])
                print(f"round {i + 1}/{args.repeat} {kind}: {run[kind]['wall_s']:.2f} s "
                      f"(load {before:.2f} -> {load[kind][1]:.2f})", flush=True)
            if run["local"]["rows"] != run["s3"]["rows"]:
                raise SystemExit(f"row counts differ: local {run['local']['rows']}, s3 {run['s3']['rows']}")
            runs.append(run)
            loads.append(load)

    summary = summarize(runs)
    print_table(runs, summary, args.events, loads)
    results = {
        "config": {"events": args.events, "batch_rows": args.batch_rows, "tenants": bi.TENANTS,
                   "seed": bi.SEED, "repeat": args.repeat, "workers": 1, "landing_files": len(files),
                   "landing_bytes": landing_bytes, "s3": "moto server on loopback (tests/s3_server.py)"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        "generate": gen, "runs": runs, "loadavg_per_run": loads, **summary,
    }
    out = workdir / RESULTS
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bi.common_parser(
        __doc__, workdir=DEFAULT_WORKDIR,
        workdir_help="data and results directory (default bench/out/ingest-s3)",
        keep_help="keep the generated data and the local run roots (re-runs then skip generation)",
        repeat_help="rounds of local + S3 ingest, back to back; best wall of each is reported")
    parser.add_argument("--batch-rows", type=int, default=1_000_000,
                        help="rows per landing file (default 1M)")
    # internal: which phase a child process runs, and its paths
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--zones", help=argparse.SUPPRESS)
    parser.add_argument("--moto-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.batch_rows < 1 or args.repeat < 1:
        parser.error("--events, --batch-rows and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return bi.run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    sys.exit(main())
