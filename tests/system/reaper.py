"""Stops the integration tier's services if the pytest process that started them dies.

Started by ``services.run_stack`` in a session of its own; it waits until its parent (the
pytest process) is gone, then SIGTERMs and SIGKILLs, by PID, every process of the
sessions listed in the sessions file (one leader PID per line; each service was started
with ``start_new_session=True``, so its leader's PID is its session id).  On a normal
teardown the services are stopped first and this process is terminated.

    python tests/system/reaper.py --parent-pid PID --sessions-file FILE
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--sessions-file", type=Path, required=True)
    args = parser.parse_args(argv)
    while os.getppid() == args.parent_pid:
        time.sleep(1)
    sids = [int(line) for line in args.sessions_file.read_text().split() if line.isdigit()]
    from services import kill_sessions  # type: ignore[import-not-found]  # sys.path[0] when run as a script

    left = kill_sessions(sids)
    print(f"reaper: parent {args.parent_pid} gone; sessions {sids} stopped; survivors {left}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
