"""Rights-request benchmark: erase and export against a full rewrite of the event zone.

One invocation:

1. generates the sample landing data (3 tenants, seed 7, 1M-row batches) and ingests
   it with ``pseudozone.ingest.ingest_pending`` into ``<workdir>/pristine`` under a
   throw-away master key (``<workdir>/bench-master-key.b64``); both untimed, in child
   processes, and skipped when ``--keep`` left a lake of the same size behind;
2. runs, ``--repeat`` times, five phases, each in its own child process on a fresh
   working copy of that lake (``<workdir>/run``: ``*.parquet`` hard-linked, the
   SQLite files and the key directory beside the lake, ``pristine.keys`` with the KEK
   seeds, copied; restored untimed before every phase):

   * ``rewrite``  - the baseline: read every Parquet file under ``zones/events/`` and
     write it back under the same name with ``pseudozone.zones.write_parquet``;
   * ``erase1``   - one erase request (tenant ``acme``, ``usr_0000005``), then
     ``process_all`` (intake, plan, rewrite, verification scan, key destruction, close);
   * ``erase1c``  - the same for a subject with exactly 3 linked cookies (identity links,
     docs/adr/0008), none shared with another subject, each with logged-out rows in the
     event zone, so the erase also finds (bucket-0 scan) and removes those rows; the
     subject is picked untimed from the pristine lake (``pick``, below);
   * ``erase100`` - 100 erase requests filed together (every k-th user id over the
     three tenants), then one ``process_all``;
   * ``export``   - one export request, then ``process_all`` (which builds the ZIP);

   after ``erase1`` and ``erase1c`` a separate child checks that the erased subject's
   pseudonym is in no Parquet file of the zones nor in the subject index, and that its key
   is gone; after ``erase1c`` also that none of its cookies has a row left in any zone;
3. prints wall time, peak RSS and files written per phase, the time split inside
   ``process_all``, and the ratios against the full rewrite with their targets
   (erase-1 and erase-1 with 3 cookies <= 0.15x, erase-100 <= 1.2x, export <= 0.10x);
   writes them as JSON to ``<workdir>/results-rights.json``.

``pick`` (once per invocation, untimed, on a fresh copy of the pristine lake): the raw user
ids of the first tenant are pseudonymized with the lake's ``KeyRing``, 200 at a time in
user-id order; their cookies are read from ``identity_links`` and each cookie's subjects
counted; the event zone is scanned for logged-out rows (``subject_id`` null) of those
cookies.  The first user with exactly 3 cookies, all unshared and all with logged-out
rows, is chosen; if the first ``PICK_MAX_USERS`` users hold none, the closest one (most
unshared cookies with logged-out rows, fewest shared) is taken and reported as inexact.

The requests are submitted before the timer starts.  ``process_all`` is called as
the CLI calls it; its steps (``open_run``, ``rewrite_group``, ``export_request``,
``close_run`` and some of their helpers) are timed by wrapping the module
attributes it looks up at call time, which adds microseconds per call.
See bench/README.md.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import bench_ingest as bi  # noqa: E402  (after the path insert)

DEFAULT_WORKDIR = HERE / "out" / "rights"
TENANTS = 3
TENANT_NAMES = ("acme", "globex", "initech")  # pseudozone.sample.TENANTS[:3]
SEED = 7
BATCH_ROWS = 1_000_000
MARKER = ".bench-rights.json"
KEY_FILE = "bench-master-key.b64"
RESULTS = "results-rights.json"
ERASE_TENANT, ERASE_USER = "acme", "usr_0000005"
EXPORT_TENANT, EXPORT_USER = "acme", "usr_0000005"
N_ERASE_MANY = 100
COOKIES_WANTED = 3  # erase1c: a subject with this many linked cookies, none shared
PICK_CHUNK, PICK_MAX_USERS = 200, 2000
TARGETS = {"erase1": 0.15, "erase1c": 0.15, "erase100": 1.2, "export": 0.10}
PHASE_ORDER = ("rewrite", "erase1", "erase1c", "erase100", "export")
ERASE_PHASES = ("erase1", "erase1c")  # followed by the erase check
LABELS = {"rewrite": "full rewrite (base)", "erase1": "erase 1 subject",
          "erase1c": "erase 1 + 3 cookies", "erase100": "erase 100 subjects",
          "export": "export 1 subject"}
KEY_ENV = "PSEUDOZONE_MASTER_KEY"
KEY_DIR_ENV = "PSEUDOZONE_KEY_DIR"  # pseudozone.config.KEY_DIR_ENV
_CHUNK = 1 << 20

Json = dict[str, Any]


# -- helpers shared by parent and children --------------------------------------------------


def _rss_now_kib() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _mib(kib: float) -> float:
    return kib / 1024


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def users_per_tenant(events: int) -> list[tuple[str, int, int]]:
    """``(tenant, first user number, users)`` as ``pseudozone.sample.generate`` numbers them."""
    out, offset = [], 0
    for t, tenant in enumerate(TENANT_NAMES):
        n_events = events // TENANTS + (1 if t < events % TENANTS else 0)
        n_users = max(20, n_events // 50)
        out.append((tenant, offset, n_users))
        offset += n_users
    return out


def spread_users(events: int, n: int) -> list[tuple[str, str]]:
    """``n`` (tenant, user id) pairs: every k-th user id over the whole id range."""
    layout = users_per_tenant(events)
    total = sum(count for _, _, count in layout)
    step = max(1, total // n)
    out = []
    for number in range(step // 2, total, step)[:n]:
        tenant = next(t for t, first, count in layout if first <= number < first + count)
        out.append((tenant, f"usr_{number:07d}"))
    return out


# -- child phases ---------------------------------------------------------------------------


def phase_generate(args: argparse.Namespace) -> Json:
    from pseudozone.config import Settings
    from pseudozone.sample import generate

    settings = Settings.from_env(args.root)
    t0 = time.perf_counter()
    counts = generate(settings, events=args.events, tenants=TENANTS, seed=SEED, batch_rows=BATCH_ROWS)
    return {"wall_s": time.perf_counter() - t0, "counts": counts}


def phase_ingest(args: argparse.Namespace) -> Json:
    from pseudozone import zones
    from pseudozone.config import Settings
    from pseudozone.ingest import ingest_pending

    settings = Settings.from_env(args.root)
    t0 = time.perf_counter()
    results = ingest_pending(settings)
    wall = time.perf_counter() - t0
    bad = [r.batch_id for r in results if r.status != "done"]
    if bad:
        raise SystemExit(f"ingest did not finish every batch: {bad}")
    event_files = zones.parquet_files(settings.event_zone)
    return {"wall_s": wall, "batches": len(results), "rows": sum(r.rows_in for r in results),
            "event_zone_files": len(event_files),
            "event_zone_bytes": sum(p.stat().st_size for p in event_files),
            "zone_files": len(zones.parquet_files(settings.zones)),
            "zone_bytes": sum(p.stat().st_size for p in zones.parquet_files(settings.zones))}


def phase_rewrite(args: argparse.Namespace) -> Json:
    """The baseline: every event-zone file read and written back atomically, same writer."""
    import pyarrow.parquet as pq

    from pseudozone import zones
    from pseudozone.config import Settings

    importlib.import_module("pyarrow.dataset")  # pq.read_table imports it on first use
    settings = Settings.from_env(args.root)
    baseline = _rss_now_kib()

    t0 = time.perf_counter()
    files = zones.parquet_files(settings.event_zone)
    rows = bytes_in = 0
    for path in files:
        bytes_in += path.stat().st_size
        table = pq.read_table(path)
        rows += table.num_rows
        zones.write_parquet(table, path)
        del table
    wall = time.perf_counter() - t0

    return {"wall_s": wall, "rss_baseline_kib": baseline, "rows": rows,
            "files_read": len(files), "bytes_read": bytes_in,
            "zone_files_written": len(files), "index_files_written": 0,
            "bytes_written": sum(p.stat().st_size for p in files)}


class Probe:
    """Inclusive wall time, calls and bytes of chosen functions, by patching module attributes.

    Each call is recorded under its name (``flat``) and under its nesting path
    (``tree``, e.g. ``rewrite_group/read/read_table[zone-full]``), so a helper
    called from two places is attributed to each of them.
    """

    def __init__(self) -> None:
        self.flat: dict[str, Json] = defaultdict(lambda: {"calls": 0, "s": 0.0, "bytes": 0})
        self.tree: dict[str, Json] = defaultdict(lambda: {"calls": 0, "s": 0.0, "bytes": 0})
        self.results: dict[str, list[Any]] = defaultdict(list)
        self.missing: list[str] = []
        self._stack: list[str] = []

    @staticmethod
    def _add(table: dict[str, Json], key: str, seconds: float, nbytes: int) -> None:
        entry = table[key]
        entry["calls"] += 1
        entry["s"] += seconds
        entry["bytes"] += nbytes

    def wrap(self, owner: Any, attrs: tuple[str, ...], name: str, *, keep: bool = False,
             required: bool = False,
             split: Callable[[tuple[Any, ...], dict[str, Any]], tuple[str, int]] | None = None) -> None:
        """Wrap the first of ``attrs`` that ``owner`` has (helpers get renamed)."""
        attr = next((a for a in attrs if hasattr(owner, a)), None)
        if attr is None:
            if required:
                raise SystemExit(f"{getattr(owner, '__name__', owner)} has none of {attrs}")
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attrs[0]}")
            return
        original = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            path = "/".join([*self._stack, name])
            self._stack.append(name)
            t0 = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                self._stack.pop()
            sub, nbytes = split(args, kwargs) if split is not None else ("", 0)
            self._add(self.flat, name, elapsed, nbytes)
            self._add(self.tree, path, elapsed, nbytes)
            if sub:
                self._add(self.flat, f"{name}[{sub}]", elapsed, nbytes)
                self._add(self.tree, f"{path}[{sub}]", elapsed, nbytes)
            if keep:
                self.results[name].append(out)
            return out

        setattr(owner, attr, timed)


def _size(path: Any) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError):
        return 0


def _install_probe(settings: Any) -> Probe:
    import pyarrow.parquet as pq

    from pseudozone import keys, zones
    from pseudozone.lake import index
    from pseudozone.rights import export, process, requests

    index_root = str(settings.subject_index)

    def where(path: Any) -> str:
        return "index" if str(path).startswith(index_root) else "zone"

    def write_split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, int]:
        path = args[1] if len(args) > 1 else kwargs.get("path")
        return where(path), _size(path)

    def read_split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, int]:
        source = args[0] if args else kwargs.get("source")
        kind = where(source)
        if kind == "zone":
            kind = ("zone-filtered" if kwargs.get("filters") is not None
                    else "zone-columns" if kwargs.get("columns") is not None else "zone-full")
        return kind, _size(source)

    probe = Probe()
    # the steps of process_all (required) ...
    probe.wrap(requests, ("intake_inbox",), "intake_inbox", required=True)
    probe.wrap(process, ("open_run",), "open_run", keep=True, required=True)
    probe.wrap(process, ("rewrite_group",), "rewrite_group", keep=True, required=True)
    # process_all calls the name process imported (or, before that import, export's attribute)
    probe.wrap(process if hasattr(process, "export_request") else export, ("export_request",),
               "export_request", keep=True, required=True)
    probe.wrap(process, ("close_run",), "close_run", keep=True, required=True)
    # ... and some of their helpers (optional: skipped, and listed, when renamed)
    probe.wrap(process, ("index_lookup", "_index_rows"), "index_lookup")
    probe.wrap(index, ("lookup_cookies",), "cookie_lookup")
    probe.wrap(process, ("_read",), "read")
    probe.wrap(process, ("_publish",), "publish")
    probe.wrap(export, ("_subject_rows",), "subject_rows")
    probe.wrap(export, ("_profile_rows",), "profile_rows")
    probe.wrap(process, ("_scan_affected",), "scan")
    probe.wrap(keys.Vault, ("destroy",), "key_destroy")
    probe.wrap(process, ("_finish",), "finish")
    try:
        actions: Any = importlib.import_module("pseudozone.rights.actions")
    except ImportError:
        probe.missing.append("pseudozone.rights.actions")
    else:
        probe.wrap(actions, ("erase_from_landing",), "landing")
    probe.wrap(zones, ("write_parquet",), "write_parquet", split=write_split, required=True)
    probe.wrap(pq, ("read_table",), "read_table", split=read_split, required=True)
    return probe


def _rights_phase(args: argparse.Namespace, kind: str, targets: list[tuple[str, str]]) -> Json:
    """Submit requests (untimed), then time one ``process_all`` with its steps probed."""
    from pseudozone.config import Settings
    from pseudozone.keys import KeyRing
    from pseudozone.rights import process, requests

    importlib.import_module("pyarrow.dataset")
    settings = Settings.from_env(args.root)
    keyring = KeyRing.load(settings)
    submitted = []
    for tenant, user in targets:
        status = requests.submit(settings, {"type": kind, "tenant_id": tenant, "user_id": user},
                                 source="test", keyring=keyring)
        if status.state != "accepted":
            raise SystemExit(f"request for {tenant}/{user} was {status.state}: {status.reason}")
        submitted.append(status.request_id)
    probe = _install_probe(settings)
    baseline = _rss_now_kib()

    t0 = time.perf_counter()
    summary = process.process_all(settings, f"bench-{args.phase}", keyring=keyring)
    wall = time.perf_counter() - t0

    states = [requests.get_status(settings, r) for r in submitted]
    not_done = [s.request_id for s in states if s.state != "completed"]
    if not_done:
        raise SystemExit(f"{len(not_done)} request(s) did not complete: {not_done[:5]}")
    groups = probe.results["rewrite_group"]
    erased: dict[str, int] = defaultdict(int)
    for res in groups:
        for subject, counts in res["counts"].items():
            if subject == "*":
                continue
            for key, n in counts.items():
                erased[key] += n
    subjects_hit = len({s for res in groups for s, c in res["counts"].items()
                        if s != "*" and any(c.values())})
    flat = probe.flat

    def count(key: str, field: str = "calls") -> int:
        return int(flat[key][field]) if key in flat else 0

    out: Json = {
        "wall_s": wall, "rss_baseline_kib": baseline, "requests": len(submitted),
        "summary": summary, "groups": len(groups), "subjects_with_rows": subjects_hit,
        "rows_removed": dict(erased),
        "zone_files_written": count("write_parquet[zone]"),
        "index_files_written": count("write_parquet[index]"),
        "bytes_written": count("write_parquet[zone]", "bytes") + count("write_parquet[index]", "bytes"),
        "files_read": count("read_table"), "bytes_read": count("read_table", "bytes"),
        "steps": {k: dict(v) for k, v in sorted(probe.tree.items())},
        "steps_flat": {k: dict(v) for k, v in sorted(flat.items())},
        "probe_missing": probe.missing,
    }
    if kind == "erase" and len(states) == 1:
        outcome = states[0].outcome or {}
        out["outcome"] = {k: outcome.get(k) for k in ("rows_removed", "files_scanned", "key_destroyed",
                                                      "verified_clean", "linked_cookies_erased",
                                                      "shared_cookies_kept")}
    if kind == "export":
        exports = probe.results["export_request"]
        archive = settings.root / exports[0]["archive"] if exports else None
        out["export"] = {"files": exports[0]["files"] if exports else [],
                         "profile_rows": exports[0]["profile_rows"] if exports else 0,
                         "archive_bytes": archive.stat().st_size if archive else 0}
    return out


def phase_erase1(args: argparse.Namespace) -> Json:
    return _rights_phase(args, "erase", [(ERASE_TENANT, ERASE_USER)])


def phase_erase1c(args: argparse.Namespace) -> Json:
    if not (args.tenant and args.user):
        raise SystemExit("erase1c needs --tenant and --user (the parent passes pick's choice)")
    return _rights_phase(args, "erase", [(args.tenant, args.user)])


def phase_erase100(args: argparse.Namespace) -> Json:
    return _rights_phase(args, "erase", spread_users(args.events, N_ERASE_MANY))


def phase_export(args: argparse.Namespace) -> Json:
    return _rights_phase(args, "export", [(EXPORT_TENANT, EXPORT_USER)])


def _links_of(settings: Any, tenant: str, subjects: list[str]) -> dict[str, dict[str, int]]:
    """From ``identity_links``: subject -> {cookie: how many subjects that cookie was seen with}."""
    from pseudozone import state

    out: dict[str, dict[str, int]] = defaultdict(dict)
    with state.connect(settings) as conn:
        rows = conn.execute(
            "SELECT l.subject_id, l.anonymous_pid, (SELECT COUNT(DISTINCT o.subject_id)"
            "  FROM identity_links o WHERE o.tenant_id = l.tenant_id AND o.anonymous_pid = l.anonymous_pid)"
            " FROM identity_links l WHERE l.tenant_id = ?"
            " AND l.subject_id IN (SELECT value FROM json_each(?))",
            (tenant, json.dumps(subjects))).fetchall()
    for subject, cookie, owners in rows:
        out[str(subject)][str(cookie)] = int(owners)
    return out


def _logged_out_rows(settings: Any, tenant: str, cookies: list[str]) -> tuple[dict[str, int], int]:
    """Logged-out rows (``subject_id`` null) per cookie in every event-zone file of ``tenant``
    that has a cookie column (all buckets, not only the ones the library scans); files read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pseudozone import zones
    from pseudozone.contracts import COOKIE_COLUMN, SUBJECT_COLUMN
    from pseudozone.lake import layout

    counts = dict.fromkeys(cookies, 0)
    if not cookies:
        return counts, 0
    wanted = pa.array(sorted(cookies), pa.string())
    flt = pc.field(SUBJECT_COLUMN).is_null() & pc.field(COOKIE_COLUMN).isin(wanted)
    files = 0
    for _dataset, owner, tenant_dir in layout.tenant_dirs(settings.event_zone):
        if owner != tenant:
            continue
        for path in zones.parquet_files(tenant_dir):
            if COOKIE_COLUMN not in pq.read_schema(path).names:
                continue
            files += 1
            hit = pq.read_table(path, columns=[COOKIE_COLUMN], filters=flt)[COOKIE_COLUMN].combine_chunks()
            if len(hit):
                found = pc.value_counts(hit)
                for cookie, n in zip(found.field("values").to_pylist(), found.field("counts").to_pylist(),
                                     strict=True):
                    counts[str(cookie)] += int(n)
    return counts, files


def phase_pick(args: argparse.Namespace) -> Json:
    """Untimed: the subject for erase1c (see the module docstring), chosen on a pristine copy."""
    from pseudozone.config import Settings
    from pseudozone.keys import KeyRing

    settings = Settings.from_env(args.root)
    keyring = KeyRing.load(settings)
    t0 = time.perf_counter()
    tenant, first, count = users_per_tenant(args.events)[0]
    stop = first + min(count, PICK_MAX_USERS)
    # closest first: unshared cookies with logged-out rows, shared cookies, cookie count, user order
    best: tuple[tuple[int, int, int, int], Json] | None = None
    erase1_subject: Json | None = None
    examined = files_read = 0
    for chunk in range(first, stop, PICK_CHUNK):
        users = [f"usr_{n:07d}" for n in range(chunk, min(chunk + PICK_CHUNK, stop))]
        subject_of = {u: keyring.subject_id(tenant, u) for u in users}
        links = _links_of(settings, tenant, list(subject_of.values()))
        all_cookies = sorted({c for cs in links.values() for c in cs})
        logged_out, files = _logged_out_rows(settings, tenant, all_cookies)
        files_read += files
        for order, user in enumerate(users, start=examined):
            cookies = links.get(subject_of[user], {})
            unshared = sorted(c for c, owners in cookies.items() if owners == 1)
            with_rows = [c for c in unshared if logged_out[c]]
            report: Json = {
                "tenant": tenant, "user": user, "subject": subject_of[user],
                "cookies": len(cookies), "shared_cookies": len(cookies) - len(unshared),
                "unshared_cookies": unshared,
                "logged_out_rows": [logged_out[c] for c in unshared],
                "unshared_with_logged_out_rows": len(with_rows)}
            if (tenant, user) == (ERASE_TENANT, ERASE_USER):
                erase1_subject = {k: report[k]
                                  for k in ("user", "cookies", "shared_cookies", "logged_out_rows")}
            key = (abs(COOKIES_WANTED - len(with_rows)), len(cookies) - len(unshared),
                   abs(COOKIES_WANTED - len(cookies)), order)
            if best is None or key < best[0]:
                best = (key, report)
        examined += len(users)
        if best is not None and best[0][:3] == (0, 0, 0):
            break
    if best is None:
        raise SystemExit(f"pick: no user of tenant {tenant} examined")
    chosen = best[1]
    return {**chosen, "exact": chosen["cookies"] == COOKIES_WANTED
            and chosen["unshared_with_logged_out_rows"] == COOKIES_WANTED,
            "users_examined": examined, "event_files_scanned": files_read,
            "erase1_subject": erase1_subject, "wall_s": time.perf_counter() - t0}


def phase_verify(args: argparse.Namespace) -> Json:
    """After an erase: the subject's pseudonym is in no zone file nor index file, its key is
    gone, and (``--cookies``) none of the given cookies has a row in any zone file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pseudozone import state, zones
    from pseudozone.config import Settings
    from pseudozone.contracts import COOKIE_COLUMN, SUBJECT_COLUMN
    from pseudozone.keys import KeyRing

    tenant, user = args.tenant or ERASE_TENANT, args.user or ERASE_USER
    cookies = pa.array(sorted(c for c in (args.cookies or "").split(",") if c), pa.string())
    settings = Settings.from_env(args.root)
    subject = KeyRing.load(settings).subject_id(tenant, user)
    t0 = time.perf_counter()
    zone_files = zones.parquet_files(settings.zones)
    files = zone_files + zones.parquet_files(settings.subject_index)
    hits, without_column = [], 0
    for path in files:
        if SUBJECT_COLUMN not in pq.read_schema(path).names:
            without_column += 1
            continue
        col = pq.read_table(path, columns=[SUBJECT_COLUMN])[SUBJECT_COLUMN]
        if pc.any(pc.fill_null(pc.equal(col, subject), False)).as_py():
            hits.append(settings.shown(path))
    cookie_files, cookie_rows, with_cookie_column = [], 0, 0
    if len(cookies):
        for path in zone_files:
            if COOKIE_COLUMN not in pq.read_schema(path).names:
                continue
            with_cookie_column += 1
            col = pq.read_table(path, columns=[COOKIE_COLUMN])[COOKIE_COLUMN]
            n = int(pc.sum(pc.is_in(col, value_set=cookies)).as_py() or 0)
            if n:
                cookie_rows += n
                cookie_files.append(settings.shown(path))
    with state.connect(settings) as conn:
        key_row = conn.execute("SELECT wrapped_dek IS NULL FROM subject_keys WHERE tenant_id = ?"
                               " AND subject_id = ?", (tenant, subject)).fetchone()
    return {"wall_s": time.perf_counter() - t0, "tenant": tenant, "user": user,
            "files_checked": len(files), "files_without_subject_column": without_column,
            "files_with_subject": hits, "key_destroyed": bool(key_row and key_row[0]),
            "cookies_checked": len(cookies), "files_with_cookie_column": with_cookie_column,
            "files_with_cookie_rows": cookie_files, "cookie_rows_left": cookie_rows}


PHASES: dict[str, Callable[[argparse.Namespace], Json]] = {
    "generate": phase_generate, "ingest": phase_ingest, "rewrite": phase_rewrite,
    "erase1": phase_erase1, "erase1c": phase_erase1c, "erase100": phase_erase100, "export": phase_export,
    "pick": phase_pick, "verify": phase_verify}


# -- parent -----------------------------------------------------------------------------------


def run_child(phase: str, root: Path, events: int, *extra: str) -> Json:
    """One phase of this script in a fresh interpreter (``bench_ingest.run_child``)."""
    return bi.run_child(phase, "--root", str(root), "--events", str(events), *extra, script=Path(__file__))


def master_key(workdir: Path, fresh: bool) -> str:
    """The throw-away master key of the benchmark lake (a 0600 file beside it)."""
    path = workdir / KEY_FILE
    if fresh or not path.exists():
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path.read_text().strip()


def ensure_lake(workdir: Path, events: int) -> Json:
    """Generate and ingest the pristine lake once; reuse it when the marker matches."""
    pristine = workdir / "pristine"
    marker = pristine / MARKER
    wanted = {"events": events, "batch_rows": BATCH_ROWS, "tenants": TENANTS, "seed": SEED}
    if marker.exists() and (workdir / KEY_FILE).exists():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("params") == wanted:
            os.environ[KEY_ENV] = master_key(workdir, fresh=False)
            return {**previous, "skipped": True}
    shutil.rmtree(pristine, ignore_errors=True)
    shutil.rmtree(key_dir(pristine), ignore_errors=True)
    pristine.mkdir(parents=True)
    # set before any child loads keys; the children inherit it
    os.environ[KEY_ENV] = master_key(workdir, fresh=True)
    gen = run_child("generate", pristine, events)
    ing = run_child("ingest", pristine, events)
    lake = {"params": wanted, "generate": gen, "ingest": ing}
    marker.write_text(json.dumps(lake, indent=2) + "\n")
    return {**lake, "skipped": False}


def key_dir(root: Path) -> Path:
    """The key directory beside a data root (``Settings.key_dir`` without $PSEUDOZONE_KEY_DIR):
    the tenants' KEK seeds live there, outside the root (docs/adr/0009)."""
    return root.with_name(root.name + ".keys")


def restore(pristine: Path, run: Path) -> None:
    """A working copy: Parquet files hard-linked (only ever replaced, never modified in
    place), everything else (SQLite databases with -wal/-shm, key files) copied, and the
    pristine key directory (KEK seeds) copied beside it."""
    shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(key_dir(run), ignore_errors=True)
    if key_dir(pristine).is_dir():
        shutil.copytree(key_dir(pristine), key_dir(run))
    for dirpath, _dirnames, filenames in os.walk(pristine):
        src_dir = Path(dirpath)
        dst_dir = run / src_dir.relative_to(pristine)
        dst_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if src_dir == pristine and name == MARKER:
                continue
            if name.endswith(".parquet"):
                os.link(src_dir / name, dst_dir / name)
            else:
                shutil.copy2(src_dir / name, dst_dir / name)


def warm_page_cache(root: Path) -> int:
    """Read every file of the lake once (untimed) so that every phase starts warm."""
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    total += len(chunk)
    return total


def source_digests() -> dict[str, str]:
    import hashlib

    pkg = REPO / "include" / "pseudozone"
    return {str(p.relative_to(pkg)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in [*sorted((pkg / "rights").glob("*.py")), pkg / "zones.py", pkg / "ingest.py"]}


def summarize(runs: list[Json]) -> Json:
    best: Json = {}
    for phase in PHASE_ORDER:
        reports = [r[phase] for r in runs]
        fastest = min(reports, key=lambda r: float(r["wall_s"]))
        best[phase] = {**{k: v for k, v in fastest.items() if k != "peak_rss_kib"},
                       "peak_rss_kib": max(int(r["peak_rss_kib"]) for r in reports),
                       "all_wall_s": [r["wall_s"] for r in reports]}
    base = float(best["rewrite"]["wall_s"])
    verdicts = {phase: {"ratio": float(best[phase]["wall_s"]) / base, "max_ratio": target,
                        "pass": float(best[phase]["wall_s"]) / base <= target}
                for phase, target in TARGETS.items()}
    for phase in ERASE_PHASES:
        # informational: the erase of the raw landing files (docs/adr/0011) apart, since the
        # lake keeps every landing file (as within the landing retention period)
        landing = float(best[phase]["steps"].get("close_run/landing", {}).get("s", 0.0))
        verdicts[phase]["landing_s"] = landing
        verdicts[phase]["ratio_without_landing"] = (float(best[phase]["wall_s"]) - landing) / base
    return {"best": best, "verdicts": verdicts}


def breakdown(report: Json) -> list[tuple[str, float, str]]:
    """Where ``process_all``'s time went: (step, seconds, note); sub-steps indented."""
    tree: dict[str, Json] = report["steps"]

    def s(key: str) -> float:
        return float(tree[key]["s"]) if key in tree else 0.0

    def n(key: str) -> int:
        return int(tree[key]["calls"]) if key in tree else 0

    def io(prefix: str, leaf: str) -> tuple[int, float]:
        """Calls and MiB of ``leaf`` (e.g. ``read_table[zone``) anywhere under ``prefix``."""
        keys = [k for k in tree if k.startswith(prefix + "/") and k.rsplit("/", 1)[-1].startswith(leaf)
                and k.endswith("]")]
        return sum(int(tree[k]["calls"]) for k in keys), sum(float(tree[k]["bytes"]) for k in keys) / 2**20

    rows: list[tuple[str, float, str]] = [("intake inbox", s("intake_inbox"), "")]
    rows.append(("plan (open_run)", s("open_run"), ""))
    if n("open_run/index_lookup"):
        files, mib = io("open_run", "read_table[index")
        rows.append(("  subject index lookup", s("open_run/index_lookup"),
                     f"{files} index files, {mib:.1f} MiB"))
    if n("open_run/cookie_lookup"):
        files, mib = io("open_run/cookie_lookup", "read_table[zone")
        rows.append(("  linked-cookie scan (bucket 0)", s("open_run/cookie_lookup"),
                     f"{n('open_run/cookie_lookup')} scan(s), {files} two-column reads, "
                     f"{mib:.1f} MiB of files"))
    if n("rewrite_group"):
        rows.append((f"rewrite (rewrite_group x{n('rewrite_group')})", s("rewrite_group"), ""))
        files, mib = io("rewrite_group/read", "read_table[zone")
        rows.append(("  read zone files", s("rewrite_group/read"), f"{files} files, {mib:.1f} MiB"))
        zf, zmib = io("rewrite_group/publish", "write_parquet[zone")
        xf, xmib = io("rewrite_group/publish", "write_parquet[index")
        xr, _ = io("rewrite_group/publish", "read_table[index")
        rows.append(("  publish: index, files, index", s("rewrite_group/publish"),
                     f"{zf} zone files ({zmib:.1f} MiB) + {xf} index writes ({xmib:.1f} MiB), "
                     f"{xr} index reads"))
        rows.append(("  filter, count, holds, audit",
                     s("rewrite_group") - s("rewrite_group/read") - s("rewrite_group/publish"), ""))
    if n("export_request"):
        rows.append((f"export (export_request x{n('export_request')})", s("export_request"), ""))
        files, mib = io("export_request/subject_rows", "read_table[zone")
        rows.append(("  subject rows, event+restricted", s("export_request/subject_rows"),
                     f"{files} files read, {mib:.1f} MiB of files"))
        files, mib = io("export_request/profile_rows", "read_table[zone")
        rows.append(("  profile from PII zone", s("export_request/profile_rows"),
                     f"{files} files read, {mib:.1f} MiB of files"))
        rows.append(("  JSON/CSV, ZIP, write, audit", s("export_request")
                     - s("export_request/subject_rows") - s("export_request/profile_rows"), ""))
    rows.append(("close (close_run)", s("close_run"), ""))
    if n("close_run/scan"):
        files, mib = io("close_run/scan", "read_table[zone")
        rows.append(("  verification scan", s("close_run/scan"),
                     f"{n('close_run/scan')} scan(s), {files} column reads, {mib:.1f} MiB of files"))
        rows.append(("  key destruction", s("close_run/key_destroy"), ""))
    if n("close_run/landing"):
        rows.append(("  landing files (rights.landing)", s("close_run/landing"),
                     f"{n('close_run/landing')} call(s)"))
    rows.append(("  ledger + audit (_finish)", s("close_run/finish"), f"{n('close_run/finish')} request(s)"))
    rows.append(("  other", s("close_run") - s("close_run/scan") - s("close_run/key_destroy")
                 - s("close_run/landing") - s("close_run/finish"), ""))
    accounted = s("intake_inbox") + s("open_run") + s("rewrite_group") + s("export_request") + s("close_run")
    rows.append(("rest of process_all", float(report["wall_s"]) - accounted, ""))
    return rows


def print_table(lake: Json, summary: Json, runs: list[Json], events: int) -> None:
    best = summary["best"]
    gen, ing = lake["generate"], lake["ingest"]
    print()
    print(f"pseudozone rights benchmark: {events:,} events, {TENANTS} tenants, {len(runs)} repeat(s), "
          f"{os.cpu_count()} CPU(s); event zone {ing['event_zone_files']} files, "
          f"{ing['event_zone_bytes'] / 2**20:.1f} MiB")
    cached = " (cached)" if lake.get("skipped") else ""
    print(f"setup{cached}: generate {gen['wall_s']:.2f} s, ingest {ing['wall_s']:.2f} s (untimed below)")
    print()
    head = (f"{'phase':<22}{'wall s':>9}{'peak RSS MiB':>14}{'zone files written':>20}"
            f"{'index files':>13}{'MiB written':>13}{'files read':>12}")
    print(head)
    print("-" * len(head))
    for phase in PHASE_ORDER:
        b = best[phase]
        print(f"{LABELS[phase]:<22}{b['wall_s']:>9.2f}{_mib(b['peak_rss_kib']):>14.0f}"
              f"{b['zone_files_written']:>20}{b['index_files_written']:>13}"
              f"{b['bytes_written'] / 2**20:>13.1f}{b['files_read']:>12}")
    if len(runs) > 1:
        print()
        print("all runs (wall s): " + "  ".join(
            f"{phase} [" + ", ".join(f"{w:.2f}" for w in best[phase]["all_wall_s"]) + "]"
            for phase in PHASE_ORDER))
    print()
    for phase, v in summary["verdicts"].items():
        print(f"{LABELS[phase] + ' / full rewrite':<36}{v['ratio']:6.2f}x   target <= {v['max_ratio']:.2f}x"
              f"   {_verdict(v['pass'])}")
    for phase in ERASE_PHASES:
        v = summary["verdicts"][phase]
        if v["landing_s"]:
            print(f"  ({LABELS[phase]}: {v['landing_s']:.2f} s of it erase landing files; the rest is "
                  f"{v['ratio_without_landing']:.2f}x the full rewrite)")
    for phase in PHASE_ORDER[1:]:
        print()
        print(f"where {LABELS[phase]} spends its {best[phase]['wall_s']:.2f} s (inside process_all):")
        for name, seconds, note in breakdown(best[phase]):
            share = 100 * seconds / best[phase]["wall_s"] if best[phase]["wall_s"] else 0.0
            print(f"  {name:<36}{seconds:>8.3f} s{share:>6.0f} %   {note}".rstrip())


def pick_line(pick: Json) -> str:
    rows = pick["logged_out_rows"]
    exact = "" if pick["exact"] else (f" -- NOT the {COOKIES_WANTED} unshared cookies with logged-out rows "
                                      "wanted: the closest found")
    return (f"erase1c subject: {pick['tenant']}/{pick['user']} ({pick['users_examined']} users examined, "
            f"{pick['event_files_scanned']} event files scanned): {pick['cookies']} linked cookies, "
            f"{pick['shared_cookies']} shared; logged-out event rows per unshared cookie "
            f"{' + '.join(map(str, rows))} = {sum(rows)}{exact}")


def check_erase(phase: str, report: Json, check: Json, pick: Json | None) -> None:
    """Stop with ERASE VERIFICATION FAILED when the erase left the subject or its cookies behind."""
    removed = report["rows_removed"]
    problems = []
    if check["files_with_subject"]:
        problems.append(f"pseudonym still in {len(check['files_with_subject'])} file(s): "
                        + ", ".join(check["files_with_subject"][:10]))
    if not check["key_destroyed"]:
        problems.append("the subject's data key was not destroyed")
    if not removed.get("events_rows_erased"):
        problems.append("no event rows were erased: the subject was not in the lake")
    if pick is not None:
        if check["files_with_cookie_rows"]:
            problems.append(f"{check['cookie_rows_left']} row(s) of its cookies still in "
                            f"{len(check['files_with_cookie_rows'])} file(s): "
                            + ", ".join(check["files_with_cookie_rows"][:10]))
        expected = sum(pick["logged_out_rows"])
        erased = removed.get("events_cookie_rows_erased", 0) + removed.get("restricted_cookie_rows_erased", 0)
        if erased != expected:
            problems.append(f"{erased} logged-out cookie rows erased, {expected} found before the erase")
    if problems:
        raise SystemExit(f"ERASE VERIFICATION FAILED ({phase}): " + "; ".join(problems))


def main_parent(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pristine, run_dir = workdir / "pristine", workdir / "run"
    # every root's key directory is the one beside it (key_dir), as restore() lays them out
    os.environ.pop(KEY_DIR_ENV, None)

    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: 1-minute load average is {load_start[0]:.2f} before the benchmark; "
              "other work on this machine may skew the timings", flush=True)
    lake = ensure_lake(workdir, args.events)
    print(f"lake {'reused' if lake['skipped'] else 'built'}: generate {lake['generate']['wall_s']:.2f} s, "
          f"ingest {lake['ingest']['wall_s']:.2f} s", flush=True)
    # erase1c's subject, chosen untimed on a pristine copy (identity links, logged-out rows)
    restore(pristine, run_dir)
    pick = run_child("pick", run_dir, args.events)
    print(pick_line(pick), flush=True)
    subject_args = {"erase1": ("--tenant", ERASE_TENANT, "--user", ERASE_USER),
                    "erase1c": ("--tenant", pick["tenant"], "--user", pick["user"])}
    warm_page_cache(pristine / "zones")
    warm_page_cache(pristine / "state")

    runs: list[Json] = []
    verifications: list[Json] = []
    for i in range(args.repeat):
        run: Json = {}
        for phase in PHASE_ORDER:
            restore(pristine, run_dir)
            os.sync()  # no dirty pages of the restore get flushed inside a timed region
            run[phase] = run_child(phase, run_dir, args.events, *subject_args.get(phase, ()))
            if phase in ERASE_PHASES:
                cookies = ("--cookies", ",".join(pick["unshared_cookies"])) if phase == "erase1c" else ()
                check = run_child("verify", run_dir, args.events, *subject_args[phase], *cookies)
                verifications.append({"phase": phase, "run": i + 1, **check})
                check_erase(phase, run[phase], check, pick if phase == "erase1c" else None)
        runs.append(run)
        print(f"run {i + 1}/{args.repeat}: " + ", ".join(
            f"{phase} {run[phase]['wall_s']:.2f}s ({_mib(run[phase]['peak_rss_kib']):.0f} MiB)"
            for phase in PHASE_ORDER), flush=True)

    summary = summarize(runs)
    print_table(lake, summary, runs, args.events)
    print()
    print(pick_line(pick))
    for phase in ERASE_PHASES:
        v = next(c for c in reversed(verifications) if c["phase"] == phase)
        line = (f"erase check ({phase}, {v['tenant']}/{v['user']}): {v['files_checked']} zone and index "
                f"files scanned ({v['files_without_subject_column']} without a subject column), "
                f"pseudonym found in {len(v['files_with_subject'])}, "
                f"data key destroyed: {v['key_destroyed']}")
        if v["cookies_checked"]:
            outcome = summary["best"][phase].get("outcome") or {}
            removed = summary["best"][phase]["rows_removed"]
            line += (f"; {v['cookies_checked']} cookies: rows left in {len(v['files_with_cookie_rows'])} of "
                     f"{v['files_with_cookie_column']} zone files with a cookie column "
                     f"({v['cookie_rows_left']} rows); erased "
                     f"{removed.get('events_rows_erased', 0)} logged-in + "
                     f"{removed.get('events_cookie_rows_erased', 0)} logged-out event rows, "
                     f"linked_cookies_erased {outcome.get('linked_cookies_erased')}, "
                     f"shared_cookies_kept {outcome.get('shared_cookies_kept')}")
        print(line)
    results = {
        "config": {"events": args.events, "batch_rows": BATCH_ROWS, "tenants": TENANTS, "seed": SEED,
                   "repeat": args.repeat, "erase1": [ERASE_TENANT, ERASE_USER],
                   "erase1c": pick,
                   "erase100": spread_users(args.events, N_ERASE_MANY),
                   "export": [EXPORT_TENANT, EXPORT_USER], "targets": TARGETS},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        # the library is under active development: which sources were measured
        "library_sha256": source_digests(),
        "lake": lake,
        "runs": runs,
        "verification": verifications,
        **{f"{phase}_breakdown": [{"step": name.strip(), "s": sec, "note": note}
                                  for name, sec, note in breakdown(summary["best"][phase])]
           for phase in ERASE_PHASES},
        **summary,
    }
    out = workdir / RESULTS
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")

    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(key_dir(run_dir), ignore_errors=True)
    if not args.keep:
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.rmtree(key_dir(pristine), ignore_errors=True)
        (workdir / KEY_FILE).unlink(missing_ok=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bi.common_parser(
        __doc__, workdir=DEFAULT_WORKDIR,
        workdir_help="lake, working copy and results directory (default bench/out/rights)",
        keep_help="keep the ingested lake (a re-run with the same --events reuses it)",
        repeat_help="rounds of the five phases; best wall wins")
    # internal: which phase a child process runs, and on which data root
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    # internal: the subject of erase1c and of the erase check (and the cookies it checks)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--cookies", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.events < 1 or args.repeat < 1:
        parser.error("--events and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return bi.run_main(parse_args(argv), PHASES, main_parent)


if __name__ == "__main__":
    sys.exit(main())
