"""Zone layout: the one place that builds and parses the paths of the lake.

Under the zones root (``Settings.zones``)::

    events/<dataset>/tenant_id=<t>/date=<d>/<batch>[.bNN].parquet     event zone (Hive partitions)
    restricted/<dataset>/tenant_id=<t>/date=<d>/<batch>[.bNN].parquet restricted zone (same layout)
    pii/<dataset>/tenant_id=<t>/<batch>.parquet                       PII zone
    quarantine/<dataset>/tenant_id=<t>/<landing file>                 rejected batches
    quarantine/rights/tenant_id=<t>/<group>.reason.json               rejected rewrites
    quarantine/requests/<request>.json                                unreadable inbox requests
    (each quarantined file has its reason beside it: <file>.reason.json)
    exports/<tenant>/<request>.zip.enc                                export archives (encrypted)

and under the state directory ``subject_index/<dataset>/tenant_id=<t>/<batch>.parquet`` (beside the
zones, ``.subject_index/…``, when they are on object storage: docs/adr/0017-object-storage.md).
Zone paths are ``UPath`` objects; ``relative`` names one under a root on any filesystem.
``.bNN`` is the subject bucket of datasets whose contract sets ``subject_buckets``.
Paths stored in the subject index and in reports are relative to the zones root, with
``/`` separators (``ZoneFile.rel``).  Nothing else in pseudozone spells these names.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from upath import UPath

from pseudozone.config import Settings
from pseudozone.errors import PseudozoneError

if TYPE_CHECKING:
    import pyarrow as pa

EVENTS = "events"
RESTRICTED = "restricted"
PII = "pii"
ZONES = (EVENTS, RESTRICTED, PII)
PARTITIONED = (EVENTS, RESTRICTED)  # zones with date partitions (and subject buckets)

TENANT_KEY = "tenant_id"
DATE_KEY = "date"
_TENANT = TENANT_KEY + "="
_DATE = DATE_KEY + "="
SUFFIX = ".parquet"
_BUCKETED = re.compile(r"^(?P<batch>.+)\.b(?P<bucket>\d{2})$")

P = TypeVar("P", Path, PurePosixPath, PurePath, UPath)


class LayoutError(PseudozoneError):
    """A path is not where the layout puts a zone file (names the path, never a value)."""


def _name_ok(text: str) -> bool:
    return bool(text) and "/" not in text and "\\" not in text and text not in (".", "..")


@dataclass(frozen=True)
class ZoneFile:
    """One Parquet file of the event, restricted or PII zone."""

    zone: str
    dataset: str
    tenant: str
    batch: str
    date: str | None = None  # ISO date of the partition (event and restricted zones)
    bucket: int | None = None  # subject bucket, 0-99 (event and restricted zones)

    def __post_init__(self) -> None:
        if self.zone not in ZONES:
            raise LayoutError(f"unknown zone {self.zone!r} (one of {', '.join(ZONES)})")
        for what, text in (("dataset", self.dataset), ("tenant", self.tenant), ("batch", self.batch)):
            if not _name_ok(text):
                raise LayoutError(f"{self.zone} zone file: invalid {what} name {text!r}")
        if self.zone in PARTITIONED:
            if self.date is None:
                raise LayoutError(f"{self.zone} zone file of batch {self.batch!r} needs a date partition")
            try:
                dt.date.fromisoformat(self.date)
            except ValueError:
                raise LayoutError(f"{self.zone} zone file of batch {self.batch!r}: "
                                  f"date partition {self.date!r} is not an ISO date") from None
        elif self.date is not None or self.bucket is not None:
            raise LayoutError(f"{self.zone} zone files have no date partition or subject bucket")
        if self.bucket is not None and not 0 <= self.bucket <= 99:
            raise LayoutError(f"subject bucket {self.bucket} is not between 0 and 99")

    @property
    def name(self) -> str:
        stem = self.batch if self.bucket is None else f"{self.batch}.b{self.bucket:02d}"
        return stem + SUFFIX

    @property
    def rel(self) -> str:
        """The path under the zones root, ``/``-separated (as the subject index stores it)."""
        parts = [self.zone, self.dataset, _TENANT + self.tenant]
        if self.date is not None:
            parts.append(_DATE + self.date)
        return "/".join([*parts, self.name])

    def path(self, zones_root: P) -> P:
        return zones_root.joinpath(*PurePosixPath(self.rel).parts)

    def in_zone(self, zone: str) -> ZoneFile:
        """The same file name in another zone: an event file's restricted-zone mirror and back."""
        return replace(self, zone=zone)


def event_file(zone: str, dataset: str, tenant: str, day: str, batch: str,
               bucket: int | None = None) -> ZoneFile:
    """A batch's file in one date partition of the event or restricted zone."""
    if zone not in PARTITIONED:
        raise LayoutError(f"{zone} zone files have no date partition")
    return ZoneFile(zone, dataset, tenant, batch, date=day, bucket=bucket)


def pii_file(dataset: str, tenant: str, batch: str) -> ZoneFile:
    return ZoneFile(PII, dataset, tenant, batch)


def parse(path: str | PurePath | UPath, root: PurePath | UPath | None = None) -> ZoneFile:
    """The zone file at ``path``: relative to the zones root, or under ``root`` when given.

    Raises ``LayoutError`` naming the path when it is not a zone file's path.
    """
    try:
        if root is not None:
            parts = _relative(path, root)
        elif isinstance(path, UPath) and not isinstance(path, Path):
            parts = tuple(path.path.split("/"))
        else:
            parts = PurePath(path).parts
    except ValueError:
        raise LayoutError(f"{path} is not under the zones root {root}") from None
    shown = "/".join(parts)

    def bad(why: str) -> LayoutError:
        return LayoutError(f"not a zone file path: {shown} ({why})")

    if not parts or parts[0] not in ZONES:
        raise bad(f"the first part must be one of {', '.join(ZONES)}")
    zone = parts[0]
    expected = 5 if zone in PARTITIONED else 4
    shape = (f"{zone}/<dataset>/{_TENANT}<tenant>/{_DATE}<date>/<batch>{SUFFIX}" if zone in PARTITIONED
             else f"{zone}/<dataset>/{_TENANT}<tenant>/<batch>{SUFFIX}")
    if len(parts) != expected:
        raise bad(f"expected {shape}")
    if not parts[2].startswith(_TENANT) or len(parts[2]) == len(_TENANT):
        raise bad(f"expected a {_TENANT}<tenant> directory, got {parts[2]!r}")
    name = parts[-1]
    if not name.endswith(SUFFIX) or len(name) == len(SUFFIX) or name.startswith("."):
        raise bad(f"expected a <batch>{SUFFIX} file, got {name!r}")
    stem = name[: -len(SUFFIX)]
    date: str | None = None
    bucket: int | None = None
    if zone in PARTITIONED:
        if not parts[3].startswith(_DATE):
            raise bad(f"expected a {_DATE}<date> directory, got {parts[3]!r}")
        date = parts[3][len(_DATE):]
        match = _BUCKETED.match(stem)
        if match:
            stem, bucket = match["batch"], int(match["bucket"])
    try:
        return ZoneFile(zone, parts[1], parts[2][len(_TENANT):], stem, date=date, bucket=bucket)
    except LayoutError as exc:
        raise bad(str(exc)) from None


def zone_of(rel: str | PurePath) -> str:
    """The zone (``events``, ``restricted``, ``pii``) of a zone file path."""
    return parse(rel).zone


def mirror_pair(rel: str | PurePath) -> tuple[str, str]:
    """(event-zone path, restricted-zone path) of an event- or restricted-zone file."""
    f = parse(rel)
    if f.zone not in PARTITIONED:
        raise LayoutError(f"not an event or restricted zone file: {rel}")
    return f.in_zone(EVENTS).rel, f.in_zone(RESTRICTED).rel


# -- directories of a zone ------------------------------------------------------------------


def _relative(path: str | PurePath | UPath, root: PurePath | UPath) -> tuple[str, ...]:
    """The parts of ``path`` below ``root`` (local paths or object-storage paths alike)."""
    if isinstance(root, UPath) and not isinstance(root, Path):
        key = path.path if isinstance(path, UPath) else str(path)
        base = root.path.rstrip("/") + "/"
        if not key.startswith(base):
            raise ValueError(key)
        return tuple(key[len(base):].split("/"))
    return PurePath(path if not isinstance(path, UPath) else str(path)).relative_to(root).parts


def relative(path: str | PurePath | UPath, root: PurePath | UPath) -> str:
    """``path`` below ``root`` with ``/`` separators (as the index and reports name zone files)."""
    return "/".join(_relative(path, root))


def zone_root(settings: Settings, zone: str) -> UPath:
    roots = {EVENTS: settings.event_zone, RESTRICTED: settings.restricted_zone, PII: settings.pii_zone}
    if zone not in roots:
        raise LayoutError(f"unknown zone {zone!r} (one of {', '.join(ZONES)})")
    return roots[zone]


def tenant_dir(zone_root: P, dataset: str, tenant: str) -> P:
    """``<zone root>/<dataset>/tenant_id=<tenant>`` (also for the quarantine and the index)."""
    return zone_root / dataset / (_TENANT + tenant)


def partition_dir(zone_root: P, dataset: str, tenant: str, day: str | None = None) -> P:
    """A tenant's directory of a dataset, or with ``day`` one of its date partitions."""
    base = tenant_dir(zone_root, dataset, tenant)
    return base if day is None else base / (_DATE + day)


def date_dir(day: str) -> str:
    """The name of a date partition's directory (``date=<day>``)."""
    return _DATE + day


def tenant_dirs(zone_root: UPath) -> Iterator[tuple[str, str, UPath]]:
    """(dataset, tenant, directory) of every tenant directory under a zone root, sorted."""
    if not zone_root.exists():
        return
    for dataset_dir in sorted(p for p in zone_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for tdir in sorted(dataset_dir.glob(_TENANT + "*")):
            if tdir.is_dir() and len(tdir.name) > len(_TENANT):
                yield dataset_dir.name, tdir.name[len(_TENANT):], tdir


class DatePartition(NamedTuple):
    day: str  # as named on disk
    date: dt.date
    path: UPath


def date_partitions(tenant_dir: UPath) -> Iterator[DatePartition]:
    """The date partitions of a tenant directory, sorted; directories whose name is no date are left out."""
    for part in sorted(tenant_dir.glob(_DATE + "*")):
        day = part.name[len(_DATE):]
        try:
            date = dt.date.fromisoformat(day)
        except ValueError:
            continue
        yield DatePartition(day, date, part)


def tenant_of(path: UPath, zone_root: UPath) -> str:
    """The tenant of any file under a zone root (from its ``tenant_id=`` directory)."""
    parts = _relative(path, zone_root)
    for part in parts[:-1]:
        if part.startswith(_TENANT) and len(part) > len(_TENANT):
            return part[len(_TENANT):]
    raise LayoutError(f"zone file {'/'.join(parts)} is not under a {_TENANT}<tenant> directory")


# -- the subject index -----------------------------------------------------------------------


def index_file(settings: Settings, dataset: str, tenant: str, batch: str) -> UPath:
    """One batch's subject index file."""
    return tenant_dir(settings.subject_index, dataset, tenant) / (batch + SUFFIX)


def index_files(settings: Settings, tenant: str) -> Iterator[tuple[str, str, UPath]]:
    """(dataset, batch, path) of every subject index file of a tenant, sorted by path."""
    for f in sorted(settings.subject_index.glob(f"*/{_TENANT}{tenant}/*{SUFFIX}")):
        if not f.name.startswith("."):
            yield f.parent.parent.name, f.name[: -len(SUFFIX)], f


# -- quarantine and exports ------------------------------------------------------------------


def quarantine_dir(settings: Settings, dataset: str, tenant: str) -> UPath:
    """Where a rejected landing batch of ``dataset`` and ``tenant`` is moved."""
    return tenant_dir(settings.quarantine, dataset, tenant)


REASON_SUFFIX = ".reason.json"


def reason_file(quarantined: P) -> P:
    """The ``.reason.json`` beside a quarantined file."""
    return quarantined.with_name(quarantined.name + REASON_SUFFIX)


def quarantined_files(settings: Settings, tenant: str | None = None) -> Iterator[tuple[str, str, UPath]]:
    """(dataset, tenant, path) of every quarantined landing file (of ``tenant`` only, when given),
    sorted; reason files are not listed (``reason_file`` names them), nor links."""
    for dataset, owner, tdir in tenant_dirs(settings.quarantine):
        if tenant is not None and owner != tenant:
            continue
        for f in sorted(tdir.iterdir()):
            if f.name.endswith(REASON_SUFFIX) or f.name.startswith(".") or not f.is_file() or f.is_symlink():
                continue
            yield dataset, owner, f


def quarantined_requests(settings: Settings) -> Iterator[UPath]:
    """Every unreadable inbox request kept in the quarantine (not their reason files), sorted."""
    folder = settings.quarantine / "requests"
    if not folder.is_dir():
        return
    for f in sorted(folder.iterdir()):
        if not (f.name.endswith(REASON_SUFFIX) or f.name.startswith(".") or f.is_symlink()) and f.is_file():
            yield f


def rights_quarantine_file(settings: Settings, tenant: str, group_id: str) -> UPath:
    """The reason file of a rights rewrite that its gate stopped."""
    return settings.quarantine / "rights" / (_TENANT + tenant) / f"{group_id}.reason.json"


def request_quarantine_file(settings: Settings, request_id: str) -> UPath:
    """Where an unreadable inbox request is kept (its reason beside it)."""
    return settings.quarantine / "requests" / f"{request_id}.json"


EXPORT_SUFFIX = ".zip.enc"
LEGACY_EXPORT_SUFFIX = ".zip"  # archives written unencrypted, before issue 10


def export_file(settings: Settings, tenant: str, request_id: str) -> UPath:
    """An export request's archive: the ZIP, encrypted (``rights.export``'s format)."""
    return settings.exports / tenant / f"{request_id}{EXPORT_SUFFIX}"


def legacy_export_file(settings: Settings, tenant: str, request_id: str) -> UPath:
    """Where an export request's archive was written unencrypted before issue 10."""
    return settings.exports / tenant / f"{request_id}{LEGACY_EXPORT_SUFFIX}"


def export_archives(settings: Settings, *, legacy: bool = False) -> Iterator[tuple[str, str, UPath]]:
    """(tenant, request id, path) of every export archive, sorted by path; with ``legacy``,
    the unencrypted archives of before issue 10 as well."""
    if not settings.exports.exists():
        return
    suffixes = (EXPORT_SUFFIX, LEGACY_EXPORT_SUFFIX) if legacy else (EXPORT_SUFFIX,)
    for archive in sorted(settings.exports.glob("*/*")):
        suffix = next((s for s in suffixes if archive.name.endswith(s)), None)
        if suffix is None or archive.name.startswith(".") or len(archive.name) == len(suffix):
            continue
        yield archive.parent.name, archive.name[: -len(suffix)], archive


# -- subject buckets ---------------------------------------------------------------------------


def subject_buckets(subjects: pa.Array, n: int) -> pa.Array:
    """Bucket of each row: a stable function of its pseudonym (rows without one: bucket 0).

    Splitting a date partition by subject bucket means a rights request rewrites
    about 1/n of the files that hold a subject's days instead of all of them.
    """
    import pyarrow as pa  # here: the layout's other functions need no Arrow
    import pyarrow.compute as pc

    if pa.types.is_dictionary(subjects.type):
        distinct, indices = subjects.dictionary, subjects.indices
    else:
        encoded = pc.dictionary_encode(subjects)
        distinct, indices = encoded.dictionary, encoded.indices
    per_value = pa.array([int(v.rpartition(":")[2][:8], 16) % n for v in distinct.to_pylist()],
                         pa.int32())
    return pc.fill_null(pc.take(per_value, indices), 0)
