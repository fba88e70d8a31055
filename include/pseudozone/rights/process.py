"""Apply rights requests to the zones: plan, rewrite file groups, export, verify and close.

``open_run`` takes every accepted request (and any left ``in_progress`` by a run
that died), looks up the files holding each subject in the subject index, and
groups the work by landing batch: every file of one batch (its event-zone date
partitions, their restricted-zone mirrors and its PII-zone file) is rewritten
once, by one task, for all requests of the run.  ``rewrite_group`` applies
erase / restrict / unrestrict / rectify to those files under the storage
protocol; ``close_run`` verifies, deletes or rewrites the landing and quarantined
files that still hold an erased subject (``rights.landing``), crypto-shreds erased
subjects' keys and completes the requests.  Every step is idempotent: a run killed
anywhere and run again converges on the same zones.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import insert, select, update
from upath import UPath

from pseudozone import contracts, rectifications, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.errors import PseudozoneError
from pseudozone.generalize import GENERALIZERS
from pseudozone.ingest import WRITE_THREADS
from pseudozone.keys import (
    KeyRing,
    Vault,
    advance_pseudonym,
    decrypt_value,
    encrypt_value,
    pii_associated_data,
)
from pseudozone.lake import index, layout, leases
from pseudozone.lake.index import lookup as index_lookup
from pseudozone.lake.subjects import (
    COOKIE_COLUMN,
    Holds,
    SubjectSets,
    as_array,
    erased,
    frozen_cookies,
    legal_holds,
    links,
)
from pseudozone.landing import ARROW_TYPES
from pseudozone.rights import audit, requests, store
from pseudozone.rights.actions import ACTIONS, NO_DATA_FOUND, Closing, GroupPlan, RunPlan, Work
from pseudozone.rights.export import export_request
from pseudozone.validation import gate
from pseudozone.validation.known import KnownValues

log = logging.getLogger(__name__)

ZONES = layout.ZONES


# -- planning --------------------------------------------------------------------------------


def _freeze_cookies(settings: Settings, conn: Any, row: Any, now: Any, keyring: KeyRing | None) -> None:
    """Freeze the cookies a restriction of ``row``'s subject takes along (ADR 0008): from now
    on ingest routes their logged-out rows to the restricted zone too."""
    tenant = row.tenant_id
    restricted_now = frozenset(str(r[0]) for r in conn.execute(
        select(store.restrictions.c.subject_id).where(store.restrictions.c.tenant_id == tenant)))
    sets = SubjectSets(tenant, erased(settings, tenant, keyring), restricted_now,
                       links=links(settings, tenant, {row.subject_id}, keyring))
    frozen = {str(r[0]) for r in conn.execute(select(store.restricted_cookies.c.anonymous_pid).where(
        store.restricted_cookies.c.tenant_id == tenant))}
    new = sorted(sets.to_freeze(row.subject_id) - frozen)
    for cookie in new:
        conn.execute(insert(store.restricted_cookies).values(
            tenant_id=tenant, anonymous_pid=cookie, request_id=row.request_id, since=now))
    if new:
        audit.append(conn, "restriction.cookies_frozen", request_id=row.request_id, tenant_id=tenant,
                     subject_id=row.subject_id, details={"cookies": len(new)}, keyring=keyring)


def _rotating(settings: Settings, keyring: KeyRing) -> set[str]:
    """Tenants whose pseudonym rotation has not finished; ``keyring`` takes the root's versions."""
    keyring.use_versions(state.pseudonym_versions(settings))
    if not state.exists(settings):
        return set()
    with state.connect(settings) as conn:
        return set(state.rotating(conn))


def _advance_subjects(conn: Any, keyring: KeyRing, waiting: set[str]) -> None:
    """Open requests filed under an earlier pseudonym version (before a rotation of their
    tenant finished) name their subject at the tenant's version from now on."""
    r = store.requests.c
    rows = conn.execute(select(r.request_id, r.tenant_id, r.subject_id).where(
        r.state.in_(("accepted", "in_progress")), r.subject_id.is_not(None))).all()
    for request_id, tenant, subject in rows:
        if tenant in waiting:
            continue
        current = keyring.version_of(tenant)
        if not subject.startswith(f"v{current}:"):
            conn.execute(update(store.requests).where(store.requests.c.request_id == request_id).values(
                subject_id=advance_pseudonym(keyring, tenant, "subject", subject, current)))


def _defer(settings: Settings, rows: list[Any], tenants: set[str], run_id: str,
           keyring: KeyRing) -> list[Any]:
    """Put this run's requests of ``tenants`` back to accepted (a rotation of them has begun)."""
    kept = []
    with store.transaction(settings) as conn:
        for row in rows:
            if row.tenant_id not in tenants:
                kept.append(row)
                continue
            if row.state == "accepted":  # moved to in_progress by this run
                conn.execute(update(store.requests).where(store.requests.c.request_id == row.request_id)
                             .values(state="accepted", started_at=None, run_id=None))
                audit.append(conn, "request.deferred", request_id=row.request_id, tenant_id=row.tenant_id,
                             subject_id=row.subject_id, details={"run_id": run_id, "reason": "rotation"},
                             keyring=keyring)
    return kept


def open_run(settings: Settings, run_id: str, *, keyring: KeyRing | None = None) -> RunPlan:
    """Start work on every open request; return the plan (ids, pseudonyms and paths only)."""
    keyring = keyring or KeyRing.load(settings)
    settings.ensure()  # zone modes; the first call of a process sweeps a killed writer's temp files
    now = store.utcnow()
    # a tenant whose pseudonyms are being rotated: its requests wait (docs/adr/0015)
    waiting = _rotating(settings, keyring)
    holder = run_holder(run_id)
    with store.transaction(settings) as conn:
        _advance_subjects(conn, keyring, waiting)
        sconn = state.on(conn, settings)
        open_rows = conn.execute(select(store.requests).where(
            store.requests.c.state.in_(("accepted", "in_progress")))
            .order_by(store.requests.c.received_at, store.requests.c.request_id)).all()
        # one rewriter per tenant: a tenant another run (or a compaction) holds waits for the next
        # run; its lease is held until close_run (or expires with a dead run; lake.leases)
        busy = {t for t in sorted({r.tenant_id for r in open_rows} - waiting)
                if not leases.take(sconn, f"rewrite:{t}", holder, leases.RUN_TTL_S)}
        if busy:
            log.info("rights run %s: tenant(s) %s are being rewritten by another writer; their requests"
                     " wait for the next run", run_id, ", ".join(sorted(busy)))
        rows = [r for r in open_rows if r.tenant_id not in waiting | busy]
        for tenant in sorted({r.tenant_id for r in rows}):
            # an ingest planned before this moment plans again before it publishes
            leases.bump(sconn, tenant)
        for row in rows:
            if row.state == "accepted":
                conn.execute(update(store.requests).where(store.requests.c.request_id == row.request_id)
                             .values(state="in_progress", started_at=now, run_id=run_id))
                audit.append(conn, "request.in_progress", request_id=row.request_id,
                             tenant_id=row.tenant_id, subject_id=row.subject_id, details={"run_id": run_id},
                             keyring=keyring)
            if row.type == "restrict":
                # route the subject's new rows to the restricted zone from now on (fail closed)
                exists = conn.execute(select(store.restrictions.c.subject_id).where(
                    store.restrictions.c.tenant_id == row.tenant_id,
                    store.restrictions.c.subject_id == row.subject_id)).first()
                if exists is None:
                    conn.execute(insert(store.restrictions).values(
                        tenant_id=row.tenant_id, subject_id=row.subject_id, request_id=row.request_id,
                        since=now))
                    audit.append(conn, "restriction.added", request_id=row.request_id,
                                 tenant_id=row.tenant_id, subject_id=row.subject_id, keyring=keyring)
                _freeze_cookies(settings, conn, row, now, keyring)

    # a rotation that began meanwhile saw no request in progress yet: these wait for it
    late = _rotating(settings, keyring) - waiting
    if late:
        rows = _defer(settings, rows, late, run_id, keyring)
        with state.connect(settings) as sconn:
            leases.release(sconn, [f"rewrite:{t}" for t in sorted(late)], holder)
    # an ingest that passed its epoch check before the bump publishes before the index is read
    leases.wait_for_publishers(settings, {r.tenant_id for r in rows})
    # each request's action says what it adds to its tenant's work, in the order received
    # (the latest request per subject decides between restrict and unrestrict; erase wins over all)
    work: dict[str, Work] = defaultdict(Work)
    for row in rows:
        ACTIONS[row.type].plan(work[row.tenant_id], row)
    exports = [request_id for _, w in sorted(work.items()) for request_id in w.exports]
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}

    def group(tenant: str, dataset: str, batch: str) -> dict[str, Any]:
        return groups.setdefault((tenant, dataset, batch), {
            "tenant_id": tenant, "dataset": dataset, "batch_id": batch, "files": set(),
            "erase": set(), "restrict": set(), "unrestrict": set(), "rectify": {}, "erase_cookies": {},
            "restrict_cookies": {}, "unrestrict_cookies": {},
            "release_cookies": sorted({c for cs in release.get(tenant, {}).values() for c in cs})})

    # the subjects of the run that the index lists anywhere: a request for any other one
    # finds no data (a mistyped user id must not look like success)
    indexed: dict[str, list[str]] = {}
    # per erased subject: its linked cookies erased with it, and those shared with another
    # subject (kept: one subject's request alone does not erase them; ADR 0008)
    cookies: dict[str, dict[str, dict[str, int]]] = {}
    # per tenant and unrestricted subject: the frozen cookies its unrestriction releases (ADR 0008)
    release: dict[str, dict[str, list[str]]] = {}
    with_pii = set(contracts.pii_datasets())  # what a rectification rewrites
    for tenant, w in sorted(work.items()):
        w.restrict -= w.erase
        w.unrestrict -= w.erase
        for s in w.erase:
            w.rectify.pop(s, None)
        if not w.subjects():
            continue
        into: dict[str, list[str]] = {}
        back: dict[str, list[str]] = {}
        if w.restrict or w.unrestrict:
            into, back, release[tenant] = _cookie_moves(settings, tenant, w, keyring)
        found = index_lookup(settings, tenant, w.subjects())
        indexed[tenant] = sorted(set(found["subject_id"].to_pylist()))
        for subject, zone, path, dataset, batch in zip(
                *(found[c].to_pylist() for c in ("subject_id", "zone", "path", "dataset", "batch_id")),
                strict=True):
            wanted = ((subject in w.erase)
                      or (subject in w.restrict and zone == layout.EVENTS)
                      or (subject in w.unrestrict and zone == layout.RESTRICTED)
                      or (subject in w.rectify and dataset in with_pii))
            if not wanted:
                continue
            g = group(tenant, dataset, batch)
            g["files"].add(path)
            for kind in ("erase", "restrict", "unrestrict"):
                if subject in getattr(w, kind):
                    g[kind].add(subject)
            if subject in w.rectify:
                g["rectify"][subject] = w.rectify[subject]
        if w.erase:
            # the logged-out rows of the erased subjects' cookies: found by a scan, the index
            # lists subjects only
            linked = links(settings, tenant, w.erase, keyring)
            covered = linked.covered(w.erase)
            cookies[tenant] = {s: {"erased": len(linked.of(s) & covered),
                                   "shared_kept": len(linked.of(s) - covered)}
                               for s in sorted(w.erase) if linked.of(s)}
            owners = linked.owners(covered)
            hits = index.lookup_cookies(settings, tenant, covered)
            columns = (COOKIE_COLUMN, "path", "dataset", "batch_id")
            for cookie, path, dataset, batch in zip(*(hits[c].to_pylist() for c in columns), strict=True):
                g = group(tenant, dataset, batch)
                g["files"].add(path)
                g["erase_cookies"][cookie] = owners[cookie]
        if into or back:
            # the logged-out rows of cookies that follow a (lifted) restriction: found by a scan
            found_cookies = index.lookup_cookies(settings, tenant, set(into) | set(back))
            wanted_columns = (COOKIE_COLUMN, "zone", "path", "dataset", "batch_id")
            for cookie, zone, path, dataset, batch in zip(
                    *(found_cookies[c].to_pylist() for c in wanted_columns), strict=True):
                if cookie in into and zone == layout.EVENTS:
                    g = group(tenant, dataset, batch)
                    g["files"].add(path)
                    g["restrict_cookies"][cookie] = into[cookie]
                elif cookie in back and zone == layout.RESTRICTED:
                    g = group(tenant, dataset, batch)
                    g["files"].add(path)
                    g["unrestrict_cookies"][cookie] = back[cookie]
    plan_groups = [GroupPlan(
        group_id=f"{g['dataset']}.{g['batch_id']}", run_id=run_id, tenant_id=g["tenant_id"],
        dataset=g["dataset"],
        batch_id=g["batch_id"], files=sorted(g["files"]), erase=sorted(g["erase"]),
        restrict=sorted(g["restrict"]), unrestrict=sorted(g["unrestrict"]), rectify=g["rectify"],
        erase_cookies=g["erase_cookies"], restrict_cookies=g["restrict_cookies"],
        unrestrict_cookies=g["unrestrict_cookies"], release_cookies=g["release_cookies"])
        for _, g in sorted(groups.items())]
    # subjects that end the run restricted: a lifted restriction must not outlive a later restrict
    restricted_after = {tenant: sorted(w.restrict) for tenant, w in sorted(work.items()) if w.restrict}
    return RunPlan(run_id=run_id, requests=[r.request_id for r in rows], groups=plan_groups,
                   exports=exports, restricted_after=restricted_after, indexed=indexed, cookies=cookies,
                   release_cookies=release)


def _cookie_moves(settings: Settings, tenant: str, w: Work, keyring: KeyRing | None = None) -> tuple[
        dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
    """(cookies whose logged-out rows move to the restricted zone, cookies whose rows move back,
    per unrestricted subject the frozen cookies its unrestriction releases), the first two
    with their subjects (ADR 0008).

    A frozen cookie of a subject being restricted follows it in.  A cookie of a subject being
    unrestricted is free once no subject it was seen with is still restricted (or erased): its
    rows move back (frozen or not, so that a run that failed half-way heals) and it is released.
    Cookies every subject of which is erased are the erasure's (never moved).
    """
    frozen = frozen_cookies(settings, tenant)
    base = SubjectSets.load(settings, tenant, keyring)
    linked = links(settings, tenant, base.erased | base.restricted | w.subjects(), keyring)
    still = (base.restricted | w.restrict) - w.unrestrict
    gone = linked.covered(base.erased | w.erase)
    free = {c for s in w.unrestrict for c in linked.of(s)} - linked.covered(still | base.erased | w.erase)
    into = ({c for s in w.restrict for c in linked.of(s)} & frozen) - gone
    released = {s: sorted(linked.of(s) & free & frozen) for s in sorted(w.unrestrict)}
    return linked.owners(into), linked.owners(free - gone), released


# -- rewriting one batch's files -------------------------------------------------------------


def _read(path: UPath) -> pa.Table | None:
    try:
        return zones.read_table(path)
    except FileNotFoundError:
        return None


def _mask(table: pa.Table, subjects: set[str] | list[str], cookies: set[str] | None = None) -> pa.Array:
    """Rows of ``subjects``, and logged-out rows (no subject) of ``cookies``."""
    values = pa.array(sorted(subjects), pa.string())
    mask = pc.fill_null(pc.is_in(table[SUBJECT_COLUMN], value_set=values), False)
    if cookies and COOKIE_COLUMN in table.column_names:
        wanted = pa.array(sorted(cookies), pa.string())
        linked = pc.fill_null(pc.is_in(table[COOKIE_COLUMN], value_set=wanted), False)
        mask = pc.or_(mask, pc.and_(pc.is_null(table[SUBJECT_COLUMN]), linked))
    return mask


def _take_subjects(table: pa.Table | None, subjects: set[str],
                   cookies: set[str] | None = None) -> pa.Table | None:
    if table is None:
        return None
    if not (subjects or cookies):
        return table.slice(0, 0)
    return table.filter(_mask(table, subjects, cookies))


def _drop_subjects(table: pa.Table | None, subjects: set[str],
                   cookies: set[str] | None = None) -> pa.Table | None:
    if table is None or not (subjects or cookies):
        return table
    return table.filter(pc.invert(_mask(table, subjects, cookies)))


def _concat(*tables: pa.Table | None) -> pa.Table | None:
    present = [t for t in tables if t is not None]
    if not present:
        return None
    return pa.concat_tables(present) if len(present) > 1 else present[0]


def _move(src: pa.Table | None, dst: pa.Table | None, subjects: set[str],
          cookies: set[str] | None = None) -> tuple[pa.Table | None, pa.Table | None, int]:
    """Move ``subjects``' rows, and the logged-out rows of ``cookies``, from src to dst; safe to
    repeat after a partial move.

    Where src still holds a subject's (a cookie's) rows they are the truth, and any copy of
    them already in dst (from a run that died between its two writes) is replaced.
    """
    if not (subjects or cookies):
        return src, dst, 0
    moving = _take_subjects(src, subjects, cookies)
    if moving is None or moving.num_rows == 0:
        return src, dst, 0
    present = {s for s in pc.unique(moving[SUBJECT_COLUMN]).to_pylist() if s is not None}
    logged_out = moving.filter(pc.is_null(moving[SUBJECT_COLUMN]))
    present_cookies = ({c for c in pc.unique(logged_out[COOKIE_COLUMN]).to_pylist() if c is not None}
                       if cookies and logged_out.num_rows else set())
    return (_drop_subjects(src, subjects, cookies),
            _concat(_drop_subjects(dst, present, present_cookies), moving), moving.num_rows)


def _regeneralize(table: pa.Table | None, contract: contracts.Contract,
                  corrections: dict[str, dict[str, str]],
                  replaced: Replaced | None = None) -> tuple[pa.Table | None, int]:
    """Recompute the event-zone columns generalized from rectified quasi-identifiers.

    ``replaced`` gathers the generalized values they held, per subject and column.
    """
    if table is None or not corrections:
        return table, 0
    changed = 0
    for spec in contract.of_class("quasi"):
        name = spec.event_name
        assert name is not None and spec.generalize is not None
        updates = {s: f[spec.name] for s, f in corrections.items() if spec.name in f}
        if not updates or name not in table.column_names:
            continue
        subj = table[SUBJECT_COLUMN].to_pylist()
        raw = pa.array([updates.get(s) for s in subj], pa.string())
        typed = raw.cast(ARROW_TYPES[spec.type])
        fresh = GENERALIZERS[spec.generalize](typed, spec.params)
        if pa.types.is_dictionary(fresh.type):
            fresh = fresh.cast(fresh.type.value_type)
        hit = pc.is_valid(raw)
        col = table[name].combine_chunks()
        if replaced is not None:
            for s, old in zip(subj, col.cast(pa.string()).to_pylist(), strict=True):
                if s in updates and old is not None:
                    replaced.setdefault((s, spec.name), set()).add(old)
        merged = pc.if_else(hit, fresh.cast(col.type), col)
        table = table.set_column(table.column_names.index(name), name, merged)
        changed += int(pc.sum(hit).as_py() or 0)
    return table, changed


def _rectify_pii(table: pa.Table | None, tenant: str, corrections: dict[str, dict[str, str]],
                 deks: dict[str, bytes], pii_columns: set[str],
                 replaced: Replaced | None = None) -> tuple[pa.Table | None, int]:
    """Rectified PII values encrypted in place; ``replaced`` gathers the values they overwrote."""
    if table is None or not corrections:
        return table, 0
    subjects = table[SUBJECT_COLUMN].to_pylist()
    changed = 0
    for name in sorted({k for f in corrections.values() for k in f} & pii_columns):
        if name not in table.column_names:
            continue
        values = table[name].to_pylist()
        for i, s in enumerate(subjects):
            fields = corrections.get(s)
            if fields and name in fields and s in deks:
                aead, ad = AESGCM(deks[s]), pii_associated_data(tenant, s, name)
                if replaced is not None and values[i] is not None:
                    replaced.setdefault((s, name), set()).add(decrypt_value(aead, values[i], ad))
                values[i] = encrypt_value(aead, fields[name], ad)
                changed += 1
        table = table.set_column(table.column_names.index(name), name, pa.array(values, pa.binary()))
    return table, changed


Replaced = dict[tuple[str, str], set[str]]


def _register_rectifications(settings: Settings, keyring: KeyRing, contract: contracts.Contract, tenant: str,
                             rectify: dict[str, list[str]], corrections: dict[str, dict[str, str]],
                             replaced: Replaced) -> None:
    columns = rectifications.rectifiable(contract)
    with state.connect(settings) as conn:
        deks = Vault(keyring, conn).data_keys(tenant, sorted(corrections), create=False)
        for subject, fields in sorted(corrections.items()):
            if subject not in deks:
                continue  # no data was ever kept for it: nothing to correct later
            for name, value in sorted(fields.items()):
                spec = columns.get(name)
                if spec is None:
                    continue
                olds = replaced.get((subject, name), set())
                # a PII value as the zones compare it; a quasi-identifier's is generalized already
                forms = rectifications.comparable(spec, pa.array(sorted(olds))) if spec.cls == "pii" \
                    else [rectifications.normal(v) for v in olds]
                rectifications.record(conn, tenant, contract.dataset, subject, spec, value, forms,
                                      rectify[subject][-1], deks[subject])


def _corrections(settings: Settings, keyring: KeyRing, tenant: str,
                 rectify: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """subject -> corrected fields, decrypted from the request ledger (never from XCom).

    Several rectifications of one subject in a run apply in the order received.
    """
    out: dict[str, dict[str, str]] = {}
    if not rectify:
        return out
    with store.engine_for(settings).connect() as conn:
        for subject, request_ids in rectify.items():
            for request_id in request_ids:
                row = conn.execute(select(store.requests.c.payload_enc)
                                   .where(store.requests.c.request_id == request_id)).first()
                if row is None or row.payload_enc is None:
                    continue  # completed already: nothing left to apply
                payload = requests.open_payload(keyring, tenant, request_id, row.payload_enc)
                out.setdefault(subject, {}).update(payload.get("fields") or {})
    return out


def rewrite_group(settings: Settings, group: GroupPlan, *,
                  keyring: KeyRing | None = None) -> dict[str, Any]:
    """Apply one run's requests to every file of one batch; returns counts per subject."""
    keyring = keyring or KeyRing.load(settings)
    if "run_id" not in group:  # a plan from before leases (a task retried across an upgrade)
        return _rewrite_group(settings, group, keyring)
    # this run still holds the tenant (else another writer may have outdated the plan's files)
    with leases.kept(settings, [f"rewrite:{group['tenant_id']}"], run_holder(group["run_id"])):
        return _rewrite_group(settings, group, keyring)


def _rewrite_group(settings: Settings, group: GroupPlan, keyring: KeyRing) -> dict[str, Any]:
    tenant, dataset, batch_id = group["tenant_id"], group["dataset"], group["batch_id"]
    contract = contracts.load(dataset)
    erase, restrict, unrestrict = set(group["erase"]), set(group["restrict"]), set(group["unrestrict"])
    # logged-out rows of cookies that follow a restriction in, or a lifted one back (ADR 0008)
    restrict_owners: dict[str, list[str]] = group.get("restrict_cookies", {})
    unrestrict_owners: dict[str, list[str]] = group.get("unrestrict_cookies", {})
    restrict_cookies, unrestrict_cookies = set(restrict_owners), set(unrestrict_owners)
    cookie_owners: dict[str, list[str]] = group.get("erase_cookies", {})
    owners = {s for subjects in cookie_owners.values() for s in subjects}
    held = set(legal_holds(settings, tenant).kept(dataset, erase | owners))
    erase -= held
    # a cookie's logged-out rows go with its subjects, and stay where a hold keeps one of them
    erase_cookies = {c for c, subjects in cookie_owners.items() if not set(subjects) & held}
    corrections = _corrections(settings, keyring, tenant, group["rectify"])
    replaced: Replaced = {}  # (subject, column) -> the values a rectification overwrote
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    outputs: dict[str, pa.Table | None] = {}
    # moves are written in two steps so that a kill between any two writes loses no row:
    # first each file gains its incoming rows while keeping its outgoing ones, then the
    # outgoing rows are dropped (_move treats rows still in the source as the truth)
    interim: dict[str, pa.Table | None] = {}
    pairs = sorted({layout.mirror_pair(p) for p in group["files"] if layout.zone_of(p) != layout.PII})
    for ev_rel, rs_rel in pairs:
        ev = _read(settings.zones / ev_rel)
        rs = _read(settings.zones / rs_rel)
        for s, n in _count(ev, erase).items():
            counts[s]["events_rows_erased"] += n
        for s, n in _count(rs, erase).items():
            counts[s]["restricted_rows_erased"] += n
        for s, n in _count_cookies(ev, erase_cookies, cookie_owners).items():
            counts[s]["events_cookie_rows_erased"] += n
        for s, n in _count_cookies(rs, erase_cookies, cookie_owners).items():
            counts[s]["restricted_cookie_rows_erased"] += n
        ev, rs = _drop_subjects(ev, erase, erase_cookies), _drop_subjects(rs, erase, erase_cookies)
        ev, n_ev = _regeneralize(ev, contract, corrections, replaced)
        rs, n_rs = _regeneralize(rs, contract, corrections, replaced)
        counts["*"]["event_values_rectified"] += n_ev + n_rs
        outgoing_ev = _take_subjects(ev, restrict, restrict_cookies)
        outgoing_rs = _take_subjects(rs, unrestrict, unrestrict_cookies)
        for s, n in _count(ev, restrict).items():
            counts[s]["rows_restricted"] += n
        for s, n in _count(rs, unrestrict).items():
            counts[s]["rows_unrestricted"] += n
        for s, n in _count_cookies(ev, restrict_cookies, restrict_owners).items():
            counts[s]["cookie_rows_restricted"] += n
        for s, n in _count_cookies(rs, unrestrict_cookies, unrestrict_owners).items():
            counts[s]["cookie_rows_unrestricted"] += n
        ev, rs, moved_out = _move(ev, rs, restrict, restrict_cookies)
        rs, ev, moved_back = _move(rs, ev, unrestrict, unrestrict_cookies)
        if moved_out or moved_back:
            interim[ev_rel] = _concat(ev, outgoing_ev)
            interim[rs_rel] = _concat(rs, outgoing_rs)
        outputs[ev_rel], outputs[rs_rel] = ev, rs

    pii_paths = [p for p in group["files"] if layout.zone_of(p) == layout.PII]
    if pii_paths or (corrections and contract.has_pii):
        pii_rel = layout.pii_file(dataset, tenant, batch_id).rel
        pii = _read(settings.zones / pii_rel)
        for s, n in _count(pii, erase).items():
            counts[s]["pii_rows_erased"] += n
        pii = _drop_subjects(pii, erase)
        if corrections:
            with state.connect(settings) as conn:
                deks = Vault(keyring, conn).data_keys(tenant, sorted(corrections), create=False)
            pii_cols = {c.name for c in contract.of_class("pii")}
            pii, n = _rectify_pii(pii, tenant, corrections, deks, pii_cols, replaced)
            counts["*"]["pii_values_rectified"] += n
        outputs[pii_rel] = pii

    _gate(settings, contract, group, outputs, corrections, keyring=keyring)
    if corrections:
        # before the rewrite is published (the old values are gone after it): registered so
        # that a later delivery of them is corrected at ingest (pseudozone.rectifications)
        _register_rectifications(settings, keyring, contract, tenant, group["rectify"], corrections, replaced)
    _publish(settings, dataset, tenant, batch_id, outputs, interim)
    with store.transaction(settings) as conn:
        audit.append(conn, "files.rewritten", tenant_id=tenant, details={
            "dataset": dataset, "batch_id": batch_id, "files": sorted(outputs),
            "erase": len(erase), "erase_cookies": len(erase_cookies), "restrict": len(restrict),
            "restrict_cookies": len(restrict_cookies), "unrestrict": len(unrestrict),
            "unrestrict_cookies": len(unrestrict_cookies), "rectify": len(corrections), "held": sorted(held)},
                     keyring=keyring)
    return {"group_id": group["group_id"], "files": sorted(outputs), "held": sorted(held),
            "counts": {s: dict(c) for s, c in counts.items()}}


def _gate(settings: Settings, contract: contracts.Contract, group: GroupPlan,
          outputs: dict[str, pa.Table | None], corrections: dict[str, dict[str, str]], *,
          keyring: KeyRing | None = None) -> None:
    """Validate a group's rewritten files before any replaces a published one.

    On failure the group is recorded in quarantine (which files, which expectations;
    no rows are kept, since they may hold what must not be published), the audit
    log says so, and ``ValidationFailed`` fails the task; its requests stay
    ``in_progress`` and the next run tries again.
    """
    tenant, dataset = group["tenant_id"], group["dataset"]
    # the sets as this run leaves them; an erased subject's rows kept under a legal hold
    # on this dataset are allowed to stay (lake.subjects)
    base = SubjectSets.load(settings, tenant, keyring)
    run_subjects = {*group["erase"], *group["restrict"], *group["unrestrict"]}
    sets = base.during_run(erase=group["erase"], restrict=group["restrict"], unrestrict=group["unrestrict"],
                           release=group.get("release_cookies", ()),
                           links=links(settings, tenant, base.erased | base.restricted | run_subjects,
                                       keyring))
    new_values = [v for fields in corrections.values() for v in fields.values()]
    known = KnownValues(new_values) if new_values else None
    present = {rel: t for rel, t in sorted(outputs.items()) if t is not None and t.num_rows}
    # rows of other subjects are as published (and validated then); these were changed or moved
    changed = set(group["erase"]) | set(group["restrict"]) | set(group["unrestrict"]) | set(group["rectify"])
    try:
        gate.check(contract, forbidden=as_array(sets.forbidden(dataset)),
                   restricted_subjects=as_array(sets.allowed_restricted(dataset)), known=known,
                   forbidden_cookies=as_array(sets.forbidden_cookies(dataset)),
                   restricted_cookies=as_array(sets.restricted_cookies()),
                   erased=as_array(sets.forbidden_pii(dataset)), changed=changed,
                   events=[(rel, t) for rel, t in present.items() if layout.zone_of(rel) == layout.EVENTS],
                   restricted=[(rel, t) for rel, t in present.items()
                               if layout.zone_of(rel) == layout.RESTRICTED],
                   pii=[(rel, t) for rel, t in present.items() if layout.zone_of(rel) == layout.PII])
    except gate.ValidationFailed as exc:
        reason = {"group_id": group["group_id"], "tenant_id": tenant,
                  "dataset": group["dataset"], "batch_id": group["batch_id"], "files": sorted(outputs),
                  **exc.to_reason()}
        target = layout.rights_quarantine_file(settings, tenant, group["group_id"])
        zones.write_json(reason, target)
        with store.transaction(settings) as conn:
            audit.append(conn, "validation.failed", tenant_id=tenant, details={
                "group_id": group["group_id"], "dataset": group["dataset"], "batch_id": group["batch_id"],
                "failed": exc.detail, "reason_file": settings.shown(target)}, keyring=keyring)
        log.error("group %s: nothing published; %s (see %s)", group["group_id"], exc.detail,
                  settings.shown(target))
        raise


def _count(table: pa.Table | None, subjects: set[str]) -> dict[str, int]:
    if table is None or not subjects or table.num_rows == 0:
        return {}
    hit = table.filter(_mask(table, subjects))
    if hit.num_rows == 0:
        return {}
    counted = pc.value_counts(hit[SUBJECT_COLUMN].combine_chunks())
    return {item["values"]: item["counts"] for item in counted.to_pylist()}


def _count_cookies(table: pa.Table | None, cookies: set[str],
                   owners: dict[str, list[str]]) -> dict[str, int]:
    """Logged-out rows of ``cookies`` per subject (a cookie's rows count for its first subject)."""
    if table is None or not cookies or table.num_rows == 0 or COOKIE_COLUMN not in table.column_names:
        return {}
    hit = table.filter(_mask(table, set(), cookies))
    out: dict[str, int] = defaultdict(int)
    if hit.num_rows:
        for item in pc.value_counts(hit[COOKIE_COLUMN].combine_chunks()).to_pylist():
            out[owners[item["values"]][0]] += item["counts"]
    return dict(out)


def _write_all(settings: Settings, outputs: dict[str, pa.Table | None]) -> None:
    def write(item: tuple[str, pa.Table | None]) -> None:
        rel, table = item
        path = settings.zones / rel
        if table is None or table.num_rows == 0:
            zones.remove(path)
        else:
            zones.write_parquet(table, path)

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write, sorted(outputs.items())))


def _publish(settings: Settings, dataset: str, tenant: str, batch_id: str,
             outputs: dict[str, pa.Table | None], interim: dict[str, pa.Table | None]) -> None:
    """Storage protocol for rewrites: the index can always find every row.

    Without moves (erase, rectify) files only lose rows, so the old index stays a
    superset until the files are written and the new index follows them. With moves,
    rows appear in new files: the index first becomes old ∪ new, then the interim
    files, the final files and the final index are written.
    """
    old_index = index.read(settings, dataset, tenant, batch_id)
    kept = index.without_files(old_index, sorted(outputs))
    final_entries = index.entries(outputs)
    if interim:
        index.write(settings, dataset, tenant, batch_id,
                    pa.concat_tables([old_index, *index.entries(interim), *final_entries]))
        _write_all(settings, interim)
    _write_all(settings, outputs)
    index.write(settings, dataset, tenant, batch_id, pa.concat_tables([kept, *final_entries]))


# -- verification and closing ---------------------------------------------------------------


def _scan_affected(settings: Settings, affected: dict[tuple[str, str], set[str]],
                   cookies: dict[tuple[str, str], set[str]] | None = None
                   ) -> dict[tuple[str, str], list[str]]:
    """For each (tenant, subject), the affected files that still hold its rows, or a logged-out row
    of one of its erased ``cookies``; each file read once."""
    per_file: dict[str, set[str]] = defaultdict(set)
    tenant_of: dict[str, str] = {}
    for (tenant, subject), files in affected.items():
        for rel in files:
            per_file[rel].add(subject)
            tenant_of[subject] = tenant
    owners: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for key, linked in (cookies or {}).items():
        for cookie in linked:
            owners[cookie].add(key)
    found: dict[tuple[str, str], list[str]] = {key: [] for key in affected}
    for rel, subjects in sorted(per_file.items()):
        path = settings.zones / rel
        if not path.exists():
            continue
        wanted_cookies = sorted({c for c, keys in owners.items() if any(k[1] in subjects for k in keys)})
        read_cookies = bool(wanted_cookies) and layout.zone_of(rel) != layout.PII \
            and COOKIE_COLUMN in zones.read_schema(path).names
        table = zones.read_table(path, columns=[SUBJECT_COLUMN, *([COOKIE_COLUMN] if read_cookies else [])])
        col = table[SUBJECT_COLUMN]
        hit = pc.filter(col, pc.fill_null(pc.is_in(col, value_set=pa.array(sorted(subjects))), False))
        keys = {(tenant_of[subject], subject) for subject in pc.unique(hit).to_pylist()}
        if read_cookies:
            logged_out = pc.filter(table[COOKIE_COLUMN], pc.and_(pc.is_null(col), pc.fill_null(
                pc.is_in(table[COOKIE_COLUMN], value_set=pa.array(wanted_cookies, pa.string())), False)))
            keys |= {k for cookie in pc.unique(logged_out).to_pylist() for k in owners[cookie]
                     if k[1] in subjects}
        for key in sorted(keys):
            found[key].append(rel)
    return found


def _with_mirrors(files: list[str]) -> set[str]:
    """Files and, for event- and restricted-zone files, their mirror in the other zone."""
    return set(files) | {m for f in files if layout.zone_of(f) != layout.PII for m in layout.mirror_pair(f)}


# a request's outcome "result": the request was carried out ("done"), or the subject had no data
# anywhere in the lake when the run was planned ("no_data_found": a legitimate answer to the data
# subject, and the sign of a mistyped user id)


def close_run(settings: Settings, plan: RunPlan, results: list[dict[str, Any]],
              exports: list[dict[str, Any]], *, keyring: KeyRing | None = None) -> dict[str, Any]:
    """Verify what was done, destroy erased subjects' keys, complete the requests; then the run's
    tenants are free for the next writer (their rewrite leases are released)."""
    holder = run_holder(plan["run_id"])
    names = [f"rewrite:{t}" for t in sorted({g["tenant_id"] for g in plan["groups"]})]
    try:
        with leases.kept(settings, names, holder):
            return _close_run(settings, plan, results, exports, keyring=keyring)
    finally:
        with state.connect(settings) as sconn:
            leases.release_held(sconn, holder)


def run_holder(run_id: str) -> str:
    """The holder name of a rights run's leases: the run, whichever worker runs its task."""
    return f"run:{run_id}"


def _close_run(settings: Settings, plan: RunPlan, results: list[dict[str, Any]],
               exports: list[dict[str, Any]], *, keyring: KeyRing | None = None) -> dict[str, Any]:
    keyring = keyring or KeyRing.load(settings)
    per_subject: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    held_by_group: dict[str, list[str]] = {}
    for res in results:
        held_by_group[res["group_id"]] = res["held"]
        for s, c in res["counts"].items():
            for k, v in c.items():
                per_subject[s][k] += v
    export_by_request = {e["request_id"]: e for e in exports}
    summary: dict[str, int] = defaultdict(int)
    failures = []
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.requests).where(
            store.requests.c.request_id.in_(plan["requests"]),
            store.requests.c.state == "in_progress")).all()
    # in the order received: an objection and its withdrawal in one run end as the latest says
    rows = sorted(rows, key=lambda r: (store.as_utc(r.received_at), r.request_id))
    # the proof: read the subject column of every file the run touched for the subject
    # (and their restricted mirrors), independently of the rewritten index
    # (and the logged-out rows of the cookies erased with the subject, in the same files)
    affected: dict[tuple[str, str], set[str]] = defaultdict(set)
    erased_cookies: dict[tuple[str, str], set[str]] = defaultdict(set)
    for g in plan["groups"]:
        files = _with_mirrors(g["files"])
        for s in {*g["erase"], *g["restrict"]}:
            affected[(g["tenant_id"], s)] |= files
        for cookie, owners in g.get("erase_cookies", {}).items():
            for s in owners:
                erased_cookies[(g["tenant_id"], s)].add(cookie)
                affected[(g["tenant_id"], s)] |= files
    remaining_files = _scan_affected(settings, affected, erased_cookies)
    holds_of: dict[str, Holds] = {}
    indexed = {tenant: set(found) for tenant, found in plan.get("indexed", {}).items()}
    for row in rows:
        s, tenant = row.subject_id, row.tenant_id
        if tenant not in holds_of:
            holds_of[tenant] = legal_holds(settings, tenant)
        closed = ACTIONS[row.type].close(Closing(
            settings=settings, keyring=keyring, plan=plan, row=row, holds=holds_of[tenant],
            # no file of any zone held the subject when the run was planned
            no_data="indexed" in plan and s not in indexed.get(tenant, set()),
            counts=dict(per_subject.get(s, {})), remaining=remaining_files.get((tenant, s), []),
            files_scanned=len(affected.get((tenant, s), ())), export=export_by_request.get(row.request_id)))
        if closed.failure is not None:
            failures.append(row.request_id)
            _finish(settings, row, "failed", closed.failure, keyring=keyring)
            continue
        outcome: dict[str, Any] = {"type": row.type, "run_id": plan["run_id"], **closed.outcome}
        outcome.setdefault("result", "done")
        _finish(settings, row, "completed", outcome, keyring=keyring)
        summary[row.type if outcome["result"] == "done" else f"{row.type}:{NO_DATA_FOUND}"] += 1
    if summary.get("erase"):
        # the old page images of what the erasures sealed or deleted leave the logs too
        state.truncate_wal(settings)
    if failures:
        raise PseudozoneError(f"{len(failures)} request(s) failed verification: {', '.join(failures)}")
    return {"run_id": plan["run_id"], "completed": dict(summary), "groups": len(results)}


def _finish(settings: Settings, row: Any, state_name: str, details: dict[str, Any], *,
            keyring: KeyRing | None = None) -> None:
    values: dict[str, Any] = {"state": state_name, "completed_at": store.utcnow()}
    if state_name == "completed":
        values.update(outcome=json.dumps(details, sort_keys=True), payload_enc=None)  # wipe raw values
    else:
        values.update(reason=json.dumps(details, sort_keys=True))
    with store.transaction(settings) as conn:
        conn.execute(update(store.requests).where(store.requests.c.request_id == row.request_id)
                     .values(**values))
        audit.append(conn, f"request.{state_name}", request_id=row.request_id, tenant_id=row.tenant_id,
                     subject_id=row.subject_id, details=details, keyring=keyring)
        if row.type == "erase" and state_name == "completed" and details.get("key_destroyed") \
                and row.subject_id:
            # the ledger keeps the erased subject's finished requests under its sealed pseudonym
            ring = keyring or KeyRing.load(settings)
            r = store.requests.c
            conn.execute(update(store.requests).where(
                r.tenant_id == row.tenant_id, r.subject_id == row.subject_id,
                r.state.not_in(("accepted", "in_progress"))).values(
                subject_id=ring.seal(row.tenant_id, row.subject_id)))


def process_all(settings: Settings, run_id: str, *, keyring: KeyRing | None = None) -> dict[str, Any]:
    """Intake the inbox and run every open request, as the DAG does, in this process."""
    keyring = keyring or KeyRing.load(settings)
    requests.intake_inbox(settings, keyring=keyring)
    plan = open_run(settings, run_id, keyring=keyring)
    try:
        results = [rewrite_group(settings, g, keyring=keyring) for g in plan["groups"]]
        exports = [export_request(settings, r, keyring=keyring) for r in plan["exports"]]
    except BaseException:
        # this process is the whole run: its tenants are free for a rerun now, not in RUN_TTL_S
        with state.connect(settings) as sconn:
            leases.release_held(sconn, run_holder(run_id))
        raise
    return close_run(settings, plan, results, exports, keyring=keyring)
