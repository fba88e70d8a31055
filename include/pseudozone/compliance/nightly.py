"""The nightly compliance run: each step a function the ``nightly_compliance`` DAG calls.

Every step returns a JSON-safe section of the report (counts, ids, pseudonyms,
paths; never a data value):

- ``enforce_retention``: delete event-zone date partitions older than their
  dataset's ``retention_days`` (kept under a tenant- or dataset-wide legal hold; trimmed
  to the held subjects' rows under a subject's hold), audited, index updated; and
  export archives past their download expiry (``rights.export.purge_expired``); and
  ingested landing files and old quarantined files (``enforce_landing_retention``);
- ``validate_zones``: every file of every zone against its Great Expectations suite,
  several files per run (up to ``rows_per_run`` rows), so memory is bounded by that,
  never by the zone; and, in the same read, every subject of a completed erasure;
- ``verify_erasures``: every completed erasure again: the subject is in no zone file
  and no index entry (bar data retained under a hold), its key is destroyed, and no
  export archive of it is left;
- ``deadlines``: requests by state and age, overdue and due within 7 days;
- ``audit_chain``: the audit log's keyed hash chain, against its checkpoint (then moved to
  the chain's head, which the report shows);
- ``reidentification_risk``: k-anonymity per tenant and dataset (``kanon``).

``write_report`` assembles them into ``reports/compliance/`` under the data root.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import time
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import func, select
from upath import UPath

from pseudozone import contracts, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN
from pseudozone.errors import PseudozoneError
from pseudozone.lake import compact, index, layout
from pseudozone.lake.subjects import COOKIE_COLUMN, SubjectSets, as_array, keys, legal_holds, links, opened
from pseudozone.rights import audit, store

log = logging.getLogger(__name__)

ROWS_PER_RUN = 2_000_000
DUE_SOON_DAYS = 7
OPEN_STATES = ("accepted", "in_progress", "failed")
AGE_BUCKETS = ((0, 7, "0-7 days"), (8, 21, "8-21 days"), (22, 30, "22-30 days"), (31, None, "over 30 days"))


def _now(now: dt.datetime | None) -> dt.datetime:
    return now.astimezone(dt.UTC) if now is not None else dt.datetime.now(dt.UTC)


def _completed_erasures(settings: Settings) -> list[Any]:
    """Completed erasure requests, their subjects opened (the ledger keeps them sealed)."""
    with store.engine_for(settings).connect() as conn:
        rows = list(conn.execute(select(store.requests).where(
            store.requests.c.type == "erase", store.requests.c.state == "completed")
            .order_by(store.requests.c.completed_at, store.requests.c.request_id)))
    return [SimpleNamespace(**{**row._asdict(), "subject_id": row.subject_id and opened(
        settings, row.tenant_id, [row.subject_id])[0]}) for row in rows]


# -- retention --------------------------------------------------------------------------------


def retention_policies(overrides: dict[str, int] | None = None) -> dict[str, int]:
    """Days to keep per dataset: the contracts' ``retention_days``, then ``overrides``."""
    policies = {name: c.retention_days for name in sorted(contracts.available())
                if (c := contracts.load(name)).retention_days is not None}
    for name, days in (overrides or {}).items():
        if name not in contracts.available():
            raise ValueError(f"retention override for unknown dataset {name!r}")
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise ValueError(f"retention for {name!r} must be a whole number of days, 1 or more")
        policies[name] = days
    return policies


def enforce_retention(settings: Settings, *, now: dt.datetime | None = None,
                      overrides: dict[str, int] | None = None) -> dict[str, Any]:
    """Delete expired date partitions of the event and restricted zones; audit each deletion.

    A partition is expired when its date is before ``today - retention_days``.  A
    tenant-wide or dataset-wide legal hold keeps all of a tenant's partitions.  A
    subject's hold keeps that subject's rows only: an expired partition holding rows a
    subject hold keeps is trimmed to them (``_retain_held``), one holding none is deleted.
    Files are deleted first and the subject index follows, so the index never misses a
    file that exists (a crash in between leaves entries for files that are gone, which
    rights processing skips and the next run removes).  The PII zone has no date
    partitions and is not aged out: its rows go with an erasure (ADR 0005).

    Besides the lists, the result counts the trims (``partitions_trimmed_for_hold``,
    ``rows_kept_for_hold``, ``rows_deleted_by_trim``) and the trims of a killed run it
    finished or undid first (``trims_recovered``).
    """
    policies = retention_policies(overrides)
    today = _now(now).date()
    # a trim a killed run left: finished when exchanged, else undone and redone below
    recovered = compact.recover(settings, prefix=compact.TRIM_PREFIX)
    deleted: list[dict[str, Any]] = []
    kept_for_hold: list[dict[str, Any]] = []
    trimmed: list[dict[str, Any]] = []
    for zone_name in layout.PARTITIONED:
        for dataset, tenant, tenant_dir in layout.tenant_dirs(layout.zone_root(settings, zone_name)):
            days = policies.get(dataset)
            if days is None:
                continue
            cutoff = today - dt.timedelta(days=days)
            expired = [p for p in layout.date_partitions(tenant_dir) if p.date < cutoff]
            if not expired:
                continue
            holds = legal_holds(settings, tenant)
            if holds.keeps_all(dataset):
                kept_for_hold += [{"zone": zone_name, "dataset": dataset, "tenant_id": tenant,
                                   "date": p.day, "reason": "tenant-wide hold"}
                                  for p in expired]
                continue
            keep = _held_rows(settings, tenant, holds.subjects(dataset))
            for day, _, part in expired:
                where = {"zone": zone_name, "dataset": dataset, "tenant_id": tenant, "date": day}
                files = zones.parquet_files(part)
                rows = sum(zones.read_metadata(f).num_rows for f in files)
                if keep is not None:
                    outcome = _retain_held(settings, compact.Unit(zone_name, dataset, tenant, day), files,
                                           rows, keep, days)
                    if outcome is not None:
                        (trimmed if "rows_deleted" in outcome else kept_for_hold).append({**where, **outcome})
                        continue
                rels = [layout.relative(f, settings.zones) for f in files]
                entry = {**where, "files": len(files), "rows": rows, "retention_days": days}
                # audited first: a crash after this leaves the partition for the next run,
                # never a deletion without its audit entry
                with store.transaction(settings) as conn:
                    audit.append(conn, "retention.deleted", actor="nightly_compliance", tenant_id=tenant,
                                 details=entry)
                zones.remove_tree(part)
                zones.fsync_dirs({tenant_dir})
                index.reindex(settings, rels)
                log.info("retention: deleted %s (%d files, %d rows, policy %d days)",
                         layout.relative(part, settings.zones), len(files), rows, days)
                deleted.append(entry)
    # export archives past their download expiry (their wrapped keys are wiped with them)
    from pseudozone.rights.export import purge_expired

    exports_expired = purge_expired(settings, now=_now(now))
    return {"policies": policies, "deleted": deleted, "kept_for_hold": kept_for_hold,
            "trimmed_for_hold": trimmed, "partitions_trimmed_for_hold": len(trimmed),
            "rows_kept_for_hold": sum(t["rows_kept"] for t in trimmed),
            "rows_deleted_by_trim": sum(t["rows_deleted"] for t in trimmed), "trims_recovered": recovered,
            "exports_expired": exports_expired, "today": today.isoformat(),
            "landing": enforce_landing_retention(settings, now=now)}


def _held_rows(settings: Settings, tenant: str, held: frozenset[str]) -> compact.Keep | None:
    """The rows a subject's legal hold keeps past retention, as a filter of a file's rows
    (None without a subject hold): the held subjects' rows, and the logged-out rows of every
    cookie linked to one of them (shared cookies too), as an erasure under a hold keeps them
    (``rights.process.rewrite_group``, ADR 0008)."""
    if not held:
        return None
    from pseudozone.rights.process import _take_subjects

    linked = links(settings, tenant, held)
    cookies = {c for s in held for c in linked.of(s)}
    return partial(_take_subjects, subjects=set(held), cookies=cookies)


def _retain_held(settings: Settings, unit: compact.Unit, files: list[UPath], rows: int,
                 keep: compact.Keep, days: int) -> dict[str, Any] | None:
    """An expired partition under a subject's hold: None when it holds no row the hold keeps
    (deleted then); else kept whole when every row is held, or trimmed to the held rows by a
    crash-safe partition rewrite (``lake.compact.trim``), audited before, with counts only.

    A trim waits for the next run while an ingest or a rights run of the tenant is under way
    (one that read a file before the rewrite and writes it after would bring its rows back
    beside the kept copies), or when a writer changed the partition during it (rolled back).
    """
    columns = [SUBJECT_COLUMN, COOKIE_COLUMN]
    kept = [keep(zones.read_table(f, columns=[c for c in columns if c in zones.read_schema(f).names]))
            for f in files]
    rows_kept = sum(t.num_rows for t in kept)
    if rows_kept == 0:
        return None
    if rows_kept == rows:
        return {"reason": "subject hold"}
    if compact.writers_active(settings, unit.tenant):
        log.warning("retention: trim of %s/%s/%s/%s deferred, an ingest or a rights run is in progress",
                    unit.zone, unit.dataset, unit.tenant, unit.day)
        return {"reason": "subject hold, trim deferred (a writer is active)"}
    subjects = pa.concat_arrays([t[SUBJECT_COLUMN].combine_chunks().cast(pa.string()) for t in kept])
    entry = {"files": len(files), "rows": rows, "rows_kept": rows_kept, "rows_deleted": rows - rows_kept,
             "subjects_held": len(pc.unique(pc.drop_null(subjects))),
             "cookie_rows_kept": subjects.null_count, "retention_days": days}
    where = {"zone": unit.zone, "dataset": unit.dataset, "tenant_id": unit.tenant, "date": unit.day}
    # audited first, as a deletion: a crash after this leaves the trim to the next run
    with store.transaction(settings) as conn:
        audit.append(conn, "retention.trimmed", actor="nightly_compliance", tenant_id=unit.tenant,
                     details={**where, **entry})
    try:
        done = compact.trim(settings, unit, keep)
    except compact.CompactionConflict as exc:
        log.warning("retention: %s", exc)
        with store.transaction(settings) as conn:
            audit.append(conn, "retention.trim_rolled_back", actor="nightly_compliance",
                         tenant_id=unit.tenant, details=where)
        return {"reason": "subject hold, trim rolled back (the partition changed meanwhile)"}
    log.info("retention: trimmed %s/%s/%s/%s to the rows a subject hold keeps (%d of %d rows kept)",
             unit.zone, unit.dataset, unit.tenant, unit.day, rows_kept, rows)
    return {**entry, "files_out": done["files_out"]}


def _finished_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)
    except ValueError:
        return None


def enforce_landing_retention(settings: Settings, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Delete ingested landing files and old quarantined files; audit each deletion (ADR 0011).

    A landing file goes once its batch has been ``done`` in the ledger for
    ``PSEUDOZONE_LANDING_RETENTION_DAYS`` (default 7; 0: at the next run) and its bytes are
    still those ingested (same SHA-256; other bytes are a new delivery and stay).  A file of a
    batch that is not done, a link, or a file whose folder resolves outside the landing zone is
    never touched.  The ledger keeps the batch's id and digest, so the same file landing again
    is skipped.  A quarantined landing file (or unreadable inbox request) goes with its reason
    ``PSEUDOZONE_QUARANTINE_RETENTION_DAYS`` (default 30) after it was quarantined (its reason
    file's mtime).
    """
    from pseudozone import landing, ledger, state
    from pseudozone.rights.landing import delete_quarantined, reason_code

    current = _now(now)
    landing_days, quarantine_days = landing.landing_retention_days(), landing.quarantine_retention_days()
    cutoff = current - dt.timedelta(days=landing_days)
    deleted: list[dict[str, Any]] = []
    kept_changed: list[dict[str, Any]] = []
    done: list[tuple[Any, ...]] = []
    if state.exists(settings):
        with state.connect(settings) as conn:
            done = conn.execute("SELECT batch_id, dataset, tenant_id, source, finished_at FROM batches"
                                " WHERE status = 'done' ORDER BY batch_id").fetchall()
    for batch_id, dataset, tenant, source, finished in done:
        ingested = _finished_at(finished)
        if ingested is None or ingested > cutoff:
            continue
        path = settings.landing / source
        if not landing.landing_file(settings, path):
            continue  # gone already, a link, or not where the ledger says
        before = path.lstat()
        with state.connect(settings) as conn:
            entry = ledger.get(conn, batch_id)
        if (entry is None or entry.status != "done" or entry.sha256 is None
                or landing.sha256_of(path) != entry.sha256):
            kept_changed.append({"dataset": dataset, "tenant_id": tenant, "batch_id": batch_id})
            continue
        after = path.lstat()
        if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size,
                                                                   after.st_mtime_ns):
            kept_changed.append({"dataset": dataset, "tenant_id": tenant, "batch_id": batch_id})
            continue
        item = {"dataset": dataset, "tenant_id": tenant, "batch_id": batch_id, "bytes": after.st_size,
                "ingested_at": ingested.isoformat(timespec="seconds"), "retention_days": landing_days}
        with store.transaction(settings) as tconn:  # audited first, as partitions are
            audit.append(tconn, "landing.deleted", actor="nightly_compliance", tenant_id=tenant,
                         details={**item, "reason": "retention"})
        if landing.delete_landed(settings, path):
            deleted.append(item)
    log.info("landing retention: %d ingested file(s) deleted, %d changed since ingestion kept",
             len(deleted), len(kept_changed))
    purged: list[dict[str, Any]] = []
    qcutoff = (current - dt.timedelta(days=quarantine_days)).timestamp()
    quarantined: list[tuple[str | None, str | None, UPath]] = list(layout.quarantined_files(settings))
    quarantined += [(None, None, p) for p in layout.quarantined_requests(settings)]
    for dataset, tenant, path in quarantined:
        reason = layout.reason_file(path)
        try:
            since = zones.modified(reason)
        except FileNotFoundError:
            try:
                since = zones.modified(path, changed=True)
            except FileNotFoundError:
                continue
        if since > qcutoff:
            continue
        item = {"dataset": dataset, "tenant_id": tenant, "file": path.name, "reason_code": reason_code(path),
                "quarantined_at": dt.datetime.fromtimestamp(since, dt.UTC).isoformat(timespec="seconds"),
                "retention_days": quarantine_days}
        with store.transaction(settings) as tconn:
            audit.append(tconn, "quarantine.purged", actor="nightly_compliance", tenant_id=tenant,
                         details={**item, "reason": "retention"})
        if delete_quarantined(settings, path):
            purged.append(item)
    log.info("quarantine retention: %d file(s) purged", len(purged))
    return {"landing_retention_days": landing_days, "quarantine_retention_days": quarantine_days,
            "deleted": deleted, "kept_changed": kept_changed, "quarantine_purged": purged}


# -- zone validation ------------------------------------------------------------------------


def _chunks(files: list[UPath], rows_per_run: int) -> Iterator[list[UPath]]:
    chunk: list[UPath] = []
    rows = 0
    for f in files:
        n = zones.read_metadata(f).num_rows
        if chunk and rows + n > rows_per_run:
            yield chunk
            chunk, rows = [], 0
        chunk.append(f)
        rows += n
    if chunk:
        yield chunk


def validate_zones(settings: Settings, *, rows_per_run: int = ROWS_PER_RUN,
                   data_docs: Path | None = None) -> dict[str, Any]:
    """Validate every file of the event, restricted, PII and export zones.

    Also records, for every subject of a completed erasure, the files still holding
    it (``erased_found``), from the same reads.  With ``data_docs``, Great
    Expectations Data Docs of this run are built there.
    """
    from pseudozone.keys import KeyRing
    from pseudozone.pii.tenant import tenant_values
    from pseudozone.validation.expectations import registered
    from pseudozone.validation.suites import Validator

    started = time.perf_counter()
    validator = Validator()
    keyring: KeyRing | None = None
    erased_by_tenant: dict[str, set[str]] = defaultdict(set)
    for row in _completed_erasures(settings):
        erased_by_tenant[row.tenant_id].add(row.subject_id)
    sections: list[dict[str, Any]] = []
    erased_found: dict[str, list[str]] = defaultdict(list)
    # (section, suite key, suite builder, erased subjects, files) per run, in zone order
    work: list[tuple[dict[str, Any], str, Callable[[], list[Any]], pa.Array, list[UPath]]] = []
    with ExitStack() as stack:
        refs: dict[tuple[str, str], tuple[str, str, str, str, str]] = {}
        sets: dict[str, tuple[SubjectSets, pa.Array]] = {}
        # each tenant's known values (decrypted from its PII zone, held as keyed digests for
        # this run only) and phone regions: the same search the publish gate makes
        known_refs: dict[str, tuple[str, tuple[str, ...]]] = {}
        for zone_name in (layout.EVENTS, layout.RESTRICTED, layout.PII):
            for dataset, tenant, tenant_dir in layout.tenant_dirs(layout.zone_root(settings, zone_name)):
                section: dict[str, Any] = {"zone": zone_name, "dataset": dataset, "tenant_id": tenant,
                                           "files": 0, "rows": 0, "success": True, "failures": []}
                sections.append(section)
                if dataset not in contracts.available():
                    section.update(success=False, failures=[{
                        "file": layout.relative(tenant_dir, settings.zones), "expectation": "known_dataset",
                        "column": None, "kind": None, "unexpected_count": None, "rows": []}])
                    continue
                if tenant not in sets:
                    live, _ = keys(settings, tenant)
                    sets[tenant] = (SubjectSets.load(settings, tenant), as_array(live))
                if (tenant, dataset) not in refs:
                    # an erased subject's rows that a legal hold keeps on this dataset may stay
                    subject_sets, live_keys = sets[tenant]
                    refs[(tenant, dataset)] = (
                        stack.enter_context(registered(as_array(subject_sets.forbidden(dataset)))),
                        stack.enter_context(registered(as_array(subject_sets.allowed_restricted(dataset)))),
                        stack.enter_context(registered(live_keys)),
                        stack.enter_context(registered(as_array(subject_sets.forbidden_cookies(dataset)))),
                        stack.enter_context(registered(as_array(subject_sets.restricted_cookies()))))
                if tenant not in known_refs:
                    keyring = keyring or KeyRing.load(settings)
                    values = tenant_values(settings, keyring, tenant)
                    known_refs[tenant] = (stack.enter_context(registered(values.known())),
                                          values.phone_regions())
                    del values
                forbidden, allowed, live_ref, no_cookies, cookies = refs[(tenant, dataset)]
                known_ref, regions = known_refs[tenant]
                key, make = _suite(zone_name, contracts.load(dataset), forbidden=forbidden, allowed=allowed,
                                   live=live_ref, known=known_ref, regions=regions,
                                   forbidden_cookies=no_cookies, cookies=cookies)
                erased = pa.array(sorted(erased_by_tenant.get(tenant, set())), pa.string())
                work += [(section, key, make, erased, chunk)
                         for chunk in _chunks(zones.parquet_files(tenant_dir), rows_per_run)]

        def read(files: list[UPath]) -> list[tuple[str, pa.Table]]:
            tables = []
            for f in files:
                try:
                    tables.append((layout.relative(f, settings.zones), zones.read_table(f)))
                except FileNotFoundError:
                    continue  # replaced or removed by a rights run since it was listed
            return tables

        # the next run's files are read (Arrow, outside the GIL) while GX validates this one
        with ThreadPoolExecutor(1, thread_name_prefix="pseudozone-read") as reader:
            upcoming = reader.submit(read, work[0][4]) if work else None
            for i, (section, key, make, erased, _) in enumerate(work):
                assert upcoming is not None
                tables = upcoming.result()
                upcoming = reader.submit(read, work[i + 1][4]) if i + 1 < len(work) else None
                report = validator.validate(tables, zone=section["zone"], dataset=section["dataset"], key=key,
                                            expectations=make)
                section["files"] += report.files
                section["rows"] += report.rows
                section["success"] = section["success"] and report.success
                section["failures"] += [f.__dict__ for f in report.failures]
                if len(erased):
                    for rel, table in tables:
                        if SUBJECT_COLUMN not in table.column_names:
                            continue
                        col = table[SUBJECT_COLUMN]
                        hit = col.filter(pc.fill_null(pc.is_in(col, value_set=erased), False))
                        for subject in pc.unique(hit).to_pylist():
                            erased_found[f"{section['tenant_id']}/{subject}"].append(rel)
                del tables
    sections += _validate_exports(settings, validator)
    docs = None
    if data_docs is not None:
        docs = _build_data_docs(validator, data_docs)
    files = sum(s["files"] for s in sections)
    return {"success": all(s["success"] for s in sections), "files": files,
            "rows": sum(s["rows"] for s in sections),
            "failed_files": len({f["file"] or str(layout.tenant_dir(PurePosixPath(s["zone"]), s["dataset"],
                                                                      s["tenant_id"]))
                                 for s in sections for f in s["failures"]}),
            "seconds": round(time.perf_counter() - started, 3),
            "data_docs": settings.shown(docs) if docs is not None else None,
            "zones": sections, "erased_found": dict(erased_found)}


def _suite(zone: str, contract: contracts.Contract, *, forbidden: str, allowed: str,
           live: str, known: str, regions: tuple[str, ...], forbidden_cookies: str,
           cookies: str) -> tuple[str, Callable[[], list[Any]]]:
    """(suite key, suite builder) of a zone; the key names the registered sets it checks against."""
    from pseudozone.validation.suites import event_suite, pii_suite, restricted_suite

    version = contract.suite_version
    if zone == "events":
        return (f"nightly:events:{version}:{forbidden}:{forbidden_cookies}:{known}",
                partial(event_suite, contract, forbidden_ref=forbidden, known_ref=known, regions=regions,
                        forbidden_cookies_ref=forbidden_cookies))
    if zone == "restricted":
        return (f"nightly:restricted:{version}:{allowed}:{cookies}:{known}",
                partial(restricted_suite, contract, allowed_ref=allowed, known_ref=known, regions=regions,
                        cookies_ref=cookies))
    return f"nightly:pii:{version}:{live}", partial(pii_suite, contract, live_ref=live)


def _validate_exports(settings: Settings, validator: Any) -> list[dict[str, Any]]:
    """Each export archive holds only its request's subject (every record in it), and no pseudonym.

    Archives are encrypted (``rights.export``): each is opened with its key, unwrapped from
    the request store for this check only; an archive without a held key, one that does not
    decrypt (changed) and an unencrypted one of before issue 10 fail the check.
    """
    from pseudozone.keys import KeyRing
    from pseudozone.rights import export
    from pseudozone.validation.expectations import registered
    from pseudozone.validation.suites import export_suite

    sections: list[dict[str, Any]] = []
    if not settings.exports.exists():
        return sections
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.requests.c.request_id, store.requests.c.tenant_id,
                                   store.requests.c.subject_id, store.requests.c.export_key_enc)
                            .where(store.requests.c.type == "export")).all()
    subject_of = {r.request_id: (r.tenant_id, r.subject_id) for r in rows}
    wrapped_key = {r.request_id: r.export_key_enc for r in rows}  # AES-GCM-wrapped, never in the clear
    del rows
    by_tenant: dict[str, list[tuple[str, UPath]]] = defaultdict(list)
    for tenant, request_id, archive in layout.export_archives(settings, legacy=True):
        by_tenant[tenant].append((request_id, archive))
    keyring: KeyRing | None = None
    for tenant, archives in sorted(by_tenant.items()):
        section: dict[str, Any] = {"zone": "exports", "dataset": "*", "tenant_id": tenant, "files": 0,
                                   "rows": 0, "success": True, "failures": []}
        sections.append(section)
        for request_id, archive in archives:
            rel = layout.relative(archive, settings.zones)
            section["files"] += 1
            owner = subject_of.get(request_id)
            if owner is None or owner[0] != tenant:
                section["success"] = False
                section["failures"].append(_archive_failure(rel, "archive_of_a_known_request"))
                continue
            if archive != layout.export_file(settings, tenant, request_id):
                # an archive written unencrypted before issue 10: not opened, reported until deleted
                section["success"] = False
                section["failures"].append(_archive_failure(rel, "archive_encrypted"))
                continue
            keyring = keyring or KeyRing.load(settings)
            # the archive's key, unwrapped from the request store for this check only
            if wrapped_key.get(request_id) is None:
                section["success"] = False
                section["failures"].append(_archive_failure(rel, "archive_key_held"))
                continue
            try:
                zipped = export.decrypt_archive(archive.read_bytes(), request_id, export.stored_key(
                    keyring, tenant, request_id, wrapped_key[request_id]))
            except PseudozoneError:  # changed, or its wrapped key was (the message names neither)
                section["success"] = False
                section["failures"].append(_archive_failure(rel, "archive_decrypts"))
                continue
            table, pseudonyms = _archive_subjects(zipped, keyring, tenant, owner[1])
            section["rows"] += table.num_rows
            if pseudonyms:
                # the archive goes to the tenant: a pseudonym in it would link the tenant's
                # user ids to the event zone (docs/adr/0010-linkage.md)
                section["success"] = False
                section["failures"].append(_archive_failure(rel, "archive_free_of_pseudonyms", pseudonyms))
            # one suite for every archive; only the registered subject changes
            with registered(pa.array([owner[1]], pa.string()), ref="nightly:export-subject") as ref:
                report = validator.validate([(rel, table)], zone="exports", dataset="*",
                                            key="nightly:exports",
                                            expectations=lambda ref=ref: export_suite(subject_ref=ref))
            section["success"] = section["success"] and report.success
            section["failures"] += [f.__dict__ for f in report.failures]
    return sections


def _archive_failure(rel: str, expectation: str, count: int | None = None) -> dict[str, Any]:
    return {"file": rel, "expectation": expectation, "column": None, "kind": None,
            "unexpected_count": count, "rows": []}


_PSEUDONYM_BYTES = re.compile(rb"v[0-9]+:[0-9a-f]{64}")


def _archive_subjects(zipped: bytes, keyring: Any, tenant: str, subject: str) -> tuple[pa.Table, int]:
    """The keyed pseudonym of every record's ``user_id`` in an export archive's ZIP (decrypted;
    profile and dataset files), under the version of the request's ``subject``, and the number
    of pseudonym-shaped strings anywhere in the archive."""
    version = int(subject.split(":", 1)[0].removeprefix("v"))
    users: list[str | None] = []
    pseudonyms = 0
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        for name in sorted(zf.namelist()):
            data = zf.read(name)
            pseudonyms += len(_PSEUDONYM_BYTES.findall(data))
            if not name.endswith(".json") or name == "manifest.json":
                continue
            records = json.loads(data)
            if isinstance(records, list):
                users += [r.get("user_id") if isinstance(r, dict) and isinstance(r.get("user_id"), str)
                          else None for r in records]
    known = {u: keyring.subject_id(tenant, u, version) for u in set(users) if u is not None}
    return pa.table({SUBJECT_COLUMN: pa.array([None if u is None else known[u] for u in users],
                                              pa.string())}), pseudonyms


def _build_data_docs(validator: Any, target: Path) -> Path:
    """Great Expectations Data Docs of the validator's results, in ``target`` only, loading
    nothing from the network (``compliance.datadocs``: they open in an air-gapped network)."""
    from pseudozone.compliance import datadocs

    return datadocs.build(validator.context, target)


# -- erasures, deadlines, audit --------------------------------------------------------------


def verify_erasures(settings: Settings, erased_found: dict[str, list[str]]) -> dict[str, Any]:
    """Re-verify every completed erasure; ``erased_found`` comes from ``validate_zones``.

    Keys and index are read once per tenant for all of its erased subjects.
    """
    incomplete: list[dict[str, Any]] = []
    rows = _completed_erasures(settings)
    exports = _export_archives(settings)
    by_tenant: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_tenant[row.tenant_id].add(row.subject_id)
    dead: dict[str, set[str]] = {}
    indexed: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    # logged-out rows of the cookies erased with a subject (every subject they were seen
    # with erased; a shared cookie is kept and counted): found by a scan (ADR 0008)
    cookie_files: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    shared_kept = 0
    for tenant, subjects in by_tenant.items():
        dead[tenant] = set(keys(settings, tenant)[1])
        linked = links(settings, tenant, subjects)
        covered = linked.covered(subjects)
        shared_kept += len(linked.shared(subjects))
        hits = index.lookup_cookies(settings, tenant, covered)
        owners = linked.owners(covered)
        for c, p, d in zip(hits[COOKIE_COLUMN].to_pylist(), hits["path"].to_pylist(),
                           hits["dataset"].to_pylist(), strict=True):
            for s in owners[c]:
                cookie_files[(tenant, s)].append((p, d))
        found = index.lookup(settings, tenant, subjects)
        for s, p, d in zip(found["subject_id"].to_pylist(), found["path"].to_pylist(),
                           found["dataset"].to_pylist(), strict=True):
            indexed[(tenant, s)].append((p, d))
    for row in rows:
        tenant, subject = row.tenant_id, row.subject_id
        outcome = json.loads(row.outcome or "{}")
        retained = {r["dataset"] for r in outcome.get("retained", [])}
        problems: list[str] = []
        files = [f for f in erased_found.get(f"{tenant}/{subject}", [])
                 if "*" not in retained and layout.parse(f).dataset not in retained]
        if files:
            problems.append(f"the subject's rows are still in {len(files)} file(s): "
                            + ", ".join(sorted(files)))
        listed = [p for p, d in indexed.get((tenant, subject), [])
                  if "*" not in retained and d not in retained]
        if listed:
            problems.append(f"the subject index still lists {len(listed)} file(s) for the subject")
        logged_out = sorted({p for p, d in cookie_files.get((tenant, subject), [])
                             if "*" not in retained and d not in retained})
        if logged_out:
            problems.append(f"logged-out rows of the subject's linked cookies are still in {len(logged_out)}"
                            " file(s): " + ", ".join(logged_out))
        if outcome.get("key_destroyed", True) and subject not in dead[tenant]:
            problems.append("the subject's data key is not destroyed")
        left = [a for a in exports.get((tenant, subject), []) if a.exists()]
        if left and not retained & {"*", *contracts.pii_datasets()}:
            problems.append(f"{len(left)} export archive(s) of the subject are still stored")
        if problems:
            incomplete.append({"request_id": row.request_id, "tenant_id": tenant, "subject": subject,
                               "problems": problems})
    no_data = sum(json.loads(r.outcome or "{}").get("result") == "no_data_found" for r in rows)
    out: dict[str, Any] = {"checked": len(rows), "incomplete": incomplete, "no_data_found": no_data}
    if shared_kept:
        out["shared_cookies_kept"] = shared_kept  # cookies of erased subjects also seen with another
    return out


def _export_archives(settings: Settings) -> dict[tuple[str, str], list[UPath]]:
    out: dict[tuple[str, str], list[UPath]] = defaultdict(list)
    with store.engine_for(settings).connect() as conn:
        for r in conn.execute(select(store.requests.c.request_id, store.requests.c.tenant_id,
                                     store.requests.c.subject_id).where(store.requests.c.type == "export")):
            for where in (layout.export_file, layout.legacy_export_file):
                out[(r.tenant_id, r.subject_id)].append(where(settings, r.tenant_id, r.request_id))
    return out


def deadlines(settings: Settings, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """Requests by state; open ones by age; overdue and due within 7 days."""
    current = _now(now)
    by_state: dict[str, int] = defaultdict(int)
    ages = {label: 0 for _, _, label in AGE_BUCKETS}
    overdue: list[dict[str, Any]] = []
    due_soon: list[dict[str, Any]] = []
    with store.engine_for(settings).connect() as conn:
        rows = list(conn.execute(select(store.requests).order_by(store.requests.c.due_at,
                                                                 store.requests.c.request_id)))
    for row in rows:
        by_state[row.state] += 1
        if row.state not in OPEN_STATES:
            continue
        received, due = store.as_utc(row.received_at), store.as_utc(row.due_at)
        assert received is not None and due is not None
        age = max(0, (current - received).days)  # a clock behind the ledger counts as new
        ages[next(label for lo, hi, label in AGE_BUCKETS if age >= lo and (hi is None or age <= hi))] += 1
        item = {"request_id": row.request_id, "tenant_id": row.tenant_id, "type": row.type,
                "state": row.state, "received_at": received.isoformat(), "due_at": due.isoformat()}
        if due < current:
            overdue.append({**item, "days": (current - due).days})
        elif due <= current + dt.timedelta(days=DUE_SOON_DAYS):
            due_soon.append({**item, "days": (due - current).days})
    late: list[dict[str, Any]] = []
    no_data: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.state != "completed":
            continue
        due, done = store.as_utc(row.due_at), store.as_utc(row.completed_at)
        if due is not None and done is not None and done > due:
            received = store.as_utc(row.received_at) or due
            late.append({"request_id": row.request_id, "tenant_id": row.tenant_id, "type": row.type,
                         "state": row.state, "received_at": received.isoformat(),
                         "due_at": due.isoformat(), "days": (done - due).days})
        if json.loads(row.outcome or "{}").get("result") == "no_data_found":
            no_data[row.type] += 1
    return {"open": sum(ages.values()), "by_state": dict(sorted(by_state.items())),
            "by_age": [{"bucket": label, "count": ages[label]} for _, _, label in AGE_BUCKETS],
            "overdue": overdue, "due_soon": due_soon, "completed_late": late,
            "no_data_found": dict(sorted(no_data.items())), **standing(settings)}


def standing(settings: Settings) -> dict[str, Any]:
    """What stands at the time of the run: open legal holds (scope and reason code), restrictions
    per tenant, and quarantined landing batches (per dataset, tenant and reason code)."""
    from pseudozone import state

    with store.engine_for(settings).connect() as conn:
        open_holds = select(store.legal_holds).where(store.legal_holds.c.released_at.is_(None))
        holds = [{"hold_id": int(r.hold_id), "tenant_id": r.tenant_id, "dataset": r.dataset or "*",
                  "scope": "subject" if r.subject_id else "all subjects",
                  "reason_code": r.reason_code or "other",
                  "since": (store.as_utc(r.created_at) or r.created_at).isoformat()}
                 for r in conn.execute(open_holds.order_by(store.legal_holds.c.hold_id))]
        restrictions = {str(t): int(n) for t, n in conn.execute(
            select(store.restrictions.c.tenant_id, func.count()).group_by(store.restrictions.c.tenant_id)
            .order_by(store.restrictions.c.tenant_id))}
    quarantined: list[dict[str, Any]] = []
    if state.exists(settings):
        with state.connect(settings) as sconn:
            quarantined = [{"dataset": d, "tenant_id": t, "reason_code": c or "?", "batches": int(n)}
                           for d, t, c, n in sconn.execute(
                               "SELECT dataset, tenant_id, reason_code, count(*) FROM batches"
                               " WHERE status = 'quarantined' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")]
    return {"holds": holds, "restrictions": restrictions, "quarantined": quarantined}


def audit_chain(settings: Settings) -> dict[str, Any]:
    """The audit chain, verified against its checkpoint; a chain that verifies becomes the new
    checkpoint, and its head (entry count and last hash) goes into the report, an anchor kept
    apart from the state directory's checkpoint file."""
    result = audit.verify(settings, update_checkpoint=True)
    problem = None if result.ok else (
        result.problem if result.first_bad_seq is None else f"entry {result.first_bad_seq}: {result.problem}")
    head = None if result.head_hash is None else {"entries": result.entries, "hash": result.head_hash}
    checked = None if result.checkpoint_entries is None else {"entries": result.checkpoint_entries}
    return {"ok": result.ok, "entries": result.entries, "problem": problem, "head": head,
            "checkpoint": checked}


def reidentification_risk(settings: Settings, *, k: int = 5) -> dict[str, Any]:
    from pseudozone.compliance.kanon import k_anonymity

    return {"k": k, "results": [r.to_dict() for r in k_anonymity(settings, k=k)]}
