"""Where things live: every path is derived from one data root.

The data root is ``PSEUDOZONE_HOME`` (default ``./data``), a local directory: it holds the
state database, landing and the reports.  The zones are under it (``<root>/zones``) unless
``PSEUDOZONE_ZONES`` names another place for them: an fsspec URL such as
``s3://bucket/prefix`` (credentials and endpoint from the standard AWS settings,
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ..., or from the Airflow connection named by
``PSEUDOZONE_ZONES_CONN_ID``) or a local directory.  Zone paths are
``UPath`` objects: on a local disk they are ``pathlib.Path`` objects as well, elsewhere
they go through ``pseudozone.zones``, the storage protocol (docs/adr/0017-object-storage.md).
Nothing here reads data or keys; it only names places.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from upath import UPath

HOME_ENV = "PSEUDOZONE_HOME"
KEY_DIR_ENV = "PSEUDOZONE_KEY_DIR"
ZONES_ENV = "PSEUDOZONE_ZONES"
ZONES_CONN_ENV = "PSEUDOZONE_ZONES_CONN_ID"
# a tenant id: letters, digits, '_', '.', '-'; \Z also refuses a trailing newline
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


@functools.cache
def _connection_options(conn_id: str) -> dict[str, Any]:
    """s3fs options from an Airflow connection of type ``aws`` (read once per process): login is
    the access key id, password the secret, and the extra's ``endpoint_url`` (or its
    ``service_config.s3.endpoint_url``) and ``region_name`` as the Amazon provider reads them."""
    try:
        from airflow.sdk import BaseHook
    except ImportError:
        raise SettingsError(f"{ZONES_CONN_ENV} is set but Airflow is not importable") from None
    try:
        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson or {}
    except Exception:  # noqa: BLE001 - the hook's error text is not ours to show (it may hold secrets)
        raise SettingsError(f"Airflow connection {conn_id!r} ({ZONES_CONN_ENV}) could not be read") from None
    client: dict[str, Any] = {}
    endpoint = extra.get("endpoint_url") or extra.get("service_config", {}).get("s3", {}).get("endpoint_url")
    if endpoint:
        client["endpoint_url"] = endpoint
    if extra.get("region_name"):
        client["region_name"] = extra["region_name"]
    options: dict[str, Any] = {"client_kwargs": client} if client else {}
    if conn.login and conn.password:
        options.update(key=conn.login, secret=conn.password)
    return options


def _local(path: UPath) -> Path:
    """A zone place known to be on a local disk (``Settings.remote_zones`` is false)."""
    if not isinstance(path, Path):
        raise TypeError(f"{path} is not a local path")
    return path


class SettingsError(ValueError):
    """A data root or zones location that cannot be used (names the setting, never data)."""


def _is_url(text: str) -> bool:
    scheme = urlsplit(text).scheme
    return len(scheme) > 1 and "://" in text  # "C:" of a Windows path is no scheme


@dataclass(frozen=True)
class Settings:
    root: Path
    # where the zones are when not under the root: an fsspec URL or a local directory
    zones_location: str | None = None
    # the state database's SQLAlchemy URL; None: $PSEUDOZONE_STATE_DB_URL, else state/pseudozone.db
    state_db_url: str | None = None

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None,
                 zones: str | None = None) -> Settings:
        chosen = os.fspath(root) if root is not None else os.environ.get(HOME_ENV, "./data")
        if _is_url(chosen):
            raise SettingsError(
                f"{HOME_ENV} must be a local directory (it holds the state database and landing), "
                f"not a URL; put the zones on object storage with {ZONES_ENV}=<url>")
        location = zones if zones is not None else os.environ.get(ZONES_ENV) or None
        if location is not None and not _is_url(location):
            location = str(Path(location).expanduser().resolve())
        return cls(root=Path(chosen).expanduser().resolve(), zones_location=location)

    @property
    def remote_zones(self) -> bool:
        """Whether the zones are on object storage (no rename, no modes, no fsync)."""
        return self.zones_location is not None and _is_url(self.zones_location)

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def zones(self) -> UPath:
        if self.zones_location is None:
            return UPath(self.root / "zones")
        if not self.remote_zones:
            return UPath(self.zones_location)
        # listings are never cached: other workers write the same prefixes
        conn_id = os.environ.get(ZONES_CONN_ENV)
        options = _connection_options(conn_id) if conn_id else {}
        return UPath(self.zones_location, use_listings_cache=False, **options)

    def shown(self, path: Path | UPath) -> str:
        """How reports, results and audit entries name a place: relative to the data root when
        under it (``zones/events/…``), else in full (``s3://bucket/prefix/events/…``)."""
        if isinstance(path, Path):
            try:
                return str(path.relative_to(self.root))
            except ValueError:
                return str(path)
        return str(path)

    @property
    def pii_zone(self) -> UPath:
        return self.zones / "pii"

    @property
    def event_zone(self) -> UPath:
        return self.zones / "events"

    @property
    def restricted_zone(self) -> UPath:
        return self.zones / "restricted"

    @property
    def exports(self) -> UPath:
        return self.zones / "exports"

    @property
    def quarantine(self) -> UPath:
        return self.zones / "quarantine"

    @property
    def staging(self) -> Path:
        """Scratch space for files not yet published: on the zones' filesystem when it is a
        local one (published by rename), else a local directory under the root (published
        by one upload each)."""
        if self.remote_zones:
            return self.root / "staging"
        return _local(self.zones / ".staging")

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def state_db(self) -> Path:
        return self.state / "pseudozone.db"

    @property
    def subject_index(self) -> UPath:
        """The subject index: under ``state/``, or beside the zones when they are on object
        storage (every worker reads and writes it)."""
        if self.remote_zones:
            return self.zones / ".subject_index"
        return UPath(self.state / "subject_index")

    @property
    def reports(self) -> Path:
        """The nightly compliance reports (JSON, HTML, Data Docs) and their history."""
        return self.root / "reports" / "compliance"

    @property
    def key_dir(self) -> Path:
        """The key directory: ``PSEUDOZONE_KEY_DIR``, else ``<root>.keys`` beside the data root.

        It is outside the data root so that a backup of the root never holds the embedded
        master key nor the KEK seeds (docs/adr/0009-backups-and-erasure.md).
        """
        chosen = os.environ.get(KEY_DIR_ENV)
        if chosen:
            return Path(chosen).expanduser().resolve()
        return self.root.with_name(self.root.name + ".keys")

    @property
    def master_key_file(self) -> Path:
        """The embedded default's master key file, in the key directory."""
        return self.key_dir / "master.key"

    @property
    def legacy_master_key_file(self) -> Path:
        """Where roots from before ADR 0009 kept the key file (inside the root): still read."""
        return self.state / "master.key"

    @property
    def private_places(self) -> tuple[Path, ...]:
        """Local places only the pipeline's user reads (0700 directories, 0600 files); zones on
        object storage have no modes (their bucket policy says who reads what: ADR 0016)."""
        zone_places: tuple[Path, ...] = () if self.remote_zones else tuple(
            _local(p) for p in (self.pii_zone, self.restricted_zone, self.exports, self.quarantine))
        return (*zone_places, self.staging, self.state)

    @property
    def state_dbs(self) -> tuple[Path, ...]:
        """The SQLite state file under ``state/`` (created 0600: SQLite gives its -wal and -shm the
        same mode), while no other database is configured (``PSEUDOZONE_STATE_DB_URL``)."""
        elsewhere = self.state_db_url or os.environ.get("PSEUDOZONE_STATE_DB_URL", "").strip()
        return () if elsewhere else (self.state_db,)

    def ensure(self) -> None:
        """Make the data root's places with their modes (need-to-know on disk, ADR 0001).

        The event zone is 0750 (files 0640: the analysts' group reads it); the PII and
        restricted zones, exports, quarantine, staging and ``state/`` are 0700 (files 0600);
        ``zones/`` itself is 0710 (the group may pass through to the event zone, not list).
        A setgid bit the deployment set (for the analysts' group) is kept.  The first call
        of a process also sweeps leftovers and tightens modes looser than these (files
        moved in by rename, roots made before issue 12).  Zones on object storage need no
        directories: only the local places are made.
        """
        from pseudozone import zones  # pyarrow: not at import time (plugins import this module)

        self.landing.mkdir(parents=True, exist_ok=True)
        local_zones: tuple[tuple[Path, int], ...] = () if self.remote_zones else (
            (_local(self.zones), zones.ZONES_ROOT_MODE), (_local(self.event_zone), zones.EVENT_DIR_MODE),
            (_local(self.subject_index), zones.PRIVATE_DIR_MODE))
        for path, mode in (*local_zones, *((p, zones.PRIVATE_DIR_MODE) for p in self.private_places)):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            zones.set_mode(path, mode)
        for db in self.state_dbs:
            if not db.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, zones.PRIVATE_FILE_MODE))
        if self.root not in _SWEPT:
            _SWEPT.add(self.root)
            self.sweep_leftovers()
            self.tighten_modes()

    def tighten_modes(self) -> int:
        """Give every directory and file under the zones and state the mode of its zone where
        it is looser (group or others may do more); returns how many were changed."""
        from pseudozone import zones  # pyarrow: not at import time (plugins import this module)

        changed = 0
        events = () if self.remote_zones else ((_local(self.event_zone), zones.EVENT_DIR_MODE,
                                                 zones.EVENT_FILE_MODE),)
        trees = [*events,
                 *((p, zones.PRIVATE_DIR_MODE, zones.PRIVATE_FILE_MODE) for p in self.private_places)]
        for top, dir_mode, file_mode in trees:
            for dirpath, _dirs, files in os.walk(top):
                entries = [(dirpath, dir_mode), *((os.path.join(dirpath, f), file_mode) for f in files)]
                for name, mode in entries:
                    try:
                        st = os.lstat(name)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077 & ~mode:
                        continue
                    zones.set_mode(Path(name), mode)
                    changed += 1
        return changed

    def sweep_leftovers(self, *, older_than: float | None = None) -> list[Path]:
        """Remove what killed runs left: temp files under the zones and state, and staged
        batches (``zones/.staging/<batch>``), untouched since ``older_than`` (epoch seconds;
        default ``zones.STALE_TEMP_SECONDS`` ago, so that a live writer's files stay)."""
        from pseudozone import zones  # pyarrow: not at import time (plugins import this module)

        cutoff = time.time() - zones.STALE_TEMP_SECONDS if older_than is None else older_than
        local = [self.staging, self.state] if self.remote_zones else [_local(self.zones), self.state]
        removed = zones.sweep_temp_files(local, cutoff)
        if self.staging.is_dir():
            for staged in sorted(self.staging.iterdir()):
                if staged.is_dir() and not staged.is_symlink() and _newest_mtime(staged) < cutoff:
                    shutil.rmtree(staged, ignore_errors=True)
                    removed.append(staged)
        return removed


# data roots swept by this process (Settings.ensure): once per command or task, not per batch
_SWEPT: set[Path] = set()


def _newest_mtime(directory: Path) -> float:
    newest = directory.lstat().st_mtime
    for dirpath, dirs, files in os.walk(directory):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest
