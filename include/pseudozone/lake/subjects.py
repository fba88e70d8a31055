"""The subject sets of a tenant, and the one rule for which subjects may appear where.

- **erased**: subjects whose data key is destroyed (crypto-shredded) by a completed
  erasure, plus, during a rights run, the subjects the run is erasing;
- **held**: erased subjects whose rows of a dataset an open legal hold keeps (a hold
  of the tenant, optionally limited to a dataset and/or a subject);
- **restricted**: subjects under a restriction of processing (from the moment a
  rights run plans the restriction until an unrestriction completes);
- **forbidden** (in the event zone of a dataset): erased subjects that no hold keeps
  on that dataset, and every restricted subject.  The restricted zone admits only
  restricted subjects that are not so erased; the PII zone admits no such erased
  subject.

A new landing batch holds no retained rows, so for it (``new_batch=True``) a hold
admits nothing: every erased subject is forbidden, and ingest drops those rows before
its gate.  See ``docs/adr/0007-lake-layer.md``.

**Identity links** (``docs/adr/0008-identity-links.md``): the cookie pseudonyms
(``anonymous_pid``) seen in a row with a subject.  A cookie belongs to a set of subjects
when every subject it was seen with is in the set (``Links.covered``); a cookie also seen
with a subject outside the set is *shared* and stays.  Rows of a covered cookie that carry
no subject (logged-out rows) follow the subject: ``SubjectSets.gone_cookies`` for erasure,
``SubjectSets.restricted_cookies`` for restriction: a cookie whose subjects are all
restricted or erased when a restriction is planned is frozen with it (``restricted_cookies``
in the request store) until an unrestriction releases it; the restricted zone admits its
logged-out rows and the event zone none of its rows.  A cookie first linked to a restricted
subject later is not frozen: rows that came before the link were not known to be the
subject's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select

from pseudozone import contracts, state
from pseudozone.config import Settings
from pseudozone.keys import SEALED_PREFIX, KeyRing
from pseudozone.rights import store

if TYPE_CHECKING:
    from pseudozone.state import StateConn

_RINGS: dict[str, KeyRing] = {}


def _ring(settings: Settings) -> KeyRing:
    """The root's key ring, loaded once per process (it opens sealed pseudonyms)."""
    ring = _RINGS.get(str(settings.root))
    if ring is None:
        ring = _RINGS[str(settings.root)] = KeyRing.load(settings)
    return ring


def opened(settings: Settings, tenant: str, values: Iterable[str],
           keyring: KeyRing | None = None) -> list[str]:
    """Stored subject or cookie pseudonyms with the sealed ones (an erased subject's) opened
    (with ``keyring``, else the root's key ring)."""
    values = list(values)
    if not any(v.startswith(SEALED_PREFIX) for v in values):
        return values
    ring = keyring or _ring(settings)
    return [ring.unseal(tenant, v) for v in values]


@dataclass(frozen=True)
class Hold:
    hold_id: int
    dataset: str | None  # None: every dataset
    subject_id: str | None  # None: every subject of the tenant
    reason_code: str  # the free-text reason stays encrypted in the store

    def covers(self, dataset: str, subject: str) -> bool:
        """Whether the hold keeps ``subject``'s rows of ``dataset``."""
        return self.dataset in (None, dataset) and self.subject_id in (None, subject)

    def to_dict(self) -> dict[str, object]:
        return {"hold_id": self.hold_id, "dataset": self.dataset, "reason_code": self.reason_code}


@dataclass(frozen=True)
class Holds:
    """A tenant's open legal holds."""

    holds: tuple[Hold, ...] = ()

    def of_subject(self, subject: str) -> list[Hold]:
        """The holds that keep some of ``subject``'s data (any dataset)."""
        return [h for h in self.holds if h.subject_id in (None, subject)]

    def keeps(self, dataset: str, subject: str) -> bool:
        """Whether a hold keeps ``subject``'s rows of ``dataset``."""
        return any(h.covers(dataset, subject) for h in self.holds)

    def kept(self, dataset: str, subjects: Iterable[str]) -> frozenset[str]:
        """Those of ``subjects`` whose rows of ``dataset`` a hold keeps."""
        covering = [h for h in self.holds if h.dataset in (None, dataset)]
        if any(h.subject_id is None for h in covering):
            return frozenset(subjects)
        named = {h.subject_id for h in covering}
        return frozenset(s for s in subjects if s in named)

    def keeps_all(self, dataset: str) -> bool:
        """Whether a tenant- or dataset-wide hold (no subject) keeps every row of ``dataset``."""
        return any(h.subject_id is None and h.dataset in (None, dataset) for h in self.holds)

    def subjects(self, dataset: str) -> frozenset[str]:
        """The subjects of the subject holds that cover ``dataset``."""
        return frozenset(h.subject_id for h in self.holds
                         if h.subject_id is not None and h.dataset in (None, dataset))


def legal_holds(settings: Settings, tenant: str) -> Holds:
    """The tenant's open legal holds."""
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.legal_holds).where(
            store.legal_holds.c.tenant_id == tenant, store.legal_holds.c.released_at.is_(None))
            .order_by(store.legal_holds.c.hold_id))
        return Holds(tuple(Hold(int(r.hold_id), r.dataset, r.subject_id, r.reason_code or "other")
                           for r in rows))


def keys(settings: Settings, tenant: str,
         keyring: KeyRing | None = None) -> tuple[frozenset[str], frozenset[str]]:
    """(subjects with a live data key, subjects whose key is destroyed) of a tenant."""
    with state.read(settings) as conn:
        rows = [] if conn is None else conn.execute(
            "SELECT subject_id, wrapped_dek IS NULL FROM subject_keys WHERE tenant_id = ?",
            (tenant,)).fetchall()
    return (frozenset(r[0] for r in rows if not r[1]),
            frozenset(opened(settings, tenant, [r[0] for r in rows if r[1]], keyring)))


def erased(settings: Settings, tenant: str, keyring: KeyRing | None = None) -> frozenset[str]:
    """Subjects of the tenant whose data key is destroyed."""
    with state.read(settings) as conn:
        rows = [] if conn is None else conn.execute(
            "SELECT subject_id FROM subject_keys WHERE tenant_id = ? AND wrapped_dek IS NULL",
            (tenant,)).fetchall()
    return frozenset(opened(settings, tenant, [r[0] for r in rows], keyring))


def erasing(settings: Settings, tenant: str) -> frozenset[str]:
    """Subjects of the tenant's erasures that a rights run has begun (requests in progress)."""
    r = store.requests.c
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(r.subject_id).where(
            r.tenant_id == tenant, r.type == "erase", r.state == "in_progress", r.subject_id.is_not(None)))
        return frozenset(str(row[0]) for row in rows)


def restricted(settings: Settings, tenant: str) -> frozenset[str]:
    """Subjects of the tenant under a restriction of processing."""
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.restrictions.c.subject_id)
                            .where(store.restrictions.c.tenant_id == tenant))
        return frozenset(str(r[0]) for r in rows)


def frozen_cookies(settings: Settings, tenant: str) -> frozenset[str]:
    """Cookies of the tenant whose logged-out rows follow a restriction (``restricted_cookies``)."""
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.restricted_cookies.c.anonymous_pid)
                            .where(store.restricted_cookies.c.tenant_id == tenant))
        return frozenset(str(r[0]) for r in rows)


COOKIE_COLUMN = contracts.COOKIE_COLUMN  # the event-zone column of the cookie pseudonym


@dataclass(frozen=True)
class Links:
    """The identity links of some subjects: each linked cookie and every subject it was seen with."""

    subjects_of: Mapping[str, frozenset[str]] = field(default_factory=dict)  # cookie -> all its subjects

    def of(self, subject: str) -> frozenset[str]:
        """Every cookie linked to ``subject`` (shared ones included)."""
        return frozenset(c for c, subjects in self.subjects_of.items() if subject in subjects)

    def covered(self, subjects: Iterable[str]) -> frozenset[str]:
        """Cookies every subject of which is in ``subjects`` (they follow those subjects)."""
        chosen = frozenset(subjects)
        return frozenset(c for c, s in self.subjects_of.items() if s and s <= chosen)

    def shared(self, subjects: Iterable[str]) -> frozenset[str]:
        """Cookies of ``subjects`` also linked to a subject outside them (they are kept)."""
        chosen = frozenset(subjects)
        return frozenset(c for c, s in self.subjects_of.items() if s & chosen and not s <= chosen)

    def owners(self, cookies: Iterable[str]) -> dict[str, list[str]]:
        """cookie -> its subjects, sorted (JSON-safe)."""
        return {c: sorted(self.subjects_of.get(c, ())) for c in sorted(cookies)}


_IN_CHUNK = 500  # subjects a statement names at once (well below either database's parameter limit)


def links(settings: Settings, tenant: str, subjects: Iterable[str], keyring: KeyRing | None = None) -> Links:
    """The links of ``subjects``: their cookies, and for each every subject it was seen with."""
    wanted = sorted(set(subjects))
    if not wanted:
        return Links()
    with state.read(settings) as conn:
        if conn is None:
            return Links()
        sealed = conn.execute("SELECT 1 FROM identity_links WHERE tenant_id = ? AND subject_id LIKE ?"
                              " LIMIT 1", (tenant, SEALED_PREFIX + "%")).fetchone() is not None
        if sealed:  # an erased subject's links are kept sealed (seal_links)
            ring = keyring or _ring(settings)
            wanted = sorted({*wanted, *(ring.seal(tenant, s) for s in wanted)})
        rows = []
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows += conn.execute(
                "SELECT anonymous_pid, subject_id FROM identity_links WHERE tenant_id = ? AND"  # noqa: S608
                " anonymous_pid IN (SELECT anonymous_pid FROM identity_links WHERE tenant_id = ?"
                f" AND subject_id IN ({marks}))", (tenant, tenant, *chunk)).fetchall()
    out: dict[str, set[str]] = defaultdict(set)
    cookies = opened(settings, tenant, [r[0] for r in rows], keyring)
    for cookie, subject in zip(cookies, opened(settings, tenant, [r[1] for r in rows], keyring), strict=True):
        out[cookie].add(subject)
    return Links({c: frozenset(s) for c, s in out.items()})


def seal_links(conn: StateConn, keyring: KeyRing, tenant: str, subject: str, linked: Links,
               erased_subjects: Iterable[str]) -> list[str]:
    """Keep an erased subject's identity links sealed (``KeyRing.seal``): its own rows, and every
    row of each of its cookies (``linked``: ``links`` of the subject, read before ``conn``'s
    transaction) whose subjects are all erased now (a shared cookie stays as it is: it is also
    another subject's).  Returns those cookies (erased with the subject)."""
    gone = {*erased_subjects, subject}
    covered = [c for c in sorted(linked.of(subject)) if linked.subjects_of[c] <= gone]
    for cookie in covered:
        conn.execute("UPDATE identity_links SET anonymous_pid = ? WHERE tenant_id = ?"
                     " AND anonymous_pid = ?", (keyring.seal(tenant, cookie), tenant, cookie))
    conn.execute("UPDATE identity_links SET subject_id = ? WHERE tenant_id = ? AND subject_id = ?",
                 (keyring.seal(tenant, subject), tenant, subject))
    return covered


def record_links(conn: StateConn, tenant: str, pairs: pa.Table) -> int:
    """Upsert a batch's distinct (subject_id, anonymous_pid, first_seen, last_seen) pairs at once."""
    if pairs.num_rows == 0:
        return 0
    cols = [pairs[c].to_pylist() for c in ("subject_id", COOKIE_COLUMN, "first_seen", "last_seen")]
    conn.executemany(
        "INSERT INTO identity_links (tenant_id, subject_id, anonymous_pid, first_seen, last_seen)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, subject_id, anonymous_pid) DO UPDATE SET"
        " first_seen = CASE WHEN excluded.first_seen < identity_links.first_seen THEN excluded.first_seen"
        " ELSE identity_links.first_seen END,"
        " last_seen = CASE WHEN excluded.last_seen > identity_links.last_seen THEN excluded.last_seen"
        " ELSE identity_links.last_seen END",
        [(tenant, *row) for row in zip(*cols, strict=True)])
    return pairs.num_rows


def link_pairs(subjects: pa.Array, cookies: pa.Array, dates: pa.Array) -> pa.Table:
    """The distinct (subject, cookie) pairs of a batch's rows with their first and last date (Arrow)."""
    def plain(a: pa.Array) -> pa.Array:
        return a.cast(a.type.value_type) if pa.types.is_dictionary(a.type) else a

    table = pa.table({"s": plain(subjects), "c": plain(cookies), "d": dates})
    table = table.filter(pc.and_(pc.is_valid(table["s"]), pc.is_valid(table["c"])))
    grouped = table.group_by(["s", "c"]).aggregate([("d", "min"), ("d", "max")])
    return pa.table({"subject_id": grouped["s"], COOKIE_COLUMN: grouped["c"],
                     "first_seen": grouped["d_min"].cast(pa.string()),
                     "last_seen": grouped["d_max"].cast(pa.string())})


@dataclass(frozen=True)
class SubjectSets:
    """A tenant's erased and restricted subjects and holds, and what follows from them."""

    tenant: str
    erased: frozenset[str] = frozenset()
    restricted: frozenset[str] = frozenset()
    holds: Holds = field(default_factory=Holds)
    links: Links = field(default_factory=Links)  # of the erased and restricted subjects
    # cookies frozen with a restriction (their logged-out rows follow it)
    frozen: frozenset[str] = frozenset()

    @classmethod
    def load(cls, settings: Settings, tenant: str, keyring: KeyRing | None = None, *,
             pending: bool = False) -> SubjectSets:
        """The tenant's sets now; with ``pending`` (ingest), the subjects of erasures a rights run
        has begun count as erased already (their key goes when the run closes)."""
        gone, limited = erased(settings, tenant, keyring), restricted(settings, tenant)
        if pending:
            gone |= erasing(settings, tenant)
        return cls(tenant, gone, limited, legal_holds(settings, tenant),
                   links(settings, tenant, gone | limited, keyring), frozen_cookies(settings, tenant))

    def during_run(self, *, erase: Iterable[str] = (), restrict: Iterable[str] = (),
                   unrestrict: Iterable[str] = (), release: Iterable[str] = (),
                   links: Links | None = None) -> SubjectSets:
        """The sets as a rights run leaves them: its erasures and (un)restrictions applied,
        ``release``d cookies no longer restricted; ``links`` those of the run's subjects too."""
        return SubjectSets(self.tenant, self.erased | frozenset(erase),
                           (self.restricted | frozenset(restrict)) - frozenset(unrestrict), self.holds,
                           self.links if links is None else links, self.frozen - frozenset(release))

    def held(self, dataset: str) -> frozenset[str]:
        """Erased subjects whose rows of ``dataset`` a legal hold keeps."""
        return self.holds.kept(dataset, self.erased)

    def gone(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """Erased subjects whose rows of ``dataset`` must be in no zone.

        A hold keeps rows that existed when the subject was erased; a new batch has
        none, so for it every erased subject is gone.
        """
        return self.erased if new_batch else self.erased - self.held(dataset)

    def forbidden(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """Subjects that must not appear in the event zone of ``dataset``."""
        return self.gone(dataset, new_batch=new_batch) | self.restricted

    def allowed_restricted(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """The only subjects that may appear in the restricted zone of ``dataset``."""
        return self.restricted - self.gone(dataset, new_batch=new_batch)

    def forbidden_pii(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """Subjects that must not appear in the PII zone of ``dataset``."""
        return self.gone(dataset, new_batch=new_batch)

    def restricted_cookies(self) -> frozenset[str]:
        """Cookies whose logged-out rows belong in the restricted zone: those frozen with a
        restriction (``freeze``), except the ones every subject of which is erased (gone)."""
        return self.frozen - self.links.covered(self.erased)

    def to_freeze(self, subject: str) -> frozenset[str]:
        """The cookies of ``subject`` a restriction of it freezes: every subject each was seen
        with is restricted or erased (a cookie shared with a free subject stays free)."""
        return (self.links.covered(self.restricted | self.erased | {subject})
                & self.links.of(subject)) - self.links.covered(self.erased)

    def forbidden_cookies(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """Cookies none of whose rows of ``dataset`` may be in the event zone."""
        return self.gone_cookies(dataset, new_batch=new_batch) | self.restricted_cookies()

    def gone_cookies(self, dataset: str, *, new_batch: bool = False) -> frozenset[str]:
        """Cookies whose logged-out rows of ``dataset`` must be in no zone: every subject they
        were seen with is gone (a cookie shared with a live subject stays)."""
        return self.links.covered(self.gone(dataset, new_batch=new_batch))


def as_array(subjects: Iterable[str]) -> pa.Array:
    """A sorted Arrow string array of ``subjects`` (for ``is_in`` and the gates)."""
    return pa.array(sorted(subjects), pa.string())
