"""Mounts the rights-request REST API in Airflow's API server under ``/pseudozone``.

Only wiring: the app and all its logic live in ``pseudozone.rights.api``.  Building the
app touches no database and reads no setting; ``PSEUDOZONE_HOME`` is read per request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from pseudozone.rights.api import create_app


class PseudozoneRightsPlugin(AirflowPlugin):
    name = "pseudozone_rights"
    fastapi_apps = [  # noqa: RUF012 - the attribute AirflowPlugin defines
        {"app": create_app(), "url_prefix": "/pseudozone", "name": "pseudozone rights requests"},
    ]
