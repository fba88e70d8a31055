"""Where things live: every path is derived from one data root.

The data root is ``PSEUDOZONE_HOME`` (default ``./data``).  Nothing here reads
data or keys; it only names places (see DESIGN.md, "Data flow").
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pseudozone import zones

HOME_ENV = "PSEUDOZONE_HOME"
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
    def master_key_file(self) -> Path:
        return self.state / "master.key"

    def ensure(self) -> None:
        """Make the data root's places; the first call of a process also sweeps leftovers."""
        for path in (self.landing, self.pii_zone, self.event_zone, self.quarantine,
                     self.staging, self.state, self.subject_index):
            path.mkdir(parents=True, exist_ok=True)
        if self.root not in _SWEPT:
            _SWEPT.add(self.root)
            self.sweep_leftovers()

    def sweep_leftovers(self, *, older_than: float | None = None) -> list[Path]:
        """Remove what killed runs left: temp files under the zones and state, and staged
        batches (``zones/.staging/<batch>``), untouched since ``older_than`` (epoch seconds;
        default ``zones.STALE_TEMP_SECONDS`` ago, so that a live writer's files stay)."""
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
