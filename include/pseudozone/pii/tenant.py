"""The tenant's known PII: every live subject's searchable values, read from the PII zone.

A free-text field may name any of the tenant's subjects, not only the row's own
user (a support note about another customer, a referral, a shared cart).  So the
scrubber, the publish gate and the nightly run all search every dataset's free
text for the values of *every* subject the tenant has: names, emails, phones,
street addresses and user ids, decrypted from the PII zone and held only as keyed
digests (``KnownValues``) for the length of the task.

Which columns are searched comes from the contracts: every ``identifier`` and
``pii`` column, except those marked ``find_in_text: false`` (a city or a postal
code is not a person: finding "Paris" in a product name is no leak).  A ``pii``
column marked ``pii_kind: phone`` is also searched by its digits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pseudozone import contracts, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN, ColumnSpec, Contract
from pseudozone.errors import KeyMaterialError
from pseudozone.keys import KeyRing, Vault, decrypt_value, pii_associated_data
from pseudozone.lake import layout
from pseudozone.pii.detectors import configured_regions
from pseudozone.validation.known import KnownValues

COUNTRY_COLUMN = "country"


def searchable(spec: ColumnSpec) -> bool:
    return spec.cls in ("identifier", "pii") and spec.params.get("find_in_text", True) is not False


def is_phone(spec: ColumnSpec) -> bool:
    return spec.params.get("pii_kind") == "phone"


@dataclass
class TenantValues:
    """Plain values gathered for one task; turned into ``KnownValues`` and dropped."""

    values: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    regions: set[str] = field(default_factory=set)
    _known: KnownValues | None = field(default=None, repr=False)

    def add_table(self, table: pa.Table, contract: Contract) -> None:
        before = (len(self.values), len(self.phones), len(self.regions))
        self._add(table, contract)
        if (len(self.values), len(self.phones), len(self.regions)) != before:
            self._known = None

    def _add(self, table: pa.Table, contract: Contract) -> None:
        for spec in contract.columns:
            if spec.name not in table.column_names:
                continue
            if spec.name == COUNTRY_COLUMN and spec.cls == "keep":
                self.regions |= {c.upper() for c in pc.unique(table[spec.name].combine_chunks()
                                                                 .cast(pa.string())).to_pylist()
                                 if isinstance(c, str) and len(c) == 2 and c.isalpha()}
            if not searchable(spec):
                continue
            col = table[spec.name].combine_chunks()
            if pa.types.is_binary(col.type):
                continue
            distinct = [v for v in pc.unique(col.cast(pa.string())).to_pylist() if v]
            (self.phones if is_phone(spec) else self.values).extend(distinct)

    def known(self) -> KnownValues:
        """The values as keyed digests (built once, until values are added)."""
        if self._known is None:
            self._known = KnownValues(self.values, phones=self.phones, regions=self.phone_regions())
        return self._known

    def phone_regions(self) -> tuple[str, ...]:
        """The configured regions, then the countries of the tenant's profiles."""
        return tuple(dict.fromkeys([*configured_regions(), *sorted(self.regions)]))


def tenant_values(settings: Settings, keyring: KeyRing, tenant: str) -> TenantValues:
    """Every live subject's searchable PII of ``tenant``, decrypted from the PII zone."""
    out = TenantValues()
    for dataset in sorted(contracts.available()):
        contract = contracts.load(dataset)
        if not contract.has_pii:
            continue
        files = zones.parquet_files(layout.tenant_dir(settings.pii_zone, dataset, tenant))
        wanted = [c for c in contract.columns if searchable(c)]
        if not files or not wanted:
            continue
        tables = [zones.read_table(f, columns=[SUBJECT_COLUMN, *[c.name for c in wanted]]) for f in files]
        table = pa.concat_tables(tables, promote_options="permissive")
        subjects = pc.unique(table[SUBJECT_COLUMN].combine_chunks()).to_pylist()
        with state.connect(settings) as conn:
            deks = Vault(keyring, conn).data_keys(tenant, [s for s in subjects if s], create=False)
        aeads = {s: AESGCM(k) for s, k in deks.items()}
        subject_list = table[SUBJECT_COLUMN].to_pylist()
        for spec in wanted:
            bucket = out.phones if is_phone(spec) else out.values
            column = table[spec.name]
            if not pa.types.is_binary(column.type):
                continue  # not ciphertext: the PII-zone suite fails it, there is nothing to decrypt
            for subject, blob in zip(subject_list, column.to_pylist(), strict=True):
                aead = aeads.get(subject)
                if blob is None or aead is None:  # erased subjects' keys are gone
                    continue
                try:
                    bucket.append(decrypt_value(aead, blob, pii_associated_data(tenant, subject, spec.name)))
                except KeyMaterialError:
                    continue  # a value that does not decrypt is the ciphertext check's finding
        _add_countries(settings, dataset, tenant, out)
    return out


def _add_countries(settings: Settings, dataset: str, tenant: str, out: TenantValues) -> None:
    contract = contracts.load(dataset)
    names = {c.name for c in contract.columns if c.cls == "keep"}
    if COUNTRY_COLUMN not in names:
        return
    for path in zones.parquet_files(layout.tenant_dir(settings.event_zone, dataset, tenant)):
        column = zones.read_table(path, columns=[COUNTRY_COLUMN])[COUNTRY_COLUMN].combine_chunks()
        out.regions |= {c.upper() for c in pc.unique(column.cast(pa.string())).to_pylist()
                        if isinstance(c, str) and len(c) == 2 and c.isalpha()}
