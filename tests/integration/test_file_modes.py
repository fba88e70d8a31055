"""Need-to-know on disk (issue 12): the event zone is readable by the analysts' group
(0750/0640); the PII and restricted zones, exports, quarantine, staging and state are the
pipeline user's alone (0700/0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pseudozone import config, ingest, zones
from pseudozone.config import Settings
from pseudozone.contracts import load
from pseudozone.keys import KeyRing
from pseudozone.rights import process, requests
from tests import planted
from tests.conftest import TEST_MASTER_KEY

KR = KeyRing(TEST_MASTER_KEY)


def _expected(settings: Settings, path: Path) -> int | None:
    """The mode a path must have, or None where the data root's owner decides (landing, reports)."""
    if path == settings.zones:
        return zones.ZONES_ROOT_MODE
    is_dir = path.is_dir()
    if path == settings.event_zone or settings.event_zone in path.parents:
        return zones.EVENT_DIR_MODE if is_dir else zones.EVENT_FILE_MODE
    for private in settings.private_places:
        if path == private or private in path.parents:
            return zones.PRIVATE_DIR_MODE if is_dir else zones.PRIVATE_FILE_MODE
    return None


def _wrong_modes(settings: Settings) -> dict[str, str]:
    wrong = {}
    for dirpath, dirs, files in os.walk(settings.root):
        for name in [*dirs, *files]:
            path = Path(dirpath, name)
            want = _expected(settings, path)
            if want is None or path.is_symlink():
                continue
            have = stat.S_IMODE(path.lstat().st_mode) & 0o777
            if have != want:
                wrong[str(path.relative_to(settings.root))] = f"{have:o} (want {want:o})"
    return wrong


def test_zone_modes_after_ingest_quarantine_restrict_and_export(lake: Settings) -> None:
    bad = lake.landing / "events" / "tenant=acme" / "broken-0001.csv"
    bad.write_text(",".join(load("events").names) + ",ssn\n" + ",".join(["acme"] + ["x"] * 10) + ",1\n")
    results = ingest.ingest_pending(lake)
    assert "quarantined" in {r.status for r in results} and "done" in {r.status for r in results}
    for kind in ("restrict", "export"):
        requests.submit(lake, {"type": kind, "tenant_id": planted.TENANT, "user_id": planted.USER},
                        source="test", keyring=KR)
    process.process_all(lake, "run-modes", keyring=KR)
    assert any(lake.restricted_zone.rglob("*.parquet")) and any(lake.exports.rglob("*.zip.enc"))
    assert any(lake.quarantine.rglob("*.reason.json"))
    assert any(lake.subject_index.rglob("*.parquet")) and lake.state_db.exists()

    wrong = _wrong_modes(lake)
    # landing.quarantine moves the landing file in by rename and makes its directory itself:
    # those keep the upload's and the umask's modes until the next run tightens them (the
    # quarantine root is 0700, so nobody else reaches them meanwhile)
    moved_in = {k for k in wrong if (k + "/").startswith("zones/quarantine/events/")}
    assert {k: v for k, v in wrong.items() if k not in moved_in} == {}
    assert stat.S_IMODE(lake.quarantine.stat().st_mode) == zones.PRIVATE_DIR_MODE

    config._SWEPT.discard(lake.root)  # the next run's process
    lake.ensure()
    assert _wrong_modes(lake) == {}


def test_temp_files_are_owner_only_and_new_directories_keep_the_setgid_bit(settings: Settings) -> None:
    part = settings.event_zone / "events" / "tenant_id=acme"
    part.mkdir(parents=True)
    os.chmod(part, 0o2750)  # a deployment's analysts' group, inherited by new directories
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    os.replace = spy  # type: ignore[assignment]
    try:
        import pyarrow as pa

        written = zones.write_parquet(pa.table({"x": [1]}), part / "date=2026-11-01" / "b.parquet")
        secret = zones.write_bytes(b"k", settings.pii_zone / "events" / "x" / "y.bin")
    finally:
        os.replace = real_replace
    assert seen == [0o640, 0o600]  # the final mode is set before the rename
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o2750
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
