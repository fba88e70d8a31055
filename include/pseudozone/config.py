"""Where things live: every path is derived from one data root.

The data root is ``PSEUDOZONE_HOME`` (default ``./data``).  Nothing here reads
data or keys; it only names places (see DESIGN.md, "Data flow").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "PSEUDOZONE_HOME"
KEY_DIR_ENV = "PSEUDOZONE_KEY_DIR"
# a tenant id: letters, digits, '_', '.', '-'; \Z also refuses a trailing newline
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


@dataclass(frozen=True)
class Settings:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike[str] | None = None) -> Settings:
        chosen = root if root is not None else os.environ.get(HOME_ENV, "./data")
        return cls(root=Path(chosen).expanduser().resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def zones(self) -> Path:
        return self.root / "zones"

    @property
    def pii_zone(self) -> Path:
        return self.zones / "pii"

    @property
    def event_zone(self) -> Path:
        return self.zones / "events"

    @property
    def restricted_zone(self) -> Path:
        return self.zones / "restricted"

    @property
    def exports(self) -> Path:
        return self.zones / "exports"

    @property
    def quarantine(self) -> Path:
        return self.zones / "quarantine"

    @property
    def staging(self) -> Path:
        """Scratch space for files not yet published; same filesystem as the zones."""
        return self.zones / ".staging"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def state_db(self) -> Path:
        return self.state / "pseudozone.db"

    @property
    def subject_index(self) -> Path:
        return self.state / "subject_index"

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
        """Places only the pipeline's user reads (0700 directories, 0600 files)."""
        return (self.pii_zone, self.restricted_zone, self.exports, self.quarantine, self.staging,
                self.state)

    @property
    def state_dbs(self) -> tuple[Path, ...]:
        """SQLite files under ``state/`` (created 0600: SQLite gives its -wal and -shm the same mode);
        the request ledger's only while no other database is configured (``rights.store``)."""
        ledger = () if os.environ.get("PSEUDOZONE_REQUESTS_DB_URL") else (self.state / "requests.db",)
        return (self.state_db, *ledger)

    def ensure(self) -> None:
        """Make the data root's places with their modes (need-to-know on disk, ADR 0001).

        The event zone is 0750 (files 0640: the analysts' group reads it); the PII and
        restricted zones, exports, quarantine, staging and ``state/`` are 0700 (files 0600);
        ``zones/`` itself is 0710 (the group may pass through to the event zone, not list).
        A setgid bit the deployment set (for the analysts' group) is kept.  The first call
        of a process also sweeps leftovers and tightens modes looser than these (files
        moved in by rename, roots made before issue 12).
        """
        from pseudozone import zones  # pyarrow: not at import time (plugins import this module)

        self.landing.mkdir(parents=True, exist_ok=True)
        for path, mode in ((self.zones, zones.ZONES_ROOT_MODE), (self.event_zone, zones.EVENT_DIR_MODE),
                           *((p, zones.PRIVATE_DIR_MODE) for p in self.private_places),
                           (self.subject_index, zones.PRIVATE_DIR_MODE)):
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
        trees = [(self.event_zone, zones.EVENT_DIR_MODE, zones.EVENT_FILE_MODE),
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
        removed = zones.sweep_temp_files([self.zones, self.state], cutoff)
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
