"""Where things live: every path is derived from one data root.

The data root is ``PSEUDOZONE_HOME`` (default ``./data``).  Nothing here reads
data or keys; it only names places (see DESIGN.md, "Data flow").
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

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
        for path in (self.landing, self.pii_zone, self.event_zone, self.quarantine,
                     self.staging, self.state, self.subject_index):
            path.mkdir(parents=True, exist_ok=True)
