"""Re-identification risk indicator: k-anonymity of the event zone's quasi-identifiers.

Rows that share the same values in every quasi-identifier (QI) column form an
*equivalence class*.  A table is k-anonymous when its smallest class holds at
least ``k`` rows: anyone who knows a person's QI values (postal prefix and birth
year, network prefix) then still faces at least ``k`` candidate rows.  This
module reports, per tenant and dataset, the size of the smallest class and how
many classes (and rows) fall below ``k``; a result is *flagged* when the
smallest class is smaller than ``k``.

Per tenant, because a tenant's data is what a tenant (or an analyst working for
one) receives and can link: classes mixed across tenants would make every
tenant look safer than it is.  Per dataset, because datasets have different QIs
and are published as separate tables.

The count is streamed: each file (row group by row group) is reduced to partial
class counts with Arrow, only the QI columns are read, and partials are summed
by a second group-by, so memory is bounded by the number of distinct classes of
one tenant and dataset, never by the zone.  Nulls are a class of their own (a
null postal prefix is as much a shared value as any other).

This is an indicator, not a guarantee.  It does not measure l-diversity or
t-closeness (a class of 50 rows that all share one sensitive value still
discloses it), the combination of datasets (profiles joined to events on the
subject pseudonym offer more QIs than either alone), nor linkage with data
outside the zone.  Results and logs hold counts and column names only, never a
QI value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from pseudozone import contracts
from pseudozone.config import Settings
from pseudozone.contracts import Contract
from pseudozone.errors import ContractError, PseudozoneError
from pseudozone.lake import layout
from pseudozone.zones import parquet_file, parquet_files

log = logging.getLogger(__name__)

QI_KEY = "quasi_identifiers"  # optional top-level contract key: event-zone column names
# partial counts are compacted (summed by class) once they hold this many rows
COMPACT_ROWS = 1_000_000
_COUNT = "count_all"  # name of the output column of the "count_all" aggregation


@dataclass
class KResult:
    tenant_id: str
    dataset: str
    quasi_identifiers: list[str]
    rows: int
    groups: int
    min_group_size: int | None
    groups_below_k: int
    rows_below_k: int
    flagged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked_names(names: Any, contract: Contract, origin: str) -> list[str]:
    """``names`` as a list of distinct event-zone columns of ``contract``, or an error naming ``origin``."""
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
        raise ContractError(f"{origin}: quasi-identifiers must be a list of column names")
    if len(set(names)) != len(names):
        raise ContractError(f"{origin}: quasi-identifiers list a column twice")
    allowed = set(contract.event_columns)
    unknown = sorted(n for n in names if n not in allowed)
    if unknown:
        raise ContractError(f"{origin}: quasi-identifiers {unknown} are not event-zone columns of "
                            f"dataset {contract.dataset!r}")
    if _COUNT in names:
        raise ContractError(f"{origin}: column name {_COUNT!r} is reserved for the k-anonymity count")
    return list(names)


def quasi_identifiers(contract: Contract) -> list[str]:
    """Event-zone names of the dataset's quasi-identifiers.

    The contract's optional top-level ``quasi_identifiers:`` list if present,
    otherwise the event-zone names of its columns of class ``quasi``, in contract order.
    """
    declared = contract.declared_quasi_identifiers
    if declared is not None:
        return _checked_names(list(declared), contract, f"contract {contract.source} {QI_KEY}")
    return [n for c in contract.of_class("quasi") if (n := c.event_name) is not None]


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary-encoded columns decoded, so partials of different files concatenate."""
    for i, fld in enumerate(table.schema):
        if pa.types.is_dictionary(fld.type):
            table = table.set_column(i, fld.name, pc.cast(table.column(i), fld.type.value_type))
    return table


def _file_partials(path: UPath, zone: UPath, dataset: str, qis: list[str]) -> Iterator[pa.Table]:
    """Class counts of one file, one partial per row group (only the QI columns are read)."""
    with parquet_file(path) as pf:
        present = set(pf.schema_arrow.names)
        missing = [q for q in qis if q not in present]
        if missing:
            raise PseudozoneError(
                f"event zone file {layout.relative(path, zone)} of dataset {dataset!r} lacks "
                f"quasi-identifier column(s) {missing}")
        for i in range(pf.num_row_groups):
            part = _plain(pf.read_row_group(i, columns=qis))
            yield part.group_by(qis).aggregate([([], "count_all")])


def _combine(partials: list[pa.Table], qis: list[str], dataset: str, tenant: str) -> pa.Table:
    """One table of (QIs…, count_all) with one row per class: the partials summed."""
    try:
        merged = pa.concat_tables(partials, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # the pyarrow message may be long but names types; ours names columns only
        differing = sorted({f.name for p in partials for f in p.schema
                            if f.type != partials[0].schema.field(f.name).type})
        raise PseudozoneError(f"dataset {dataset!r} tenant {tenant!r}: quasi-identifier column(s) "
                              f"{differing} have incompatible types across files") from None
    summed = merged.group_by(qis).aggregate([(_COUNT, "sum")])
    return summed.rename_columns([*qis, _COUNT])


def _result(counts: pa.Table, *, tenant: str, dataset: str, qis: list[str], k: int) -> KResult:
    sizes = counts.column(_COUNT)
    groups = counts.num_rows
    if groups == 0:
        return KResult(tenant_id=tenant, dataset=dataset, quasi_identifiers=list(qis), rows=0, groups=0,
                       min_group_size=None, groups_below_k=0, rows_below_k=0, flagged=False)
    small = pc.less(sizes, k)
    below = pc.filter(sizes, small)
    smallest = int(pc.min(sizes).as_py())
    return KResult(
        tenant_id=tenant, dataset=dataset, quasi_identifiers=list(qis),
        rows=int(pc.sum(sizes).as_py()), groups=groups, min_group_size=smallest,
        groups_below_k=len(below), rows_below_k=int(pc.sum(below).as_py() or 0),
        flagged=smallest < k,
    )


def _tenant_counts(files: list[UPath], zone: UPath, dataset: str, tenant: str,
                   qis: list[str]) -> pa.Table:
    partials: list[pa.Table] = []
    held = 0
    limit = COMPACT_ROWS
    for path in files:
        for part in _file_partials(path, zone, dataset, qis):
            partials.append(part)
            held += part.num_rows
            if held > limit:
                partials = [_combine(partials, qis, dataset, tenant)]
                held = partials[0].num_rows
                # many distinct classes: compact less often rather than at every row group
                limit = max(COMPACT_ROWS, 2 * held)
    if not partials:
        schema = pa.schema([*(pa.field(q, pa.null()) for q in qis), pa.field(_COUNT, pa.int64())])
        return schema.empty_table()
    return _combine(partials, qis, dataset, tenant)


def _validated_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise PseudozoneError(f"k must be a positive integer, got {k!r}")
    return k


def k_anonymity(settings: Settings, *, k: int = 5, datasets: list[str] | None = None,
                overrides: dict[str, list[str]] | None = None) -> list[KResult]:
    """k-anonymity of every tenant × dataset in the event zone, sorted by (dataset, tenant).

    ``datasets`` restricts the run (default: every dataset with a contract);
    ``overrides`` maps a dataset to its quasi-identifiers (event-zone names), in
    place of the contract's; an empty list skips the dataset.  Datasets without
    quasi-identifiers are skipped; tenants without files have no result.
    """
    k = _validated_k(k)
    names = sorted(contracts.available()) if datasets is None else list(datasets)
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise PseudozoneError(f"quasi-identifier overrides for datasets not in this run: {stray}")
    zone = settings.event_zone
    results: list[KResult] = []
    for dataset in names:
        contract = contracts.load(dataset)
        if dataset in overrides:
            qis = _checked_names(overrides[dataset], contract, f"override for dataset {dataset!r}")
        else:
            qis = quasi_identifiers(contract)
        if not qis:
            log.info("k-anonymity: dataset %s has no quasi-identifiers; skipped", dataset)
            continue
        by_tenant: dict[str, list[UPath]] = {}
        for path in parquet_files(zone / dataset):
            by_tenant.setdefault(layout.tenant_of(path, zone), []).append(path)
        for tenant in sorted(by_tenant):
            counts = _tenant_counts(by_tenant[tenant], zone, dataset, tenant, qis)
            res = _result(counts, tenant=tenant, dataset=dataset, qis=qis, k=k)
            log.info("k-anonymity: dataset %s tenant %s qis %s rows %d groups %d min %s "
                     "below k=%d: %d groups, %d rows", dataset, tenant, qis, res.rows, res.groups,
                     res.min_group_size, k, res.groups_below_k, res.rows_below_k)
            results.append(res)
    results.sort(key=lambda r: (r.dataset, r.tenant_id))
    return results
