"""Rectifications that stick: a later delivery of a subject's old value is corrected at ingest.

A rectification (``pseudozone.rights.process``) rewrites the subject's PII-zone values and the
event-zone columns generalized from them.  Without more, the tenant's next delivery of the
same profile would publish the old value again beside the corrected one.  So the register
keeps, per tenant, dataset, subject and field (in the state database, beside the key vault):

- the rectified value, AES-GCM under the subject's data key: an erasure destroys that key and
  deletes the entry;
- keyed fingerprints (HMAC-SHA256 under the same data key) of the values it replaced, in the
  form the zones held them: a PII field's value, normalized (NFKC, case-folded, spaces
  collapsed); a quasi-identifier's generalized value, since its raw value is kept nowhere.

At ingest, a row of a registered subject whose field holds a superseded value gets the
rectified value instead: the newest rectification wins over older data, however often it is
re-delivered.  Any other non-null value is an update newer than the rectification (the
tenant's own system changed it since): it is kept as delivered, and once its batch is
published the entry is retired, so that the tenant's data governs again.  A null is kept as
delivered and retires nothing (docs/adr/0012-rectification.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone.contracts import ColumnSpec, Contract
from pseudozone.generalize import GENERALIZERS
from pseudozone.keys import KeyRing, Vault, decrypt_value, encrypt_value, pii_associated_data
from pseudozone.state import now

if TYPE_CHECKING:
    from pseudozone.state import StateConn

SUBJECT_PURPOSE = "subject"


def rectifiable(contract: Contract) -> dict[str, ColumnSpec]:
    """The columns a rectification may set: PII and quasi-identifiers."""
    return {c.name: c for c in contract.columns if c.cls in ("pii", "quasi")}


def normal(value: str) -> str:
    """A comparable form: NFKC, case-folded, runs of spaces as one."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def comparable(spec: ColumnSpec, values: pa.Array) -> list[str | None]:
    """``values`` in the form the zones hold them: generalized (quasi), normalized strings."""
    if spec.cls == "quasi":
        assert spec.generalize is not None
        values = GENERALIZERS[spec.generalize](values, spec.params)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
    strings = values if pa.types.is_string(values.type) else values.cast(pa.string())
    return [None if v is None else normal(v) for v in strings.to_pylist()]


def fingerprint(dek: bytes, column: str, value: str) -> str:
    """A keyed fingerprint of a comparable value (nobody without the subject's key can test one)."""
    message = f"pseudozone/rectification|{column}|{value}".encode()
    return hmac.new(dek, message, hashlib.sha256).hexdigest()[:32]


def associated_data(tenant: str, subject: str, column: str) -> bytes:
    return pii_associated_data(tenant, subject, f"rectification:{column}")


def record(conn: StateConn, tenant: str, dataset: str, subject: str, spec: ColumnSpec,
           value: str, replaced: Iterable[str | None], request_id: str, dek: bytes) -> None:
    """Register (or renew) a rectification; ``replaced`` are the comparable values it overwrote.

    A renewed entry keeps the fingerprints of everything superseded before.  Idempotent, so
    that a rewrite that is retried registers the same thing again.
    """
    new = fingerprint(dek, spec.name, comparable(spec, pa.array([value]).cast(_type_of(spec)))[0] or "")
    found = {fingerprint(dek, spec.name, v) for v in replaced if v is not None}
    row = conn.execute("SELECT superseded FROM rectifications WHERE tenant_id = ? AND dataset = ?"
                       " AND subject_id = ? AND field = ?", (tenant, dataset, subject, spec.name)).fetchone()
    if row is not None:
        found |= set(json.loads(row[0]))
    found.discard(new)
    blob = encrypt_value(AESGCM(dek), value, associated_data(tenant, subject, spec.name))
    conn.execute(
        "INSERT INTO rectifications (tenant_id, dataset, subject_id, field, value_enc, superseded,"
        " request_id, rectified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, dataset, subject_id, field) DO UPDATE SET value_enc = excluded.value_enc,"
        " superseded = excluded.superseded,"
        " request_id = excluded.request_id, rectified_at = excluded.rectified_at",
        (tenant, dataset, subject, spec.name, blob, json.dumps(sorted(found)), request_id, now()))


def forget(conn: StateConn, tenant: str, subject: str) -> int:
    """Delete an erased subject's entries (its data key is destroyed in the same transaction)."""
    return conn.execute("DELETE FROM rectifications WHERE tenant_id = ? AND subject_id = ?",
                        (tenant, subject)).rowcount


def count(conn: StateConn, tenant: str, subject: str | None = None) -> int:
    sql, args = "SELECT count(*) FROM rectifications WHERE tenant_id = ?", [tenant]
    if subject is not None:
        sql, args = sql + " AND subject_id = ?", [*args, subject]
    return int(conn.execute(sql, args).fetchone()[0])


def _type_of(spec: ColumnSpec) -> pa.DataType:
    from pseudozone.landing import ARROW_TYPES

    return ARROW_TYPES[spec.type]


@dataclass
class Corrected:
    """What ``correct`` did to a batch: values put back, and entries to retire once it is published."""

    values: int = 0
    retire: list[tuple[str, str, str]] = field(default_factory=list)  # (subject, field, request_id)

    def retire_in(self, conn: StateConn, tenant: str, dataset: str) -> int:
        """Retire the entries a newer update superseded (only the rectification that was read)."""
        done = 0
        for subject, column, request_id in self.retire:
            done += conn.execute(
                "DELETE FROM rectifications WHERE tenant_id = ? AND dataset = ? AND subject_id = ?"
                " AND field = ? AND request_id = ?", (tenant, dataset, subject, column, request_id)).rowcount
        return done


def correct(conn: StateConn, keyring: KeyRing, contract: Contract, tenant: str,
            table: pa.Table) -> tuple[pa.Table, Corrected]:
    """``table`` with each superseded value of a registered subject replaced by its rectified value."""
    out = Corrected()
    columns = rectifiable(contract)
    if not columns:
        return table, out
    entries = conn.execute(
        "SELECT subject_id, field, value_enc, superseded, request_id FROM rectifications"
        " WHERE tenant_id = ? AND dataset = ?", (tenant, contract.dataset)).fetchall()
    entries = [e for e in entries if e[1] in columns and e[1] in table.column_names]
    if not entries or table.num_rows == 0:
        return table, out
    raw = table[contract.subject.name].combine_chunks()
    encoded = pc.dictionary_encode(raw)
    pseudonyms = keyring.pseudonymize(tenant, SUBJECT_PURPOSE, encoded.dictionary.to_pylist())
    registered = {e[0] for e in entries}
    subjects = [None if i is None else pseudonyms[i] for i in encoded.indices.to_pylist()]
    rows_of: dict[str, list[int]] = {}
    for i, s in enumerate(subjects):
        if s is not None and s in registered:
            rows_of.setdefault(s, []).append(i)
    if not rows_of:
        return table, out
    deks = Vault(keyring, conn).data_keys(tenant, sorted(rows_of), create=False)
    by_column: dict[str, list[tuple[str, bytes, set[str], str]]] = {}
    for subject, column, blob, superseded, request_id in entries:
        if subject in rows_of and subject in deks:
            by_column.setdefault(column, []).append((subject, blob, set(json.loads(superseded)), request_id))
    for column, items in sorted(by_column.items()):
        spec = columns[column]
        values = table[column].combine_chunks()
        forms = comparable(spec, values)
        replace: dict[int, str] = {}
        for subject, blob, superseded, request_id in items:
            dek = deks[subject]
            value = decrypt_value(AESGCM(dek), blob, associated_data(tenant, subject, column))
            current = fingerprint(dek, column, comparable(spec, pa.array([value]).cast(values.type))[0] or "")
            newer = False
            for i in rows_of[subject]:
                form = forms[i]
                if form is None:
                    continue  # nothing delivered: kept, retires nothing
                seen = fingerprint(dek, column, form)
                if seen in superseded:
                    replace[i] = value
                elif seen != current:
                    newer = True
            if newer:
                out.retire.append((subject, column, request_id))
        if replace:
            mask = [i in replace for i in range(len(values))]
            fresh = pa.array([replace[i] for i in sorted(replace)], pa.string()).cast(values.type)
            table = table.set_column(table.column_names.index(column), column,
                                     pc.replace_with_mask(values, pa.array(mask), fresh))
            out.values += len(replace)
    return table, out
