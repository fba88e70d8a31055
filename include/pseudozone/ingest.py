"""Pseudonymize one landing batch into the event zone and the PII zone.

The same functions run inside the ``pseudonymize_ingested`` DAG (one mapped task
per batch) and in ``pseudozone ingest`` (no Airflow).  Steps per batch:

1. ledger: skip a batch already done (a done batch whose file came back with other
   content is quarantined, never re-published); mark it ``processing`` otherwise;
2. read the landing file and conform it to its contract, or quarantine it;
3. build the event-zone table (pseudonyms, generalized quasi-identifiers,
   scrubbed free text) and the PII-zone table (AES-GCM ciphertext per value);
4. stage every output file while the publish gate validates the outputs with Great
   Expectations (``pseudozone.validation.gate``; a failure quarantines the batch and
   publishes nothing), write the subject index, publish by atomic rename;
5. ledger: ``done`` with counts.

Steps 1-3 are ``_prepare`` and 4-5 ``_commit``; ``ingest_pending`` overlaps the
commit of one batch with the preparation of the next.

Results carry ids, paths and counts only (they go to XCom and logs).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import shutil
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from upath import UPath

from pseudozone import ledger, linkage, rectifications, scrub, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN, ColumnSpec, Contract
from pseudozone.errors import ContractViolation, PseudozoneError, machine_failure
from pseudozone.generalize import GENERALIZERS
from pseudozone.keys import KeyRing, Vault, encrypt_value, pii_associated_data
from pseudozone.lake import consent, index, layout, leases, published
from pseudozone.lake.layout import subject_buckets
from pseudozone.lake.subjects import COOKIE_COLUMN, SubjectSets, as_array, link_pairs, record_links
from pseudozone.landing import BatchRef, fingerprint, quarantine, read_batch, sha256_of
from pseudozone.pii.detectors import DEFAULT_REGIONS
from pseudozone.pii.scan import Evidence
from pseudozone.pii.tenant import TenantValues, searchable, tenant_values
from pseudozone.validation import gate
from pseudozone.validation.known import AnyKnown, Known

log = logging.getLogger(__name__)

EVENT_ZONE = layout.EVENTS
RESTRICTED_ZONE = layout.RESTRICTED
PII_ZONE = layout.PII
WRITE_THREADS = 2
UPLOAD_THREADS = 8  # staged files uploaded at once to object storage (latency-bound)
REPLANS = 3  # a batch planned again this many times at most when rights runs keep beginning
SCRUB_THREADS = 2


@dataclass
class BatchResult:
    batch_id: str
    dataset: str
    tenant_id: str
    status: str  # done | skipped | quarantined
    rows_in: int = 0
    rows_event: int = 0
    rows_pii: int = 0
    rows_restricted: int = 0
    rows_dropped_erased: int = 0
    # rows whose unique key this tenant's zones already held (or an earlier row of the batch)
    rows_dropped_duplicate: int = 0
    # superseded values of rectified subjects put back to their rectified value, and
    # rectifications retired by an update newer than them (pseudozone.rectifications)
    values_rectified: int = 0
    rectifications_retired: int = 0
    subjects: int = 0
    files: list[str] = field(default_factory=list)
    reason: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def counts(self) -> dict[str, int]:
        return {"rows_in": self.rows_in, "rows_event": self.rows_event, "rows_pii": self.rows_pii,
                "rows_restricted": self.rows_restricted, "rows_dropped_erased": self.rows_dropped_erased,
                "rows_dropped_duplicate": self.rows_dropped_duplicate,
                "subjects": self.subjects, "files": len(self.files)}


def pseudonymize_column(keyring: KeyRing, tenant: str, purpose: str,
                        values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """HMAC each distinct value once; nulls stay null.

    The result is dictionary-encoded (row → index into the distinct pseudonyms), so
    sorting and slicing move 4-byte indices rather than 67-byte strings; it is
    decoded to plain strings only when a partition is written (``_plain_take``).
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    encoded = pc.dictionary_encode(arr)
    distinct = encoded.dictionary.to_pylist()
    pseudonyms = pa.array(keyring.pseudonymize(tenant, purpose, distinct), pa.string())
    return pa.DictionaryArray.from_arrays(encoded.indices, pseudonyms)


def text_pseudonyms(keyring: KeyRing, tenant: str, ids: list[str]) -> list[str]:
    """The keyed pseudonyms behind the ``[id:…]`` tokens of ids in free text, at the tenant's
    version: version 1 of the id, then each later version a step of the previous version's
    token (``linkage.token_of``), so that a rotation can step a token it finds in published
    text (docs/adr/0015-pseudonym-rotation.md)."""
    out = keyring.pseudonymize(tenant, linkage.TEXT_PURPOSE, ids, version=1)
    for version in range(2, keyring.version_of(tenant) + 1):
        previous = out

        def pseudonyms(_ids: list[str], previous: list[str] = previous) -> list[str]:
            return previous

        tokens = linkage._tokens(pseudonyms, ids).to_pylist()  # token_of each, vectorized
        out = keyring.step(tenant, linkage.TEXT_PURPOSE, version, tokens)
    return out


def _own_values(table: pa.Table, contract: Contract) -> list[list[str | None]] | None:
    """Each row's values of the PII columns that are not searched tenant-wide (its city)."""
    cols = [table[c.name].to_pylist() for c in contract.columns if c.cls == "pii" and not searchable(c)]
    return [list(row) for row in zip(*cols, strict=True)] if cols else None


def build_event_table(table: pa.Table, contract: Contract, keyring: KeyRing, tenant: str, *,
                      known: Known | None = None, regions: tuple[str, ...] = DEFAULT_REGIONS,
                      evidence: dict[str, Evidence] | None = None) -> pa.Table:
    """The event-zone columns of ``table`` in contract order (Hive partitions excluded).

    Free text is scrubbed of confirmed PII forms (phones read under ``regions``) and of
    every ``known`` value of the tenant's subjects.  ``evidence``, when given, receives
    each free-text column's scan evidence (``pseudozone.pii.scan.Evidence``) for the gate.
    """
    own = _own_values(table, contract)

    def tokens(values: list[str]) -> list[str]:
        return text_pseudonyms(keyring, tenant, values)

    def scrubbed(spec: ColumnSpec, col: pa.ChunkedArray) -> tuple[pa.Array, Evidence]:
        if own is not None:
            col = pa.chunked_array([pa.array(scrub.redact_known(col.to_pylist(), own), pa.string())])
        clean, found = scrub.scrub_with_evidence(col, regions=regions, known=known)
        # then the platform's ids in it (docs/adr/0010-linkage.md); the evidence stays that of
        # the scrubber's input, so the gate checks every row this changed in full
        return (linkage.replace_ids(clean, tokens, evidence=found) if spec.tokenize_ids else clean), found

    out: dict[str, Any] = {}
    # free-text columns are scrubbed side by side: their Arrow kernels run outside the GIL
    with ThreadPoolExecutor(SCRUB_THREADS, thread_name_prefix="pseudozone-scrub") as pool:
        for spec in contract.columns:
            if spec.event_name is not None and spec.cls == "free_text":
                out[spec.event_name] = pool.submit(scrubbed, spec, table[spec.name])
        for spec in contract.columns:
            name = spec.event_name
            if name is None or spec.cls == "free_text":
                continue
            out[name] = _event_column(spec, table[spec.name], keyring, tenant)
        done = {}
        for name, value in out.items():
            if isinstance(value, Future):
                done[name], found = value.result()
                if evidence is not None:
                    evidence[name] = found
            else:
                done[name] = value
    return pa.table({c.event_name: done[c.event_name] for c in contract.columns if c.event_name})


def _event_column(spec: ColumnSpec, col: pa.ChunkedArray, keyring: KeyRing, tenant: str) -> pa.Array:
    if spec.cls == "identifier":
        purpose = "subject" if spec.subject else spec.name
        return pseudonymize_column(keyring, tenant, purpose, col)
    if spec.linkable:
        # the platform's own id, shared with the tenant: a keyed pseudonym (docs/adr/0010-linkage.md)
        return pseudonymize_column(keyring, tenant, spec.link_purpose, col)
    if spec.cls == "quasi":
        assert spec.generalize is not None
        return GENERALIZERS[spec.generalize](col.combine_chunks(), spec.params)
    if spec.type == "timestamp" and spec.precision not in (None, "microsecond"):
        return truncate_timestamps(col.combine_chunks(), spec.precision)
    return col.combine_chunks()


def truncate_timestamps(values: pa.Array, precision: str) -> pa.Array:
    """``values`` truncated to ``precision`` (a ``contracts.PRECISIONS`` unit), type unchanged."""
    return pc.floor_temporal(values, multiple=1, unit=precision)


def build_pii_table(table: pa.Table, contract: Contract, subjects: pa.Array,
                    deks: dict[str, bytes], tenant: str) -> pa.Table:
    """One row per input row: subject_id plus every identifier and PII column as ciphertext."""
    subject_list = subjects.to_pylist()
    aeads = {s: AESGCM(k) for s, k in deks.items()}
    plain_subjects = subjects.cast(pa.string()) if pa.types.is_dictionary(subjects.type) else subjects
    out: dict[str, pa.Array] = {SUBJECT_COLUMN: plain_subjects}
    for spec in contract.columns:
        if spec.cls not in ("identifier", "pii"):
            continue
        values = table[spec.name].to_pylist()
        out[spec.name] = pa.array(
            [None if v is None else encrypt_value(aeads[s], v, pii_associated_data(tenant, s, spec.name))
             for s, v in zip(subject_list, values, strict=True)], pa.binary())
    return pa.table(out)


def _placement(dates: pa.Array, restricted: pa.Array, buckets: pa.Array | None,
               n_buckets: int) -> list[tuple[str, bool, int | None, pa.Array]]:
    """(day, restricted?, bucket, row indices) per output file, in one stable sort.

    Files come out ordered by day, zone and bucket; rows of a file keep their input order.
    """
    encoded = pc.dictionary_encode(dates)
    days = encoded.dictionary
    day_rank = np.empty(len(days), np.int64)
    day_rank[np.argsort(np.asarray(days.cast(pa.int32())), kind="stable")] = np.arange(len(days))
    key = day_rank[np.asarray(encoded.indices)] * (2 * n_buckets)
    key += np.asarray(restricted, dtype=bool).astype(np.int64) * n_buckets
    if buckets is not None:
        key += np.asarray(buckets, dtype=np.int64)
    order = pa.array(np.argsort(key, kind="stable"))
    values, counts = np.unique(key, return_counts=True)
    by_rank = [d.isoformat() for d in days.take(pa.array(np.argsort(day_rank))).to_pylist()]
    out: list[tuple[str, bool, int | None, pa.Array]] = []
    offset = 0
    for value, n in zip(values.tolist(), counts.tolist(), strict=True):
        day, rest = divmod(value, 2 * n_buckets)
        zone_restricted, bucket = divmod(rest, n_buckets)
        out.append((by_rank[day], bool(zone_restricted), bucket if buckets is not None else None,
                    order.slice(offset, n)))
        offset += n
    return out


def _plain_take(table: pa.Table, rows: pa.Array) -> pa.Table:
    """``table.take(rows)`` with dictionary columns decoded to plain values.

    Never hand a dictionary array whose dictionary holds values the rows do not use
    to the Parquet writer: pyarrow 26 then writes a dictionary page padded with
    uninitialized heap memory (seen here: fragments of other batches' text), which
    could carry anything the process has held. Plain columns are re-encoded by the
    writer itself, as for any other input.
    """
    taken = table.take(rows)
    return pa.table({name: (col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col)
                     for name, col in zip(taken.column_names, taken.columns, strict=True)})


def _distinct_subjects(subjects: pa.Array) -> pa.Array:
    distinct = pc.drop_null(pc.unique(subjects))
    if pa.types.is_dictionary(distinct.type):
        distinct = distinct.cast(pa.string())
    return distinct


@dataclass
class _Plan:
    """A batch transformed and ready to write: every output and its index, no raw input."""

    ref: BatchRef
    contract: Contract
    result: BatchResult
    outputs: list[tuple[UPath, Callable[[], pa.Table]]]
    index: pa.Table
    # validates the outputs (raises gate.ValidationFailed); run while they are staged
    gate: Callable[[], object] = lambda: None
    # distinct (subject_id, anonymous_pid) pairs with first and last date: identity links
    links: pa.Table | None = None
    # the unique keys of the rows it publishes (contracts with a unique_key)
    keys: pa.Array | None = None
    # rectifications a newer delivered value retires once the batch is published
    corrected: rectifications.Corrected | None = None
    # each subject's consent per purpose as the batch delivers it (contract consent columns)
    consents: list[tuple[str, str, bool]] = field(default_factory=list)
    # the tenant's subject-set epoch the plan was made under (lake.leases), and what plans it again
    epoch: int = 0
    keyring: KeyRing | None = None


TenantCache = dict[str, TenantValues]


def _tenant_known(settings: Settings, keyring: KeyRing, tenant: str, table: pa.Table, contract: Contract,
                  cache: TenantCache | None) -> tuple[AnyKnown, tuple[str, ...]]:
    """The tenant's known values (PII zone, profiles earlier in this run), this batch's own, and
    the phone regions."""
    values = cache.get(tenant) if cache is not None else None
    if values is None:
        values = tenant_values(settings, keyring, tenant)
        if cache is not None:
            cache[tenant] = values
    own = TenantValues()
    own.add_table(table, contract)
    if contract.has_pii:
        # a profiles batch's subjects count from now on, for the later batches of the run too
        values.add_table(table, contract)
    regions = tuple(dict.fromkeys([*values.phone_regions(), *sorted(own.regions)]))
    return AnyKnown(values.known(), own.known()), regions


# called with (tenant, dataset, unique keys) before a batch reads the keys its zones hold:
# ingest_pending waits there for a batch still being committed that holds some of them
Settle = Callable[[str, str, pa.Array], None]


def _repeated_rows(settings: Settings, contract: Contract, tenant: str, table: pa.Table, event: pa.Table,
                   settle: Settle | None) -> pa.Array | None:
    """True for each row whose unique key the tenant's zones hold, or an earlier row has."""
    spec = contract.unique_key_column
    if spec is None or spec.event_name is None or not table.num_rows:
        return None
    keys = event[spec.event_name].combine_chunks()
    if settle is not None:
        settle(tenant, contract.dataset, keys)
    days = pc.unique(pc.cast(table[contract.partition_date_from], pa.date32())).to_pylist()
    held = published.key_values(settings, contract.dataset, tenant, spec.event_name,
                                [d.isoformat() for d in days if d is not None])
    return published.repeated(keys, held)


def _plan_batch(settings: Settings, ref: BatchRef, contract: Contract, table: pa.Table,
                keyring: KeyRing, result: BatchResult, tenant_cache: TenantCache | None = None,
                settle: Settle | None = None) -> _Plan:
    tenant = ref.tenant_id
    corrected = None
    if contract.has_pii:
        # a rectified subject's old values, delivered again, are put back to the rectified ones
        with state.connect(settings) as conn:
            table, corrected = rectifications.correct(conn, keyring, contract, tenant, table)
        result.values_rectified = corrected.values
    known, regions = _tenant_known(settings, keyring, tenant, table, contract, tenant_cache)
    # the scrubber's scan evidence: the gate reuses it for the rows the scrubber left as they were
    evidence: dict[str, Evidence] = {}
    event = build_event_table(table, contract, keyring, tenant, known=known, regions=regions,
                              evidence=evidence)
    subjects = event[SUBJECT_COLUMN].combine_chunks()
    input_rows = np.arange(table.num_rows)

    # an erased subject's data is not processed again: its rows are dropped and counted
    # (a legal hold keeps rows that existed at the erasure, never new ones)
    # the epoch first: a rights run that changes the sets after this read makes the publish plan again
    planned_epoch = leases.current_epoch(settings, tenant)
    sets = SubjectSets.load(settings, tenant, keyring, pending=True)
    erased = as_array(sets.gone(contract.dataset, new_batch=True))
    has_cookie = COOKIE_COLUMN in event.column_names
    # so are the logged-out rows of a cookie whose every linked subject is erased (ADR 0008)
    gone_cookies = as_array(sets.gone_cookies(contract.dataset, new_batch=True)) if has_cookie else None
    drop_erased: pa.Array | None = None
    if len(erased):
        drop_erased = pc.fill_null(pc.is_in(subjects, value_set=erased), False)
        if gone_cookies is not None and len(gone_cookies):
            drop_erased = pc.or_(drop_erased, pc.and_(pc.is_null(subjects), pc.fill_null(
                pc.is_in(event[COOKIE_COLUMN], value_set=gone_cookies), False)))
        result.rows_dropped_erased = int(pc.sum(drop_erased).as_py() or 0)
    # a row whose unique key the tenant's zones already hold is a re-delivery (ADR 0010)
    drop_repeated = _repeated_rows(settings, contract, tenant, table, event, settle)
    if drop_repeated is not None:
        if drop_erased is not None:
            drop_repeated = pc.and_(drop_repeated, pc.invert(drop_erased))
        result.rows_dropped_duplicate = int(pc.sum(drop_repeated).as_py() or 0)
    if result.rows_dropped_erased or result.rows_dropped_duplicate:
        drops = [d for d in (drop_erased, drop_repeated) if d is not None]
        keep = pc.invert(drops[0] if len(drops) == 1 else pc.or_(*drops))
        table, event = table.filter(keep), event.filter(keep)
        kept = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
        evidence = {name: found.take(kept) for name, found in evidence.items()}
        subjects = event[SUBJECT_COLUMN].combine_chunks()
        input_rows = input_rows[kept]
    wanted = _distinct_subjects(subjects)
    result.subjects = len(wanted)
    consents = consent.delivered(contract, table, subjects)
    # a restricted subject's rows go to the restricted zone, out of analysts' reach
    restricted = as_array(sets.restricted)
    in_restricted = pc.fill_null(pc.is_in(subjects, value_set=restricted), False)
    # and so do the logged-out rows of the cookies frozen with a restriction (ADR 0008)
    restricted_cookies = as_array(sets.restricted_cookies()) if has_cookie else None
    if restricted_cookies is not None and len(restricted_cookies):
        in_restricted = pc.or_(in_restricted, pc.and_(pc.is_null(subjects), pc.fill_null(
            pc.is_in(event[COOKIE_COLUMN], value_set=restricted_cookies), False)))

    dates = pc.cast(table[contract.partition_date_from], pa.date32()).combine_chunks()
    links = link_pairs(subjects, event[COOKIE_COLUMN].combine_chunks(), dates) if has_cookie else None
    # each output is made when a writer thread gets to it, so that at most
    # WRITE_THREADS partitions are materialized beside the event table at a time
    outputs: list[tuple[UPath, Callable[[], pa.Table]]] = []
    placements: list[tuple[str, str, pa.Array]] = []
    n_buckets = contract.subject_buckets
    buckets = subject_buckets(subjects, n_buckets) if n_buckets > 1 else None
    for day, is_restricted, bucket, chosen in _placement(dates, in_restricted, buckets, n_buckets):
        zone_name = RESTRICTED_ZONE if is_restricted else EVENT_ZONE
        zone_file = layout.event_file(zone_name, contract.dataset, tenant, day, ref.batch_id, bucket)
        outputs.append((zone_file.path(settings.zones), functools.partial(_plain_take, event, chosen)))
        placements.append((zone_name, zone_file.rel, chosen))
        if is_restricted:
            result.rows_restricted += len(chosen)
        else:
            result.rows_event += len(chosen)

    pii: pa.Table | None = None
    if contract.has_pii and table.num_rows:
        with state.connect(settings) as conn:
            deks = Vault(keyring, conn).data_keys(tenant, wanted.to_pylist(), create=True)
        pii = build_pii_table(table, contract, subjects, deks, tenant)
        pii_zone_file = layout.pii_file(contract.dataset, tenant, ref.batch_id)
        outputs.append((pii_zone_file.path(settings.zones), lambda: pii))
        placements.append((PII_ZONE, pii_zone_file.rel, pa.array(np.arange(len(subjects)))))
        result.rows_pii = pii.num_rows
    no_cookies = as_array(sets.forbidden_cookies(contract.dataset, new_batch=True) if has_cookie else ())
    cookies_in = restricted_cookies if restricted_cookies is not None else as_array(())
    check = functools.partial(_gate, ref, contract, event, in_restricted, pii, known, input_rows,
                              forbidden=as_array(sets.forbidden(contract.dataset, new_batch=True)),
                              restricted=as_array(sets.allowed_restricted(contract.dataset, new_batch=True)),
                              erased=as_array(sets.forbidden_pii(contract.dataset, new_batch=True)),
                              forbidden_cookies=no_cookies, restricted_cookies=cookies_in,
                              regions=regions, evidence=evidence)
    key_spec = contract.unique_key_column
    key_column = None if key_spec is None else key_spec.event_name
    keys = event[key_column].combine_chunks() if key_column is not None else None
    return _Plan(ref, contract, result, outputs, index.from_placements(subjects, placements), check, links,
                 keys, corrected, consents, planned_epoch, keyring)


def _gate(ref: BatchRef, contract: Contract, event: pa.Table, in_restricted: pa.Array,
          pii: pa.Table | None, known: Known, input_rows: np.ndarray, *,
          forbidden: pa.Array, restricted: pa.Array, erased: pa.Array,
          forbidden_cookies: pa.Array, restricted_cookies: pa.Array,
          regions: tuple[str, ...] = DEFAULT_REGIONS, evidence: dict[str, Evidence] | None = None) -> None:
    """Validate the batch's outputs before any is published; quarantined by the caller on failure."""
    mask = in_restricted.to_numpy(zero_copy_only=False)
    ev_rows, rs_rows = np.flatnonzero(~mask), np.flatnonzero(mask)
    found = evidence or {}
    shared = {EVENT_ZONE: found if len(rs_rows) == 0 else {n: e.take(ev_rows) for n, e in found.items()},
              RESTRICTED_ZONE: {n: e.take(rs_rows) for n, e in found.items()} if len(rs_rows) else {}}
    # validated as built (pseudonym columns still dictionary-encoded: the checks run on
    # their distinct values); the files written from it hold the same values
    published = event if len(rs_rows) == 0 else event.take(pa.array(ev_rows))
    events = [(EVENT_ZONE, published)] if len(ev_rows) else []
    held = [(RESTRICTED_ZONE, event.take(pa.array(rs_rows)))] if len(rs_rows) else []
    try:
        gate.check(contract, events=events, restricted=held, pii=[(PII_ZONE, pii)] if pii is not None else [],
                   forbidden=forbidden, restricted_subjects=restricted, erased=erased, known=known,
                   regions=regions, evidence=shared, forbidden_cookies=forbidden_cookies,
                   restricted_cookies=restricted_cookies)
    except gate.ValidationFailed as exc:
        gate.renumber(exc, ref.path, {EVENT_ZONE: input_rows[ev_rows], RESTRICTED_ZONE: input_rows[rs_rows],
                                      PII_ZONE: input_rows})
        raise


def _write_plan(settings: Settings, plan: _Plan) -> None:
    # stage everything, then index, then publish: a crash at any point leaves the
    # batch 'processing' and a re-run rewrites the same names.
    ref = plan.ref
    staging = settings.staging / ref.batch_id
    shutil.rmtree(staging, ignore_errors=True)
    staged = [(staging / layout.relative(final, settings.zones), final, make)
              for final, make in plan.outputs]
    # staged files are fsynced; their directories need not be (they are renamed again),
    # and each final directory is fsynced once after the renames into it.  Each output is
    # made by the writer thread that writes it (memory: WRITE_THREADS partitions at a time),
    # while this thread runs the gate over the outputs; nothing is published unless it passes.
    def stage(item: tuple[Path, UPath, Callable[[], pa.Table]]) -> None:
        zones.write_parquet(item[2](), item[0], sync_dir=False)

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        written = [pool.submit(stage, item) for item in staged]
        try:
            plan.gate()
        except gate.ValidationFailed:
            wait(written)  # the gate's verdict wins over any writer's error
            raise
        for future in written:
            future.result()
    # under the batch's publish lease, if no rights run began since the plan (lake.leases)
    with leases.publishing(settings, ref.tenant_id, ref.batch_id, plan.epoch):
        index.write(settings, ref.dataset, ref.tenant_id, ref.batch_id, plan.index)
        if settings.remote_zones:  # one upload each, after the index: many at once (ADR 0017)
            with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="pseudozone-upload") as uploads:
                list(uploads.map(lambda item: publish_file(item[0], item[1]), staged))
        else:
            for tmp, final, _ in staged:
                publish_file(tmp, final)
        zones.fsync_dirs({final.parent for _, final, _ in staged})
    shutil.rmtree(staging, ignore_errors=True)
    plan.result.files = [settings.shown(final) for _, final, _ in staged]


def publish_file(staged: Path, final: UPath) -> None:
    """Make one staged file visible under its final name (atomic rename, the zone's mode; on
    object storage one upload)."""
    zones.publish(staged, final)


def _failed(ref: BatchRef, step: str, exc: Exception) -> PseudozoneError:
    # the original message may quote data values: keep only its type, or the machine's failure
    # in words (disk full is the disk's fault, not the step's)
    machine = machine_failure(exc)
    if machine is not None:
        return PseudozoneError(f"batch {ref.batch_id} stopped: {machine} ({type(exc).__name__}, during"
                               f" {step}); nothing was marked done, re-run when that is fixed")
    return PseudozoneError(f"batch {ref.batch_id} failed during {step} ({type(exc).__name__}); "
                           "nothing was marked done, re-run to retry")


def _prepare(settings: Settings, ref: BatchRef, keyring: KeyRing | None,
             tenant_cache: TenantCache | None = None, settle: Settle | None = None) -> _Plan | BatchResult:
    """Ledger check, read, conform and transform; a finished result when there is nothing to write."""
    settings.ensure()
    # the key first: a key that is not the root's is refused before the ledger records anything
    # (recording the batch first made a fresh root's first batch look like data without a key check)
    keyring = keyring or KeyRing.load(settings)
    result = BatchResult(ref.batch_id, ref.dataset, ref.tenant_id, "skipped")
    source = settings.landing / ref.path
    with state.connect(settings) as conn:
        # the tenant's pseudonym version, read where the batch is recorded: a rotation of the
        # tenant that has begun makes its batches wait (docs/adr/0015-pseudonym-rotation.md)
        version = state.version_in(conn, ref.tenant_id, keyring.pseudonym_version)
        keyring.use_versions({**keyring.tenant_versions(), ref.tenant_id: version})
        previous = ledger.get(conn, ref.batch_id)
        if previous is not None and previous.status == "done":
            if not source.exists() or fingerprint(source) == previous.fingerprint:
                log.info("batch %s already done; nothing to do", ref.batch_id)
                return result
            if sha256_of(source) == previous.sha256:
                ledger.refresh_fingerprint(conn, ref.batch_id, fingerprint(source))
                log.info("batch %s already done (same content written again)", ref.batch_id)
                return result
            redelivered = True
        else:
            redelivered = False
            if not (source.exists() or source.is_symlink()):  # a link is quarantined, never followed
                raise PseudozoneError(f"batch {ref.batch_id}: landing file {ref.path} has disappeared")
            ledger.begin(conn, batch_id=ref.batch_id, dataset=ref.dataset, tenant_id=ref.tenant_id,
                         source=ref.path, sha256=sha256_of(source), fingerprint=fingerprint(source))
    if redelivered:
        # never silently ignore nor silently overwrite published data: park it for a human
        return _reject(settings, ref, result, ContractViolation(
            "changed_after_ingest", "this batch id was already ingested from a file with other"
            " content; deliver corrections under a new file name"), record=False)
    step = "read"
    try:
        table, contract = read_batch(settings, ref)
        result.rows_in = table.num_rows
        step = "transform"
        return _plan_batch(settings, ref, contract, table, keyring, result,
                           tenant_cache, settle)
    except ContractViolation as violation:
        return _reject(settings, ref, result, violation)
    except PseudozoneError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised without its text
        poison = _poison(settings, ref, step, exc)
        if poison is not None:
            return _reject(settings, ref, result, poison)
        raise _failed(ref, step, exc) from None


def _poison(settings: Settings, ref: BatchRef, step: str, exc: Exception) -> ContractViolation | None:
    """A batch whose read or transform failed the same way on ``ledger.POISON_AFTER_ATTEMPTS``
    tries in a row is a poison batch: quarantined, so that it stops blocking the queue.

    A failure of the machine (disk full, permissions, a locked state database, memory)
    is not the batch's fault and never makes it poison.
    """
    from sqlalchemy.exc import SQLAlchemyError  # the request ledger (holds, restrictions): maybe PostgreSQL

    if isinstance(exc, OSError | sqlite3.Error | SQLAlchemyError | MemoryError):
        return None
    error = type(exc).__name__
    try:
        with state.connect(settings) as conn:
            attempts = ledger.failed(conn, ref.batch_id, f"failed:{step}:{error}")
    except Exception:  # noqa: BLE001 - the batch's own error is raised instead
        return None
    if attempts < ledger.POISON_AFTER_ATTEMPTS:
        return None
    return ContractViolation(
        "poison_batch", f"failed during {step} ({error}) on {attempts} tries in a row; quarantined"
        " so that the batches after it can run",
        details=[{"step": step, "error": error, "attempts": attempts}])


def _replan(settings: Settings, plan: _Plan) -> _Plan | BatchResult:
    """The batch planned again from its landing file, under the subject sets as they are now.

    The rights run may have erased subjects from the landing file meanwhile (rights.landing):
    the ledger takes the file as it is now, and a file the erasure deleted (all its rows were
    the subjects') leaves the batch done with nothing to publish."""
    ref = plan.ref
    source = settings.landing / ref.path
    if not source.exists():
        # the staged files of the first plan hold the erased subjects' rows: gone with it
        shutil.rmtree(settings.staging / ref.batch_id, ignore_errors=True)
        result = BatchResult(ref.batch_id, ref.dataset, ref.tenant_id, "done", rows_in=plan.result.rows_in,
                             rows_dropped_erased=plan.result.rows_in)
        with state.connect(settings) as conn:
            ledger.finish(conn, ref.batch_id, status="done", counts=result.counts)
        return result
    with state.connect(settings) as conn:
        ledger.refresh_content(conn, ref.batch_id, sha256_of(source), fingerprint(source))
    result = BatchResult(ref.batch_id, ref.dataset, ref.tenant_id, "skipped")
    table, contract = read_batch(settings, ref)
    result.rows_in = table.num_rows
    assert plan.keyring is not None
    return _plan_batch(settings, ref, contract, table, plan.keyring, result)


def _commit(settings: Settings, plan: _Plan) -> BatchResult:
    """Write, index and publish a planned batch, then mark it done; planned again when a rights
    run changed the tenant's subject sets meanwhile (at most ``REPLANS`` times)."""
    try:
        for attempt in range(REPLANS + 1):
            try:
                _write_plan(settings, plan)
                break
            except leases.EpochMoved:
                if attempt == REPLANS:
                    raise
                log.info("batch %s: planned again (a rights run changed its tenant's subject sets)",
                         plan.ref.batch_id)
                again = _replan(settings, plan)
                if isinstance(again, BatchResult):
                    return again
                plan = again
    except gate.ValidationFailed as failed:
        return _reject(settings, plan.ref, plan.result, failed)
    except PseudozoneError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised without its text
        raise _failed(plan.ref, "publish", exc) from None
    result = plan.result
    with state.connect(settings) as conn:
        if plan.links is not None:
            # keyed pseudonyms only; in the transaction that marks the batch done
            record_links(conn, result.tenant_id, plan.links)
        if plan.consents:
            consent.record(conn, result.tenant_id, result.batch_id, plan.consents)
        if plan.corrected is not None and plan.corrected.retire:
            result.rectifications_retired = plan.corrected.retire_in(conn, result.tenant_id, result.dataset)
        ledger.finish(conn, result.batch_id, status="done", counts=result.counts)
    result.status = "done"
    log.info("batch %s done: %d rows in, %d event rows, %d restricted rows, %d PII rows,"
             " %d rows of erased subjects dropped, %d subjects, %d files",
             result.batch_id, result.rows_in, result.rows_event, result.rows_restricted, result.rows_pii,
             result.rows_dropped_erased, result.subjects, len(result.files))
    return result


def process_batch(settings: Settings, ref: BatchRef, *, keyring: KeyRing | None = None,
                  tenant_cache: TenantCache | None = None) -> BatchResult:
    """Ingest one landing batch exactly once.  Raises ``PseudozoneError`` on failure.

    ``tenant_cache`` keeps the tenants' known values from one batch of a run to the next
    (read from the PII zone by the first batch of a tenant that needs them).
    """
    prepared = _prepare(settings, ref, keyring, tenant_cache)
    return prepared if isinstance(prepared, BatchResult) else _commit(settings, prepared)


def _reject(settings: Settings, ref: BatchRef, result: BatchResult,
            violation: ContractViolation, *, record: bool = True) -> BatchResult:
    shutil.rmtree(settings.staging / ref.batch_id, ignore_errors=True)
    reason = violation.to_reason()
    target = quarantine(settings, ref, reason)
    if record:
        with state.connect(settings) as conn:
            ledger.finish(conn, ref.batch_id, status="quarantined", counts=result.counts,
                          reason_code=violation.code)
    log.warning("batch %s quarantined (%s): %s", ref.batch_id, violation.code, violation.detail)
    result.status = "quarantined"
    result.reason = reason
    result.files = [settings.shown(target)]
    return result


def pending(settings: Settings) -> list[BatchRef]:
    from pseudozone.landing import discover

    with state.connect(settings) as conn:
        done = ledger.done_fingerprints(conn)
    # datasets with PII (profiles) first: their subjects' values are then known to the
    # scrubbing of the other datasets' free text in the same run
    return sorted(discover(settings, done), key=lambda ref: not has_pii(ref.dataset))


def has_pii(dataset: str) -> bool:
    """Whether a dataset's contract has PII columns (an unknown dataset has none)."""
    from pseudozone import contracts
    from pseudozone.errors import ContractError

    try:
        return contracts.load(dataset).has_pii
    except ContractError:
        return False


def ingest_pending(settings: Settings, *, keyring: KeyRing | None = None, workers: int = 1,
                   on_result: Callable[[BatchResult], None] | None = None) -> list[BatchResult]:
    """Every pending batch (the CLI's path; the DAG maps one task per batch instead).

    With ``workers > 1`` batches run in that many processes at once, each loading
    the master key as the process itself would (env var, Airflow connection or key
    file), so ``keyring`` must then be left out.  Results come back in batch order.
    """
    refs = pending(settings)
    if workers > 1 and len(refs) > 1:
        if keyring is not None:
            raise ValueError("workers > 1 load their own keys; do not pass a keyring")
        return _ingest_parallel(settings, refs, workers, on_result)
    keyring = keyring or KeyRing.load(settings)
    results: list[BatchResult] = []
    # the tenants' known values, decrypted once for the run; dropped when it ends
    tenant_cache: TenantCache = {}

    def finished(res: BatchResult) -> None:
        if on_result:
            on_result(res)
        results.append(res)

    # two-stage pipeline: batch N+1 is read and transformed (mostly Python, holds the
    # GIL) while batch N is written (Arrow and the filesystem, outside the GIL); at
    # most one batch waits to be written, which bounds memory to two batches
    with ThreadPoolExecutor(1, thread_name_prefix="pseudozone-commit") as committer:
        inflight: Future[BatchResult] | None = None
        inflight_plan: _Plan | None = None

        def settle(tenant: str, dataset: str, keys: pa.Array) -> None:
            # a batch that repeats keys of the one being committed waits until it is
            # published (or quarantined), then reads the zones as they are
            plan = inflight_plan
            if (inflight is not None and plan is not None and plan.keys is not None
                    and (plan.ref.tenant_id, plan.ref.dataset) == (tenant, dataset)
                    and published.overlaps(keys, plan.keys)):
                inflight.exception()  # waits; its error is raised where its result is taken

        for ref in refs:
            prepared = _prepare(settings, ref, keyring, tenant_cache, settle)
            if inflight is not None:
                finished(inflight.result())
                inflight, inflight_plan = None, None
            if isinstance(prepared, BatchResult):
                finished(prepared)
            else:
                inflight, inflight_plan = committer.submit(_commit, settings, prepared), prepared
        if inflight is not None:
            finished(inflight.result())
    return results


_WORKER_KEYRING: dict[str, KeyRing] = {}
# per data root: the tenants' known values, read once per worker for the batches of a run that
# follow its PII datasets (a worker lives for one run: _ingest_parallel's pool)
_WORKER_TENANTS: dict[str, TenantCache] = {}


def _worker_batch(root: str, batch: dict[str, str], reuse_known: bool = False) -> dict[str, Any]:
    settings = Settings.from_env(root)
    keyring = _WORKER_KEYRING.get(root)
    if keyring is None:
        keyring = _WORKER_KEYRING[root] = KeyRing.load(settings)
    cache = _WORKER_TENANTS.setdefault(root, {}) if reuse_known else None
    return process_batch(settings, BatchRef.from_dict(batch), keyring=keyring, tenant_cache=cache).to_dict()


def _worker_lifeline(lifeline: Any) -> None:
    """Worker initializer: exit as soon as the parent is gone, even in the middle of a batch.

    ``lifeline`` is the read end of a pipe whose only write end the parent holds; when the
    parent dies (even by SIGKILL) the kernel closes it and the read ends.  PR_SET_PDEATHSIG
    would not do: a forkserver worker's parent is the forkserver, which outlives the parent
    (every worker holds the forkserver's keep-alive pipe and the resource tracker's), so
    orphaned workers used to keep it and the tracker alive too.  A killed worker leaves a
    staged batch or a temp file at most; the next run sweeps them (``Settings.ensure``).
    """
    import contextlib
    import os
    import threading

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv()  # nothing is ever sent
        os._exit(70)

    threading.Thread(target=watch, name="pseudozone-lifeline", daemon=True).start()


def _ingest_parallel(settings: Settings, refs: list[BatchRef], workers: int,
                     on_result: Callable[[BatchResult], None] | None) -> list[BatchResult]:
    # forkserver: never fork a process that already runs Arrow's thread pools (and a forked
    # worker would inherit the lifeline's write end, so that it would never close)
    context = multiprocessing.get_context("forkserver")
    results = []
    # datasets with PII first, and finished before the others start: their subjects are
    # then in the PII zone that every worker reads its tenant's known values from
    stages = [[r for r in refs if has_pii(r.dataset)], [r for r in refs if not has_pii(r.dataset)]]
    lifeline, keep_alive = context.Pipe(duplex=False)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=_worker_lifeline, initargs=(lifeline,)) as pool:
            for stage in stages:
                # once the PII datasets are done, the run changes the PII zone no more: a worker reads
                # a tenant's known values once for all its batches, as the one-process path does
                reuse = stage is stages[1]
                futures = [pool.submit(_worker_batch, str(settings.root), ref.to_dict(), reuse)
                           for ref in stage]
                for future in futures:
                    res = BatchResult(**future.result())
                    if on_result:
                        on_result(res)
                    results.append(res)
    finally:
        keep_alive.close()
        lifeline.close()
    return results
