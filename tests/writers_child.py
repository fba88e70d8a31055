"""A pseudozone writer run as a process of its own, for the concurrency tests
(tests/integration/test_writers.py).

    python -m tests.writers_child MODE DATA_ROOT FLAG_DIR

Modes:
- ``ingest-before-publish``: ingest every pending batch, pausing once after the first batch
  is planned and before it checks its epoch and takes its publish lease;
- ``ingest-in-publish``: the same, pausing once inside the publish (lease held, index not
  yet written);
- ``rights``: run every open rights request (``process_all``), as ``pseudozone rights process``.

A pause writes ``FLAG_DIR/paused`` and waits for ``FLAG_DIR/go``.  The result is printed as
one JSON line on stdout.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _pause_once(flags: Path, real: Callable[..., Any]) -> Callable[..., Any]:
    done = {"paused": False}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not done["paused"]:
            done["paused"] = True
            (flags / "paused").touch()
            deadline = time.monotonic() + 120
            while not (flags / "go").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("the test never said go")
                time.sleep(0.05)
        return real(*args, **kwargs)

    return wrapper


def main(mode: str, root: str, flag_dir: str) -> int:
    from pseudozone import ingest
    from pseudozone.config import Settings
    from pseudozone.lake import index, leases
    from pseudozone.rights import process

    settings, flags = Settings.from_env(root), Path(flag_dir)
    if mode == "rights":
        summary = process.process_all(settings, f"child__{uuid.uuid4()}")
        print(json.dumps({"completed": summary["completed"], "groups": summary["groups"]}))
        return 0
    if mode == "ingest-before-publish":
        real_publishing = leases.publishing

        @contextlib.contextmanager
        def publishing(*args: Any, **kwargs: Any) -> Iterator[None]:
            with _pause_once(flags, real_publishing)(*args, **kwargs):
                yield

        leases.publishing = publishing  # type: ignore[assignment]
    elif mode == "ingest-in-publish":
        index.write = _pause_once(flags, index.write)  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown mode {mode}")
    results = ingest.ingest_pending(settings)
    print(json.dumps([{"batch_id": r.batch_id, "status": r.status, "dropped_erased": r.rows_dropped_erased}
                      for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
