"""The hostname Airflow records for a task instance run by one of the tier's Celery workers.

Both workers run on this machine, so ``socket.getfqdn()`` (Airflow's default
``[core] hostname_callable``) would give them one name.  Each worker process is started
with ``PSEUDOZONE_TEST_WORKER_NAME`` and ``AIRFLOW__CORE__HOSTNAME_CALLABLE`` naming this
function, so the ``hostname`` of a task instance says which worker ran it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("PSEUDOZONE_TEST_WORKER_NAME") or socket.getfqdn()
