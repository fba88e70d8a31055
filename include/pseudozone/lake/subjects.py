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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
from sqlalchemy import select

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.rights import store


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


def keys(settings: Settings, tenant: str) -> tuple[frozenset[str], frozenset[str]]:
    """(subjects with a live data key, subjects whose key is destroyed) of a tenant."""
    with state.connect(settings) as conn:
        rows = conn.execute("SELECT subject_id, wrapped_dek IS NULL FROM subject_keys WHERE tenant_id = ?",
                            (tenant,)).fetchall()
    return frozenset(r[0] for r in rows if not r[1]), frozenset(r[0] for r in rows if r[1])


def erased(settings: Settings, tenant: str) -> frozenset[str]:
    """Subjects of the tenant whose data key is destroyed."""
    with state.connect(settings) as conn:
        rows = conn.execute("SELECT subject_id FROM subject_keys WHERE tenant_id = ?"
                            " AND wrapped_dek IS NULL", (tenant,)).fetchall()
    return frozenset(r[0] for r in rows)


def restricted(settings: Settings, tenant: str) -> frozenset[str]:
    """Subjects of the tenant under a restriction of processing."""
    with store.engine_for(settings).connect() as conn:
        rows = conn.execute(select(store.restrictions.c.subject_id)
                            .where(store.restrictions.c.tenant_id == tenant))
        return frozenset(str(r[0]) for r in rows)


@dataclass(frozen=True)
class SubjectSets:
    """A tenant's erased and restricted subjects and holds, and what follows from them."""

    tenant: str
    erased: frozenset[str] = frozenset()
    restricted: frozenset[str] = frozenset()
    holds: Holds = field(default_factory=Holds)

    @classmethod
    def load(cls, settings: Settings, tenant: str) -> SubjectSets:
        return cls(tenant, erased(settings, tenant), restricted(settings, tenant),
                   legal_holds(settings, tenant))

    def during_run(self, *, erase: Iterable[str] = (), restrict: Iterable[str] = (),
                   unrestrict: Iterable[str] = ()) -> SubjectSets:
        """The sets as a rights run leaves them: its erasures and (un)restrictions applied."""
        return SubjectSets(self.tenant, self.erased | frozenset(erase),
                           (self.restricted | frozenset(restrict)) - frozenset(unrestrict), self.holds)

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


def as_array(subjects: Iterable[str]) -> pa.Array:
    """A sorted Arrow string array of ``subjects`` (for ``is_in`` and the gates)."""
    return pa.array(sorted(subjects), pa.string())
