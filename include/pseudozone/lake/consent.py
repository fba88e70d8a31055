"""Consent and objection: which subjects' rows each purpose may use.

Two sources feed one register (docs/adr/0013-consent-and-objection.md):

- a contract's consent column (``consent: <purpose>`` on a bool keep column, such as the
  profiles' ``marketing_opt_in``): ingest records each subject's latest delivered value in the
  state database (``consent``), in the transaction that marks its batch done; the batch
  ingested last wins, and a null changes nothing;
- ``object`` and ``unobject`` rights requests (GDPR art. 21): an objection to a purpose stands
  from the rights run that completes it until an ``unobject`` request withdraws it (request
  store, ``objections``).

A purpose rests on consent or on the absence of objection (``contracts.PURPOSES``).  Its
``Scope`` lists, per tenant, the subject pseudonyms it may use (consent: those whose latest
consent is yes and who did not object) or may not use (objection: those who objected), and
the same for logged-out rows by cookie: a cookie follows its linked subjects (ADR 0008) — a
consent purpose uses a cookie's rows only when every subject it was seen with may be used,
an objection purpose leaves them out when any of them objected.  Keyed pseudonyms only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import inspect, select

from pseudozone import state
from pseudozone.config import Settings
from pseudozone.contracts import PURPOSES, SUBJECT_COLUMN, Contract
from pseudozone.lake.subjects import COOKIE_COLUMN
from pseudozone.rights import store

if TYPE_CHECKING:
    from pseudozone.state import StateConn

SUBJECTS_SCHEMA = pa.schema([("tenant_id", pa.string()), (SUBJECT_COLUMN, pa.string())])
COOKIES_SCHEMA = pa.schema([("tenant_id", pa.string()), (COOKIE_COLUMN, pa.string())])


def delivered(contract: Contract, table: pa.Table, subjects: pa.Array) -> list[tuple[str, str, bool]]:
    """(subject, purpose, granted) of a batch's consent columns: each subject's last non-null value."""
    out: dict[tuple[str, str], bool] = {}
    plain = subjects.cast(pa.string()) if pa.types.is_dictionary(subjects.type) else subjects
    for spec in contract.columns:
        if spec.consent is None or spec.name not in table.column_names:
            continue
        for subject, granted in zip(plain.to_pylist(), table[spec.name].to_pylist(), strict=True):
            if subject is not None and granted is not None:
                out[(subject, spec.consent)] = bool(granted)
    return [(s, p, g) for (s, p), g in sorted(out.items())]


def record(conn: StateConn, tenant: str, batch_id: str, pairs: list[tuple[str, str, bool]]) -> None:
    at = state.now()
    conn.executemany(
        "INSERT INTO consent (tenant_id, subject_id, purpose, granted, batch_id, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, subject_id, purpose) DO UPDATE SET"
        " granted = excluded.granted, batch_id = excluded.batch_id, updated_at = excluded.updated_at",
        [(tenant, s, p, int(g), batch_id, at) for s, p, g in pairs])


def forget(conn: StateConn, tenant: str, subject: str) -> int:
    """Delete an erased subject's consent records."""
    return conn.execute("DELETE FROM consent WHERE tenant_id = ? AND subject_id = ?",
                        (tenant, subject)).rowcount


def check_purpose(purpose: str) -> str:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {sorted(PURPOSES)}")
    return purpose


@dataclass(frozen=True)
class Scope:
    """What one purpose may use.  ``basis`` 'consent': only ``subjects`` and ``cookies`` (allow
    lists); 'objection': all but ``subjects`` and ``cookies`` (deny lists)."""

    purpose: str
    basis: str
    subjects: pa.Table  # tenant_id, subject_id
    cookies: pa.Table   # tenant_id, anonymous_pid

    @property
    def allows(self) -> bool:
        return self.basis == "consent"


def _pairs(rows: list[tuple[str, str]], schema: pa.Schema) -> pa.Table:
    columns = [pa.array([r[i] for r in rows], pa.string()) for i in (0, 1)]
    return pa.table(columns, schema=schema)


def _key(tenants: pa.Array, values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(tenants, values, "\x1f")


def scopes(settings: Settings) -> list[Scope]:
    """What each purpose may (consent) or may not (objection) use, now: the register and the
    identity links are read once for all purposes."""
    objected: dict[str, set[tuple[str, str]]] = {p: set() for p in PURPOSES}
    granted: dict[str, set[tuple[str, str]]] = {p: set() for p in PURPOSES}
    links: list[tuple[str, str, str]] = []
    # read only: an analyst's query takes no lock and creates nothing
    with state.read(settings) as sconn:
        if sconn is not None:
            if inspect(sconn.sa).has_table(store.objections.name):  # made with the first request
                for r in sconn.sa.execute(select(store.objections.c.tenant_id, store.objections.c.subject_id,
                                                 store.objections.c.purpose)):
                    objected.setdefault(r.purpose, set()).add((r.tenant_id, r.subject_id))
            for t, s, p in sconn.execute(
                    "SELECT tenant_id, subject_id, purpose FROM consent WHERE granted = 1"):
                granted.setdefault(p, set()).add((t, s))
            links = [tuple(r) for r in sconn.execute(
                "SELECT tenant_id, subject_id, anonymous_pid FROM identity_links").fetchall()]
    linked = pa.table({"tenant_id": pa.array([r[0] for r in links], pa.string()),
                       "subject": pa.array([r[1] for r in links], pa.string()),
                       COOKIE_COLUMN: pa.array([r[2] for r in links], pa.string())})
    out = []
    for purpose, basis in PURPOSES.items():
        chosen = (sorted(granted[purpose] - objected[purpose]) if basis == "consent"
                  else sorted(objected[purpose]))
        out.append(_scope(purpose, basis, _pairs(chosen, SUBJECTS_SCHEMA), linked))
    return out


def _scope(purpose: str, basis: str, subjects: pa.Table, linked: pa.Table) -> Scope:
    if linked.num_rows == 0:
        return Scope(purpose, basis, subjects, _pairs([], COOKIES_SCHEMA))
    member = pc.is_in(_key(linked["tenant_id"], linked["subject"]),
                      value_set=_key(subjects["tenant_id"], subjects[SUBJECT_COLUMN]))
    # consent: a cookie whose every subject may be used; objection: one with any who objected
    how = "min" if basis == "consent" else "max"
    hits = linked.append_column("hit", pc.cast(member, pa.int8()))
    per_cookie = hits.group_by(["tenant_id", COOKIE_COLUMN]).aggregate([("hit", how)])
    cookies = per_cookie.filter(pc.equal(per_cookie[f"hit_{how}"], 1))
    return Scope(purpose, basis, subjects,
                 cookies.select(["tenant_id", COOKIE_COLUMN]).cast(COOKIES_SCHEMA).sort_by(
                     [("tenant_id", "ascending"), (COOKIE_COLUMN, "ascending")]))
