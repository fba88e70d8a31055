"""The rights actions: one small class per request type behind one interface, listed in ``ACTIONS``.

A rights run (``pseudozone.rights.process``) asks each open request's action two things:

- ``plan``: what the request adds to its tenant's ``Work`` (which subjects' files are
  rewritten, and how), before the run looks anything up;
- ``close``: once every file group is rewritten and the run's independent scan is done,
  verify what the request needed and finish its side effects (destroy a key, lift a
  restriction, record an objection, ...); it returns the request's outcome, or the reason
  it failed.

The plan a run hands from task to task (``RunPlan``, ``GroupPlan``) is JSON for XCom: ids,
pseudonyms, paths and counts only.  A new request type is a class here and a line in
``ACTIONS`` (and its name in ``requests.TYPES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NotRequired, TypedDict

from sqlalchemy import delete, insert, select

from pseudozone import contracts, rectifications, state
from pseudozone.config import Settings
from pseudozone.keys import KeyRing, Vault
from pseudozone.lake import consent, index, layout
from pseudozone.lake.subjects import Holds, erased, links, seal_links
from pseudozone.rights import audit, requests, store
from pseudozone.rights.export import delete_archive, expires_at
from pseudozone.rights.landing import erase_subject as erase_from_landing

NO_DATA_FOUND = "no_data_found"


class GroupPlan(TypedDict):
    """The files of one batch a run rewrites, and what it does to each subject and cookie in them."""

    group_id: str
    run_id: NotRequired[str]                    # whose rewrite lease covers the tenant
    tenant_id: str
    dataset: str
    batch_id: str
    files: list[str]
    erase: list[str]
    restrict: list[str]
    unrestrict: list[str]
    rectify: dict[str, list[str]]               # subject -> its rectify request ids, in order
    erase_cookies: dict[str, list[str]]         # cookie -> the erased subjects it goes with
    restrict_cookies: dict[str, list[str]]      # cookie -> the subjects it follows in
    unrestrict_cookies: dict[str, list[str]]    # cookie -> the subjects it follows back
    release_cookies: list[str]


class RunPlan(TypedDict):
    run_id: str
    requests: list[str]
    groups: list[GroupPlan]
    exports: list[str]
    restricted_after: dict[str, list[str]]      # tenant -> subjects restricted when the run ends
    indexed: dict[str, list[str]]               # tenant -> the run's subjects the index lists
    cookies: dict[str, dict[str, dict[str, int]]]  # tenant -> erased subject -> cookie counts
    release_cookies: dict[str, dict[str, list[str]]]


@dataclass
class Work:
    """What one tenant's open requests ask of a run."""

    erase: set[str] = field(default_factory=set)
    restrict: set[str] = field(default_factory=set)
    unrestrict: set[str] = field(default_factory=set)
    rectify: dict[str, list[str]] = field(default_factory=dict)  # subject -> request ids, in order
    # objections filed or withdrawn: no file changes (the purpose views filter), but the
    # index lookup says whether the subject has data (ADR 0013)
    objections: set[str] = field(default_factory=set)
    exports: list[str] = field(default_factory=list)

    def subjects(self) -> set[str]:
        return self.erase | self.restrict | self.unrestrict | set(self.rectify) | self.objections


@dataclass
class Closing:
    """What ``close`` may know about one request when its run ends."""

    settings: Settings
    keyring: KeyRing
    plan: RunPlan
    row: Any                                   # the request's ledger row
    holds: Holds                               # its tenant's legal holds
    no_data: bool                              # no file of any zone held the subject at planning
    counts: dict[str, int]                     # what the rewrites did to the subject, per kind
    remaining: list[str]                       # files the run's scan still found the subject in
    files_scanned: int
    export: dict[str, Any] | None = None       # the export written for it, if any


@dataclass
class Closed:
    outcome: dict[str, Any]
    failure: dict[str, Any] | None = None      # the reason, when the request failed


class Action:
    """One request type: what it adds to a run, and how its request is finished."""

    type: ClassVar[str]

    def plan(self, work: Work, row: Any) -> None:
        raise NotImplementedError

    def close(self, c: Closing) -> Closed:
        return Closed({})


class Erase(Action):
    """Every row of the subject and of the cookies seen with it alone, its raw landing files,
    its exports, its consent and objections, then its key (ADR 0004, 0008, 0011)."""

    type = "erase"

    def plan(self, work: Work, row: Any) -> None:
        work.erase.add(row.subject_id)

    def close(self, c: Closing) -> Closed:
        s, tenant, row = c.row.subject_id, c.row.tenant_id, c.row
        unexpected = [p for p in c.remaining if not c.holds.keeps(layout.parse(p).dataset, s)]
        if unexpected:
            index.reindex(c.settings, unexpected)  # so that a retry finds what is left
            return Closed({}, {"code": "erase_incomplete", "files": unexpected})
        # the raw files the subject came from (landing, quarantine): before the key goes, so
        # that a run that dies here is simply run again (docs/adr/0011-landing-retention.md)
        payload = requests.open_payload(c.keyring, tenant, row.request_id, row.payload_enc)
        raw_files = erase_from_landing(c.settings, tenant=tenant, user_id=str(payload["user_id"]),
                                       request_id=row.request_id, subject_id=s, keyring=c.keyring)
        del payload
        pii_held = any(c.holds.keeps(d, s) for d in contracts.pii_datasets())
        destroyed = False
        if not pii_held:
            erased_before = erased(c.settings, tenant, c.keyring)
            linked_now = links(c.settings, tenant, {s}, c.keyring)
            # the key's destruction and its audit entry commit in one transaction
            with store.transaction(c.settings) as tconn:
                sconn = state.on(tconn, c.settings)
                destroyed = Vault(c.keyring, sconn).destroy(tenant, s)
                if not destroyed:
                    Vault(c.keyring, sconn).tombstone(tenant, s)
                # what must outlive the subject (its tombstone, its links) is kept sealed
                gone_cookies = seal_links(sconn, c.keyring, tenant, s, linked_now, erased_before)
                # its rectified values and their fingerprints go with its key, and its consent
                forgotten = rectifications.forget(sconn, tenant, s)
                consent.forget(sconn, tenant, s)
                tconn.execute(delete(store.objections).where(store.objections.c.tenant_id == tenant,
                                                             store.objections.c.subject_id == s))
                lifted = 0
                if not c.holds.of_subject(s):
                    # nothing of the subject is kept: its restriction and the cookies frozen with
                    # it have nothing left to restrict (and must not keep its pseudonyms)
                    rc = store.restrictions.c
                    lifted = tconn.execute(delete(store.restrictions).where(
                        rc.tenant_id == tenant, rc.subject_id == s)).rowcount
                    if gone_cookies:
                        tconn.execute(delete(store.restricted_cookies).where(
                            store.restricted_cookies.c.tenant_id == tenant,
                            store.restricted_cookies.c.anonymous_pid.in_(gone_cookies)))
                audit.append(tconn, "key.destroyed", request_id=row.request_id, tenant_id=tenant,
                             subject_id=s, keyring=c.keyring,
                             details={"had_key": destroyed, "rectifications_deleted": forgotten,
                                      "restriction_lifted": bool(lifted)})
        # archives hold the decrypted profile: kept only where the profile is kept
        exports_deleted = [] if pii_held else _delete_exports(c.settings, row, keyring=c.keyring)
        outcome: dict[str, Any] = {}
        if c.no_data and not destroyed:
            outcome["result"] = NO_DATA_FOUND
        linked = c.plan.get("cookies", {}).get(tenant, {}).get(s, {"erased": 0, "shared_kept": 0})
        outcome.update({"rows_removed": c.counts, "verified_clean": True,
                        "linked_cookies_erased": linked["erased"],
                        "shared_cookies_kept": linked["shared_kept"],
                        "export_archives_deleted": exports_deleted, **raw_files,
                        "files_scanned": c.files_scanned, "key_destroyed": not pii_held,
                        "retained": [{"dataset": h.dataset or "*", "hold_id": h.hold_id,
                                      "reason_code": h.reason_code} for h in c.holds.of_subject(s)],
                        "retained_files": c.remaining})
        return Closed(outcome)


class Restrict(Action):
    """The subject's rows (and its frozen cookies' rows) move to the restricted zone (ADR 0008)."""

    type = "restrict"

    def plan(self, work: Work, row: Any) -> None:
        work.restrict.add(row.subject_id)
        work.unrestrict.discard(row.subject_id)  # the latest request per subject decides

    def close(self, c: Closing) -> Closed:
        leaked = [p for p in c.remaining if layout.zone_of(p) == layout.EVENTS]
        if leaked:
            index.reindex(c.settings, leaked)
            return Closed({}, {"code": "restrict_incomplete", "files": leaked})
        return Closed({"rows_moved_to_restricted": c.counts.get("rows_restricted", 0)})


class Unrestrict(Action):
    """The rows move back; the restriction and the cookies it froze are released."""

    type = "unrestrict"

    def plan(self, work: Work, row: Any) -> None:
        work.unrestrict.add(row.subject_id)
        work.restrict.discard(row.subject_id)

    def close(self, c: Closing) -> Closed:
        s, tenant = c.row.subject_id, c.row.tenant_id
        outcome: dict[str, Any] = {"rows_moved_back": c.counts.get("rows_unrestricted", 0)}
        if s in c.plan.get("restricted_after", {}).get(tenant, []):
            outcome["superseded_by_a_later_restrict"] = True
            return Closed(outcome)
        released = c.plan.get("release_cookies", {}).get(tenant, {}).get(s, [])
        with store.transaction(c.settings) as tconn:
            tconn.execute(delete(store.restrictions).where(
                store.restrictions.c.tenant_id == tenant, store.restrictions.c.subject_id == s))
            if released:
                tconn.execute(delete(store.restricted_cookies).where(
                    store.restricted_cookies.c.tenant_id == tenant,
                    store.restricted_cookies.c.anonymous_pid.in_(released)))
            audit.append(tconn, "restriction.lifted", request_id=c.row.request_id, tenant_id=tenant,
                         subject_id=s, details={"cookies_released": len(released)}, keyring=c.keyring)
        return Closed(outcome)


class Rectify(Action):
    """PII values re-encrypted, generalized values recomputed, registered to stick (ADR 0012)."""

    type = "rectify"

    def plan(self, work: Work, row: Any) -> None:
        work.rectify.setdefault(row.subject_id, []).append(row.request_id)

    def close(self, c: Closing) -> Closed:
        payload = requests.open_payload(c.keyring, c.row.tenant_id, c.row.request_id, c.row.payload_enc)
        outcome: dict[str, Any] = {"fields": sorted(payload.get("fields") or {})}
        if c.no_data:
            outcome["result"] = NO_DATA_FOUND
        return Closed(outcome)


class Export(Action):
    """An encrypted archive of the subject's data, downloaded until it expires (ADR 0004)."""

    type = "export"

    def plan(self, work: Work, row: Any) -> None:
        work.exports.append(row.request_id)

    def close(self, c: Closing) -> Closed:
        if c.export is None:
            return Closed({}, {"code": "export_missing"})
        # the tenant downloads the archive until it expires (the nightly run then deletes it)
        outcome: dict[str, Any] = {"archive": c.export["archive"], "sha256": c.export["sha256"],
                                   "files": c.export["files"],
                                   "expires_at": expires_at(store.utcnow()).isoformat()}
        if c.no_data and not c.export.get("profile_rows"):
            outcome["result"] = NO_DATA_FOUND
        return Closed(outcome)


class Object(Action):
    """An objection to a purpose (GDPR art. 21): the purpose's views leave the subject out (ADR 0013)."""

    type = "object"

    def plan(self, work: Work, row: Any) -> None:
        work.objections.add(row.subject_id)

    def close(self, c: Closing) -> Closed:
        purpose = _purpose(c)
        key = _objection_key(c.row, purpose)
        with store.transaction(c.settings) as conn:
            if conn.execute(select(store.objections.c.request_id).where(*key)).first() is None:
                conn.execute(insert(store.objections).values(
                    tenant_id=c.row.tenant_id, subject_id=c.row.subject_id, purpose=purpose,
                    request_id=c.row.request_id, since=store.utcnow()))
            audit.append(conn, "objection.recorded", request_id=c.row.request_id, tenant_id=c.row.tenant_id,
                         subject_id=c.row.subject_id, details={"purpose": purpose}, keyring=c.keyring)
        return Closed(_objection_outcome(c, purpose, "recorded"))


class Unobject(Object):
    """The withdrawal of an objection: the subject is back in the purpose's views."""

    type = "unobject"

    def close(self, c: Closing) -> Closed:
        purpose = _purpose(c)
        with store.transaction(c.settings) as conn:
            withdrawn = conn.execute(delete(store.objections).where(*_objection_key(c.row, purpose))).rowcount
            audit.append(conn, "objection.withdrawn", request_id=c.row.request_id, tenant_id=c.row.tenant_id,
                         subject_id=c.row.subject_id, keyring=c.keyring,
                         details={"purpose": purpose, "was_recorded": bool(withdrawn)})
        return Closed(_objection_outcome(c, purpose, "withdrawn" if withdrawn else "none_recorded"))


ACTIONS: dict[str, Action] = {a.type: a for a in (Erase(), Restrict(), Unrestrict(), Rectify(), Export(),
                                                   Object(), Unobject())}


def _purpose(c: Closing) -> str:
    payload = requests.open_payload(c.keyring, c.row.tenant_id, c.row.request_id, c.row.payload_enc)
    return str((payload.get("fields") or {}).get("purpose"))


def _objection_key(row: Any, purpose: str) -> tuple[Any, ...]:
    return (store.objections.c.tenant_id == row.tenant_id, store.objections.c.subject_id == row.subject_id,
            store.objections.c.purpose == purpose)


def _objection_outcome(c: Closing, purpose: str, what: str) -> dict[str, Any]:
    outcome = {"purpose": purpose, "objection": what}
    if c.no_data:
        outcome["result"] = NO_DATA_FOUND  # recorded all the same: it holds for later data
    return outcome


def _delete_exports(settings: Settings, row: Any, *, keyring: KeyRing | None = None) -> list[str]:
    """Delete the export archives made earlier for an erased subject (they hold its data)."""
    with store.engine_for(settings).connect() as conn:
        earlier = [r.request_id for r in conn.execute(select(store.requests.c.request_id).where(
            store.requests.c.tenant_id == row.tenant_id, store.requests.c.subject_id == row.subject_id,
            store.requests.c.type == "export"))]
    deleted = []
    for request_id in sorted(earlier):
        if delete_archive(settings, row.tenant_id, request_id):  # and its wrapped key
            deleted.append(request_id)
            with store.transaction(settings) as conn:
                audit.append(conn, "export.deleted", request_id=row.request_id, tenant_id=row.tenant_id,
                             subject_id=row.subject_id, details={"export_request_id": request_id,
                                                                 "reason": "subject erased"}, keyring=keyring)
    return deleted
