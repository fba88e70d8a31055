from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from pseudozone.cli import main


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSEUDOZONE_MASTER_KEY", base64.b64encode(bytes(32)).decode())


def test_generate_ingest_status_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = str(tmp_path / "lake")
    assert main(["--home", home, "generate", "--events", "3000", "--tenants", "2"]) == 0
    assert main(["--home", home, "ingest"]) == 0
    out = capsys.readouterr().out
    assert "6 batch(es): 6 done, 0 quarantined" in out
    assert main(["--home", home, "status"]) == 0
    assert re.search(r"^events\s+events\s+\d+\s+3000\s*$", capsys.readouterr().out, re.M)
    assert main(["--home", home, "query", "SELECT count(*) AS n FROM events"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].strip() == "3000"


def test_query_cannot_read_the_pii_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "lake"
    main(["--home", str(home), "generate", "--events", "500", "--tenants", "1"])
    main(["--home", str(home), "ingest"])
    capsys.readouterr()
    pii = next((home / "zones" / "pii").rglob("*.parquet"))
    code = main(["--home", str(home), "query", f"SELECT * FROM read_parquet('{pii}')"])
    err = capsys.readouterr().err
    assert code == 2
    assert "pseudozone: error: query failed" in err and "Traceback" not in err


def test_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "query", "SELECT 1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pseudozone: error: the event zone") and "Traceback" not in err
