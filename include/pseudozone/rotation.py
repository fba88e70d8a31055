"""Pseudonym rotation: a tenant's pseudonyms move from version N to N+1 (docs/adr/0015-pseudonym-rotation.md).

Version N+1 of a keyed pseudonym is one step of version N's (``KeyRing.step``): HMAC-SHA256 of
the version-N form under the tenant's version-(N+1) key for the same purpose.  A rotation
therefore maps what the zones and the state hold without any raw identifier (also for the
subjects the PII zone never saw), and whoever holds version-N pseudonyms (an old extract, a
leaked version-N key) cannot join them to the new ones without the new key.  The ``[id:…]``
tokens of free text step the same way, from the token itself (``ingest.text_pseudonyms``).

``rotate`` runs these steps; each is idempotent, and a rerun resumes a killed rotation:

0. ``pseudonym_versions`` records (version N, target N+1) in the state database; only then
   is it checked that no writer of the tenant is running, so an ingest or rights run that
   starts meanwhile sees the record and waits (ingest refuses the tenant's batches, a rights
   run leaves its requests accepted) until the rotation has finished;
1. every event- and restricted-zone date partition is rewritten under compaction's commit
   order (one directory exchange per partition; a row moves to the bucket of its new subject);
   the outputs carry ``pseudozone.pseudonym_version`` in their Parquet footer, so a rerun
   skips them;
2. every PII-zone file is replaced whole: subject ids stepped and every value re-encrypted
   under the associated data that names its new subject, the index entries written first
   as a superset of old and new;
3. the state database, in one transaction: data keys re-wrapped under their new subject's
   associated data (the key itself is unchanged), identity links, rectifications
   (re-encrypted), consent;
4. the request ledger, in one transaction: requests, legal holds, restrictions, frozen
   cookies, objections, and the audit entry ``pseudonyms.rotated`` (counts only);
5. the tenant's version becomes N+1 and the record is closed.

Every mapping steps only values of version N and keeps those of N+1; any other version in a
tenant's data is an error (fail closed: nothing of it is rewritten).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import inspect
from upath import UPath

from pseudozone import contracts, fasthmac, linkage, rectifications, state, zones
from pseudozone.config import Settings
from pseudozone.contracts import SUBJECT_COLUMN, Contract
from pseudozone.errors import PseudozoneError
from pseudozone.keys import SEALED_PREFIX, KeyRing, Vault, decrypt_value, encrypt_value, pii_associated_data
from pseudozone.lake import compact, index, layout
from pseudozone.lake.layout import subject_buckets

if TYPE_CHECKING:
    from pseudozone.state import StateConn

log = logging.getLogger(__name__)

VERSION_KEY = "pseudozone.pseudonym_version"  # Parquet footer key of a rotated file
SUBJECT_PURPOSE = "subject"


class RotationError(PseudozoneError):
    """A rotation cannot start or go on (names the tenant and the reason, never a value)."""


def refresh(settings: Settings, keyring: KeyRing) -> KeyRing:
    """``keyring`` with the root's rotated versions (``KeyRing.version_of``)."""
    return keyring.use_versions(state.pseudonym_versions(settings))


# -- mapping one table ---------------------------------------------------------------------------


def _purposes(contract: Contract) -> dict[str, str]:
    """Event-zone column -> the purpose of the keyed pseudonym it holds."""
    out = {}
    for spec in contract.columns:
        if spec.event_name is None:
            continue
        if spec.cls == "identifier":
            out[spec.event_name] = SUBJECT_PURPOSE if spec.subject else spec.name
        elif spec.linkable:
            out[spec.event_name] = spec.link_purpose
    return out


def _text_columns(contract: Contract) -> list[str]:
    return [s.event_name for s in contract.columns
            if s.event_name is not None and s.cls == "free_text" and s.tokenize_ids]


@dataclass
class Mapper:
    """Version ``source`` pseudonyms and tokens of one tenant, stepped to ``target``.

    The steps are ``KeyRing.step``'s, computed over Arrow arrays (``fasthmac``: large batches
    shared with ``stepper``'s helper processes); the pseudonyms of the purposes in ``remember``
    (few distinct values, met again in every partition: subjects, cookies) are stepped once per
    rotation.
    """

    keyring: KeyRing
    tenant: str
    source: int
    target: int
    stepper: fasthmac.Stepper = field(default_factory=fasthmac.Stepper)
    remember: frozenset[str] = frozenset({SUBJECT_PURPOSE})
    cookie: str | None = None  # the cookie identifier's purpose (None: ``_cookie_purpose``)
    _known: dict[str, _Remembered] = field(default_factory=dict, repr=False)
    # steps computed ahead (``_prefetch``) for the input files of the partition being rewritten,
    # in the order ``table`` is called with them; each used only where it fits (``_fits``)
    ahead: list[Ahead] = field(default_factory=list, repr=False)
    fitted: Counter[bool] = field(default_factory=Counter, repr=False)  # ahead entries used, not used

    def values(self, purpose: str, distinct: list[str]) -> list[str]:
        """Each distinct pseudonym at the target version (version-``source`` ones stepped); a
        sealed one (an erased subject's, ``KeyRing.seal``) is opened, stepped and sealed again."""
        return self.array(purpose, pa.array(distinct, pa.string())).to_pylist()

    def array(self, purpose: str, distinct: pa.Array) -> pa.Array:
        """``values`` over an Arrow string array of distinct pseudonyms (no nulls)."""
        if len(distinct) == 0:
            return distinct
        if pc.any(pc.starts_with(distinct, SEALED_PREFIX)).as_py():
            return pa.array(self._with_sealed(purpose, distinct.to_pylist()), pa.string())
        todo = pc.starts_with(distinct, f"v{self.source}:")
        done = pc.starts_with(distinct, f"v{self.target}:")
        stray = len(distinct) - int(pc.sum(pc.or_(todo, done)).as_py() or 0)
        if stray:
            raise RotationError(f"tenant {self.tenant}: {stray} {purpose} pseudonym(s) of neither"
                                f" version {self.source} nor {self.target}; nothing of them is rewritten")
        if not pc.any(todo).as_py():
            return distinct
        return pc.replace_with_mask(distinct, todo, self._step(purpose, distinct.filter(todo)))

    def _with_sealed(self, purpose: str, distinct: list[str]) -> list[str]:
        sealed = [v for v in distinct if v.startswith(SEALED_PREFIX)]
        opened = [self.keyring.unseal(self.tenant, v) for v in sealed]
        resealed = {v: self.keyring.seal(self.tenant, m)
                    for v, m in zip(sealed, self.values(purpose, opened), strict=True)}
        plain = [d for d in distinct if d not in resealed]
        rest = dict(zip(plain, self.values(purpose, plain), strict=True))
        return [resealed[v] if v in resealed else rest[v] for v in distinct]

    def _step(self, purpose: str, todo: pa.Array) -> pa.Array:
        """``KeyRing.step`` of version-``source`` pseudonyms (distinct) to the target."""
        if purpose not in self.remember:
            return self._hash(purpose, todo)
        known = self._known.setdefault(purpose, _Remembered())
        return known.step(todo, lambda fresh: self._hash(purpose, fresh))

    def _digests(self, purpose: str, values: pa.Array) -> Any:
        key = self.keyring.pseudonym_key(self.tenant, purpose, self.target)
        return fasthmac.step_digests(self.stepper, key, values)

    def _hash(self, purpose: str, values: pa.Array) -> pa.Array:
        return fasthmac.pseudonyms(f"v{self.target}:", self._digests(purpose, values))

    def column(self, purpose: str, values: pa.Array | pa.ChunkedArray,
               ahead: tuple[pa.Array, pa.Array] | None = None) -> pa.Array:
        """A column of pseudonyms at the target; ``ahead``: (distinct values, their ``array``)
        computed before, used when the distinct values are those."""
        dictionary, indices = _distinct(values)
        if ahead is not None and self._fits(ahead, dictionary):
            return pc.take(ahead[1], indices)
        return pc.take(self.array(purpose, dictionary), indices)

    def tokens(self, distinct: pa.Array) -> pa.Array:
        """Each distinct ``[id:…]`` token's successor: ``linkage.token_of`` of its step."""
        return linkage.digest_tokens(self._digests(linkage.TEXT_PURPOSE, distinct))

    def text(self, values: pa.Array | pa.ChunkedArray,
             ahead: tuple[pa.Array, pa.Array] | None = None) -> pa.Array:
        """Free text with every ``[id:…]`` token stepped (a whole file is at one version);
        ``ahead``: (distinct tokens, their successors) computed before, used when they fit."""
        def successors(found: pa.Array) -> pa.Array:
            return ahead[1] if ahead is not None and self._fits(ahead, found) else self.tokens(found)

        return linkage.map_tokens(values, successors)

    def _fits(self, ahead: tuple[pa.Array, pa.Array] | None, distinct: pa.Array) -> bool:
        if ahead is None:
            return False
        fits = len(ahead[0]) == len(distinct) and ahead[0].equals(distinct)
        self.fitted[fits] += 1
        return fits

    def table(self, contract: Contract, table: pa.Table) -> pa.Table:
        """An event- or restricted-zone table with every pseudonym and token at the target."""
        purposes, texts = _purposes(contract), set(_text_columns(contract))
        known = self.ahead.pop(0) if self.ahead else {}
        columns = []
        for name in table.column_names:
            col = table[name]
            if name in purposes:
                col = self.column(purposes[name], col, known.get(name))
            elif name in texts:
                col = self.text(col, known.get(name))
            columns.append(col)
        return pa.table(columns, names=table.column_names)


def _fixed(values: pa.Array) -> np.ndarray | None:
    """The values of a string array as a numpy array of fixed-width bytes (``S<width>``, no copy),
    or None when they are not all of one width."""
    if len(values) == 0 or values.null_count:
        return None
    offsets, data = fasthmac.string_buffers(values)
    width = int(offsets[1] - offsets[0])
    if width == 0 or not (np.diff(offsets) == width).all():
        return None
    return np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]].view(f"S{width}")


def _keys(fixed: np.ndarray) -> np.ndarray:
    """A 64-bit key of each fixed-width value, from its last 16 bytes (the end of a pseudonym's
    hex digest; equal keys of different values are told apart by comparing the values)."""
    width = fixed.dtype.itemsize
    tail = np.zeros((len(fixed), 16), np.uint8)
    take = min(width, 16)
    tail[:, 16 - take:] = fixed.view(np.uint8).reshape(len(fixed), width)[:, width - take:]
    words = tail.view("<u8")
    return (words[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ words[:, 1]


class _Remembered:
    """The steps of one purpose met so far (old -> new pseudonym, each of one width), sorted by a
    64-bit key of the old one (``_keys``): looked up with numpy's binary search and checked whole,
    so that a value met in every input file (a subject, a cookie) is stepped once and found
    again in a few vectorized passes."""

    def __init__(self) -> None:
        self.keys = np.empty(0, np.uint64)
        self.old: np.ndarray | None = None
        self.new: np.ndarray | None = None

    def step(self, todo: pa.Array, compute: Callable[[pa.Array], pa.Array]) -> pa.Array:
        """``compute(todo)`` (distinct values), remembered."""
        query = _fixed(todo)
        if query is None or (self.old is not None and query.dtype != self.old.dtype):
            return compute(todo)  # not of one width: stepped, not remembered
        keys = _keys(query)
        pos, hit = self._find(keys, query)
        missing = np.flatnonzero(~hit)
        if len(missing):
            fresh = compute(todo.take(pa.array(missing)))
            stepped = _fixed(fresh)
            if stepped is None or (self.new is not None and stepped.dtype != self.new.dtype):
                return compute(todo)
            order = np.argsort(keys[missing], kind="stable")
            add_keys, olds, news = keys[missing][order], query[missing][order], stepped[order]
            if self.old is None or self.new is None:
                self.keys, self.old, self.new = add_keys, olds.copy(), news.copy()
            else:
                at = np.searchsorted(self.keys, add_keys)
                self.keys = np.insert(self.keys, at, add_keys)
                self.old, self.new = np.insert(self.old, at, olds), np.insert(self.new, at, news)
            pos, hit = self._find(keys, query)
            if not hit.all():  # two values of one key: the one not found is stepped each time
                return compute(todo)
        assert self.new is not None
        out = np.ascontiguousarray(self.new[pos])
        width = out.dtype.itemsize
        offsets = np.arange(0, (len(out) + 1) * width, width, dtype=np.int32)
        return pa.StringArray.from_buffers(len(out), pa.py_buffer(offsets), pa.py_buffer(out.view(np.uint8)))

    def _find(self, keys: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.old is None or len(self.keys) == 0:
            return np.zeros(len(query), np.intp), np.zeros(len(query), bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return pos, (self.keys[pos] == keys) & (self.old[pos] == query)


Ahead = dict[str, tuple[pa.Array, pa.Array]]  # column -> (distinct values, what they map to)


def _distinct(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(distinct strings in order of first appearance, each row's index into them)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    encoded = pc.dictionary_encode(arr)
    dictionary = encoded.dictionary
    if not pa.types.is_string(dictionary.type):
        dictionary = dictionary.cast(pa.string())
    return dictionary, encoded.indices


# -- the zones -----------------------------------------------------------------------------------


def _file_version(path: zones.AnyPath) -> int | None:
    meta = zones.read_metadata(path).metadata or {}
    raw = meta.get(VERSION_KEY.encode())
    return int(raw) if raw is not None else None


def _prefetch(stepper: fasthmac.Stepper, keys: dict[str, bytes], source: int, target: int,
              contract: Contract, files: Sequence[zones.AnyPath], skip: frozenset[str]) -> list[Ahead]:
    """For each of a partition's ``files``, what ``Mapper.table`` will compute for its columns
    (``Mapper.ahead``): the pseudonym columns of purposes not in ``skip`` (remembered ones) and
    the ``[id:]`` tokens of the text columns, stepped by ``stepper``'s helpers while the caller
    rewrites the partition before.  A column with a sealed value or one of another version is
    left to the mapper (which deals with them, or refuses)."""
    purposes = {c: p for c, p in _purposes(contract).items() if p not in skip}
    texts = set(_text_columns(contract))
    out: list[Ahead] = []
    for path in files:
        known: Ahead = {}
        out.append(known)
        names = set(zones.read_schema(path).names)
        wanted = [c for c in (*purposes, *sorted(texts)) if c in names]
        if not wanted:
            continue
        table = zones.read_table(path, columns=wanted)
        for name in wanted:
            if name in texts:
                found = linkage.find_tokens(table[name])
                if len(found):
                    raw = fasthmac.step_digests(stepper, keys[linkage.TEXT_PURPOSE], found)
                    known[name] = (found, linkage.digest_tokens(raw))
                continue
            distinct, _ = _distinct(table[name])
            todo = pc.starts_with(distinct, f"v{source}:")
            steps = int(pc.sum(todo).as_py() or 0)
            if steps + int(pc.sum(pc.starts_with(distinct, f"v{target}:")).as_py() or 0) != len(distinct):
                continue  # sealed, or of another version
            mapped = distinct
            if steps:
                raw = fasthmac.step_digests(stepper, keys[purposes[name]], distinct.filter(todo))
                mapped = pc.replace_with_mask(distinct, todo, fasthmac.pseudonyms(f"v{target}:", raw))
            known[name] = (distinct, mapped)
    return out


def _rotate_partitions(settings: Settings, mapper: Mapper, on_partition: Callable[[str], None] | None,
                       ahead: fasthmac.Stepper | None = None,
                       catalog: dict[str, Contract] | None = None) -> dict[str, int]:
    """Step 1, partition after partition; with ``ahead`` (a stepper of helpers only), the steps of
    the next partition are computed (``_prefetch``, in a thread) while one is rewritten."""
    done = {"partitions": 0, "files_in": 0, "files_out": 0, "rows": 0}
    todo: list[tuple[compact.Unit, Contract, compact.Rewrite, list[Any]]] = []
    for zone in layout.PARTITIONED:
        for dataset, tenant, tdir in layout.tenant_dirs(layout.zone_root(settings, zone)):
            if tenant != mapper.tenant:
                continue
            contract = (catalog or {}).get(dataset) or contracts.load(dataset)
            n = contract.subject_buckets

            def buckets(table: pa.Table, n: int = n) -> pa.Array | None:
                if n <= 1:
                    return None
                return subject_buckets(table[SUBJECT_COLUMN].combine_chunks(), n)

            def rows(table: pa.Table, contract: Contract = contract) -> pa.Table:
                return mapper.table(contract, table)

            rewrite = compact.Rewrite(tag=f"rotate:v{mapper.target}", rows=rows, buckets=buckets,
                                      metadata={VERSION_KEY: str(mapper.target)})
            for partition in layout.date_partitions(tdir):
                unit = compact.Unit(zone, dataset, tenant, partition.day)
                files = compact.files(settings, unit)
                if files and not all(_file_version(f) == mapper.target for f in files):
                    todo.append((unit, contract, rewrite, files))
    keys = {p: mapper.keyring.pseudonym_key(mapper.tenant, p, mapper.target)
            for p in {*(p for _, c, _, _ in todo for p in _purposes(c).values()), linkage.TEXT_PURPOSE}}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rotation-prefetch") as pool:
        pending: Future[list[Ahead]] | None = None
        for i, (unit, _contract, rewrite, _files) in enumerate(todo):
            mapper.ahead = pending.result() if pending is not None else []
            pending = None
            if ahead is not None and i + 1 < len(todo):
                _, next_contract, _, next_files = todo[i + 1]
                pending = pool.submit(_prefetch, ahead, keys, mapper.source, mapper.target, next_contract,
                                      next_files, mapper.remember)
            try:
                files = compact.files(settings, unit)  # as they are now (no writer runs meanwhile)
                if not files or all(_file_version(f) == mapper.target for f in files):
                    continue
                result = compact.rewrite_partition(settings, unit, rewrite)
            finally:
                mapper.ahead = []
            done["partitions"] += 1
            for key in ("files_in", "files_out", "rows"):
                done[key] += result[key]
            if on_partition:
                on_partition(f"{unit.zone}/{unit.dataset}/{unit.day}")
    if ahead is not None:
        log.info("pseudonym rotation of tenant %s: %d column(s) stepped ahead, %d stepped again",
                 mapper.tenant, mapper.fitted[True], mapper.fitted[False])
    return done


def _rotate_pii_file(settings: Settings, mapper: Mapper, path: UPath, deks: dict[str, bytes]) -> int:
    """Replace one PII-zone file with its subjects stepped and its values re-encrypted."""
    table = zones.read_table(path)
    old = table[SUBJECT_COLUMN].to_pylist()
    rel = layout.parse(path, settings.zones)
    if all(s is None or s.startswith(f"v{mapper.target}:") for s in old):
        index.reindex(settings, [rel.rel])  # a run killed after the replace left the superset
        return 0
    distinct = sorted({s for s in old if s is not None})
    new_of = dict(zip(distinct, mapper.values(SUBJECT_PURPOSE, distinct), strict=True))
    new = [None if s is None else new_of[s] for s in old]
    columns: dict[str, pa.Array] = {SUBJECT_COLUMN: pa.array(new, pa.string())}
    tenant = mapper.tenant
    aeads = {s: AESGCM(k) for s, k in deks.items()}
    for name in table.column_names:
        if name == SUBJECT_COLUMN:
            continue
        blobs = table[name].to_pylist()
        out: list[bytes | None] = []
        for s_old, s_new, blob in zip(old, new, blobs, strict=True):
            if blob is None or s_old is None or s_old == s_new or s_old not in aeads:
                out.append(blob)  # nothing to read, or a destroyed key: the blob stays unreadable
                continue
            value = decrypt_value(aeads[s_old], blob, pii_associated_data(tenant, s_old, name))
            assert s_new is not None
            out.append(encrypt_value(aeads[s_old], value, pii_associated_data(tenant, s_new, name)))
        columns[name] = pa.array(out, table.schema.field(name).type)
    rotated = pa.table(columns)
    # the new subjects' index entries before they are visible, the old ones' after
    batch_index = index.read(settings, rel.dataset, tenant, rel.batch)
    index.write(settings, rel.dataset, tenant, rel.batch,
                pa.concat_tables([batch_index, *index.entries({rel.rel: rotated})]))
    zones.write_parquet(rotated, path)
    index.reindex(settings, [rel.rel])
    return rotated.num_rows


def _rotate_pii(settings: Settings, mapper: Mapper) -> int:
    rows = 0
    deks: dict[str, bytes] | None = None
    root = layout.zone_root(settings, layout.PII)
    for dataset in contracts.pii_datasets():
        for path in zones.parquet_files(layout.tenant_dir(root, dataset, mapper.tenant)):
            if deks is None:
                with state.connect(settings) as conn:
                    deks = Vault(mapper.keyring, conn).live_keys(mapper.tenant)
            rows += _rotate_pii_file(settings, mapper, path, deks)
    return rows


# -- the state database and the request ledger ------------------------------------------------


def _rekey(conn: StateConn, table: str, tenant: str, mapper: Mapper,
           columns: dict[str, str]) -> dict[str, int]:
    """Rewrite the pseudonym ``columns`` (column -> purpose) of a state table's rows of ``tenant``
    to the mapper's target version, in the open transaction; returns the rows changed per column.

    The distinct values of each column are stepped at once into a temporary mapping table; the
    rows where any column changes are copied out with their new values, deleted, and inserted
    again in the order of the table's primary key (an ``UPDATE`` of the key columns in place
    moves each row's index entries one at a time, at random places, and costs twice as much).
    Table and column names are the code's own, never input.
    """
    described = inspect(conn.sa)
    names = [c["name"] for c in described.get_columns(table)]
    key = described.get_pk_constraint(table)["constrained_columns"] or names
    select = {name: f"t.{name}" for name in names}
    joins, changed = [], []
    for k, (column, purpose) in enumerate(columns.items()):
        values = [v for (v,) in conn.execute(
            f"SELECT DISTINCT {column} FROM {table} WHERE tenant_id = ? AND {column} IS NOT NULL",  # noqa: S608
            (tenant,))]
        mapping = _mapping(mapper, purpose, values)
        conn.execute(f"CREATE TEMP TABLE rotation_map{k} (old TEXT PRIMARY KEY, new TEXT NOT NULL)"
                     + ("" if conn.postgresql else " WITHOUT ROWID"))
        conn.executemany(f"INSERT INTO rotation_map{k} (old, new) VALUES (?, ?)",  # noqa: S608
                         [(old, new) for old, new in mapping.items() if new != old])
        joins.append(f"LEFT JOIN rotation_map{k} AS m{k} ON m{k}.old = t.{column}")
        changed.append(f"m{k}.old IS NOT NULL")
        select[column] = f"coalesce(m{k}.new, t.{column})"
    outputs = [f"{expr} AS {name}" for name, expr in select.items()]
    outputs += [f"CASE WHEN {test} THEN 1 ELSE 0 END AS rotation_changed{k}"
                for k, test in enumerate(changed)]
    sums = ", ".join(f"coalesce(sum(rotation_changed{k}), 0)" for k in range(len(columns)))
    where = " OR ".join(f"{column} IN (SELECT old FROM rotation_map{k})"  # noqa: S608
                        for k, column in enumerate(columns))
    try:
        conn.execute(f"CREATE TEMP TABLE rotation_rows AS SELECT {', '.join(outputs)}"  # noqa: S608
                     f" FROM {table} AS t {' '.join(joins)}"
                     f" WHERE t.tenant_id = ? AND ({' OR '.join(changed)})", (tenant,))
        counts = conn.execute(f"SELECT {sums} FROM rotation_rows").fetchone()  # noqa: S608
        conn.execute(f"DELETE FROM {table} WHERE tenant_id = ? AND ({where})", (tenant,))  # noqa: S608
        conn.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(names)}"  # noqa: S608
                     f" FROM rotation_rows ORDER BY {', '.join(key)}")
    finally:
        conn.execute("DROP TABLE IF EXISTS rotation_rows")
        for k in range(len(columns)):
            conn.execute(f"DROP TABLE IF EXISTS rotation_map{k}")
    return {column: int(n) for column, n in zip(columns, counts, strict=True)}


def _mapping(mapper: Mapper, purpose: str, values: Iterable[str]) -> dict[str, str]:
    distinct = sorted(set(values))
    return dict(zip(distinct, mapper.values(purpose, distinct), strict=True))


_STATE_CACHE_KIB = 256 * 1024


def _rotate_state(settings: Settings, mapper: Mapper) -> dict[str, int]:
    tenant, keyring = mapper.tenant, mapper.keyring
    counts: dict[str, int] = {}
    with state.connect(settings) as conn:
        # the tables' indexes are rewritten at random places: keep their pages in memory (KiB);
        # the temporary tables (old and new pseudonyms) in memory too, never in a file
        if not conn.postgresql:
            conn.execute(f"PRAGMA cache_size = -{_STATE_CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
        cookie = mapper.cookie or _cookie_purpose()
        vault = Vault(keyring, conn)
        stored = [s for (s,) in conn.execute("SELECT subject_id FROM subject_keys WHERE tenant_id = ?",
                                             (tenant,))]
        subjects = _mapping(mapper, SUBJECT_PURPOSE, stored)
        renames = {s: n for s, n in subjects.items() if n != s}
        deks = vault.rename(tenant, renames)
        counts["data_keys_moved"] = len(renames)
        links = _rekey(conn, "identity_links", tenant, mapper,
                       {"subject_id": SUBJECT_PURPOSE, "anonymous_pid": cookie})
        counts["identity_links"] = max(links.values())
        consent = _rekey(conn, "consent", tenant, mapper, {"subject_id": SUBJECT_PURPOSE})
        counts["consent"] = consent["subject_id"]
        # rectified values are encrypted under associated data naming the subject
        rows = conn.execute("SELECT dataset, subject_id, field, value_enc FROM rectifications"
                            " WHERE tenant_id = ?", (tenant,)).fetchall()
        changed = 0
        rectified = _mapping(mapper, SUBJECT_PURPOSE, [r[1] for r in rows])
        for dataset, s, field, blob in rows:
            new = rectified[s]
            if new == s:
                continue
            dek = deks.get(new)
            if dek is not None:
                aead = AESGCM(dek)
                value = decrypt_value(aead, blob, rectifications.associated_data(tenant, s, field))
                blob = encrypt_value(aead, value, rectifications.associated_data(tenant, new, field))
            conn.execute("UPDATE rectifications SET subject_id = ?, value_enc = ? WHERE tenant_id = ?"
                         " AND dataset = ? AND subject_id = ? AND field = ?",
                         (new, blob, tenant, dataset, s, field))
            changed += 1
        counts["rectifications"] = changed
    return counts


def _cookie_purpose(catalog: dict[str, Contract] | None = None) -> str:
    """The purpose of the cookie pseudonym (the identifier column the event zone names
    ``anonymous_pid``), from ``catalog`` (every contract, ``_catalog``) or the contracts."""
    catalog = _catalog() if catalog is None else catalog
    found = {spec.name for contract in catalog.values() for spec in contract.columns
             if spec.cls == "identifier" and spec.event_name == contracts.COOKIE_COLUMN}
    if len(found) != 1:
        raise RotationError(f"the contracts name {len(found)} cookie identifier column(s); expected one")
    return found.pop()


def _catalog() -> dict[str, Contract]:
    """Every contract by dataset (each parsed once: parsing compiles its formats)."""
    return {dataset: contracts.load(dataset) for dataset in contracts.available()}


def _rotate_ledger(settings: Settings, mapper: Mapper, counts: dict[str, Any]) -> dict[str, int]:
    from sqlalchemy import select, update

    from pseudozone.rights import audit, store

    tenant = mapper.tenant
    out: dict[str, int] = {}
    subject, cookie = SUBJECT_PURPOSE, mapper.cookie or _cookie_purpose()
    tables = ((store.requests, "subject_id", subject), (store.legal_holds, "subject_id", subject),
              (store.restrictions, "subject_id", subject), (store.objections, "subject_id", subject),
              (store.restricted_cookies, "anonymous_pid", cookie))
    with store.transaction(settings) as conn:
        for table, column, purpose in tables:
            col = table.c[column]
            values = sorted({v for (v,) in conn.execute(
                select(col).where(table.c.tenant_id == tenant, col.is_not(None))).all()})
            mapped = dict(zip(values, mapper.values(purpose, values), strict=True))
            changed = 0
            for old, new in mapped.items():
                if old != new:
                    changed += conn.execute(update(table).where(table.c.tenant_id == tenant, col == old)
                                            .values({column: new})).rowcount
            out[table.name] = changed
        audit.append(conn, "pseudonyms.rotated", tenant_id=tenant,
                     details={"from_version": mapper.source, "to_version": mapper.target, **counts, **out},
                     keyring=mapper.keyring)
    return out


# -- the whole rotation ---------------------------------------------------------------------------


def _begin(settings: Settings, keyring: KeyRing, tenant: str) -> tuple[int, int, bool]:
    """(version, target, resumed): the tenant's open rotation, or a new one recorded."""
    with state.connect(settings) as conn:
        row = conn.execute("SELECT version, target FROM pseudonym_versions WHERE tenant_id = ?",
                           (tenant,)).fetchone()
        if row is not None and row[1] is not None:
            return int(row[0]), int(row[1]), True
        source = int(row[0]) if row is not None else keyring.pseudonym_version
        conn.execute("INSERT INTO pseudonym_versions (tenant_id, version, target, started_at)"
                     " VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id) DO UPDATE SET target = excluded.target,"
                     " started_at = excluded.started_at, finished_at = NULL",
                     (tenant, source, source + 1, state.now()))
    if compact.writers_active(settings, tenant):
        with state.connect(settings) as conn:  # not started after all: writers go on
            if row is None:
                conn.execute("DELETE FROM pseudonym_versions WHERE tenant_id = ?", (tenant,))
            else:
                conn.execute("UPDATE pseudonym_versions SET target = NULL WHERE tenant_id = ?", (tenant,))
        raise RotationError(f"tenant {tenant}: an ingest or a rights run is in progress (or was killed"
                            " and not redone); rotate its pseudonyms once it has finished")
    return source, source + 1, False


def _has_data(settings: Settings, tenant: str) -> bool:
    for zone in layout.ZONES:
        for _dataset, t, _dir in layout.tenant_dirs(layout.zone_root(settings, zone)):
            if t == tenant:
                return True
    return False


def rotate(settings: Settings, tenant: str, *, keyring: KeyRing | None = None,
           on_partition: Callable[[str], None] | None = None, helpers: int | None = None) -> dict[str, Any]:
    """Rotate ``tenant``'s pseudonyms from its version N to N+1 (or finish a killed rotation).

    ``helpers``: processes that compute the keyed steps of the next partition while one is
    rewritten (``fasthmac.Stepper``; default one per further core, at most three; 0: every step
    in this process, in turn)."""
    from pseudozone.rights import audit, store

    keyring = refresh(settings, keyring or KeyRing.load(settings))
    settings.ensure()
    if not _has_data(settings, tenant):
        raise RotationError(f"tenant {tenant} has no data under this root (check the tenant id and --home)")
    source, target, resumed = _begin(settings, keyring, tenant)
    if not resumed:
        with store.transaction(settings) as conn:
            audit.append(conn, "pseudonyms.rotation_started", tenant_id=tenant,
                         details={"from_version": source, "to_version": target}, keyring=keyring)
    log.info("pseudonym rotation of tenant %s: version %d -> %d%s", tenant, source, target,
             " (resumed)" if resumed else "")
    helpers = fasthmac.default_helpers() if helpers is None else helpers
    catalog = _catalog()
    cookie = _cookie_purpose(catalog)
    with fasthmac.Stepper(helpers, local=False) as ahead:
        mapper = Mapper(keyring, tenant, source, target, fasthmac.Stepper(),
                        remember=frozenset({SUBJECT_PURPOSE, cookie}), cookie=cookie)
        recovered = compact.recover(settings, prefix=compact.ROTATE_PREFIX)
        zones_done = _rotate_partitions(settings, mapper, on_partition, ahead if helpers else None, catalog)
        pii_rows = _rotate_pii(settings, mapper)
        state_counts = _rotate_state(settings, mapper)
        counts: dict[str, Any] = {"partitions": zones_done["partitions"], "files_in": zones_done["files_in"],
                                  "files_out": zones_done["files_out"], "rows": zones_done["rows"],
                                  "pii_rows": pii_rows, **state_counts}
        ledger = _rotate_ledger(settings, mapper, counts)
        with state.connect(settings) as conn:
            conn.execute("UPDATE pseudonym_versions SET version = ?, target = NULL, finished_at = ?"
                         " WHERE tenant_id = ?", (target, state.now(), tenant))
    refresh(settings, keyring)
    result = {"tenant_id": tenant, "from_version": source, "to_version": target, "resumed": resumed,
              **counts, "ledger": ledger, "recovered": recovered}
    log.info("pseudonym rotation of tenant %s done: %s", tenant, result)
    return result
