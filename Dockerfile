# pseudozone's Airflow image (docker-compose.yaml; docs/adr/0016-distributed-deployment.md).
# Python 3.11 and exactly the packages of uv.lock: the project, Airflow 3.3.2 and the
# 'deploy' group (the Celery provider). Nothing is fetched but packages from the package
# index. No key, password or .env is in the image: the compose file gives them at run time
# (the master key as a Docker secret under /run/secrets/).
FROM python:3.11-slim-bookworm

ARG UV_VERSION=0.13.9
ARG AIRFLOW_UID=50000

ENV PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow \
    UV_PROJECT_ENVIRONMENT=/opt/pseudozone/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    PATH=/opt/pseudozone/venv/bin:$PATH

# uv from the package index, pinned as in the Makefile's bootstrap
RUN python -m pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"

# the runtime user; compose runs the containers as ${AIRFLOW_UID}:0, so what it writes is
# group 0 and owned by that uid (airflow-init chowns the volumes to it)
RUN useradd --uid "${AIRFLOW_UID}" --gid 0 --home-dir /opt/airflow --no-create-home \
        --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/dags /opt/airflow/plugins /opt/airflow/logs /opt/airflow/auth \
        /srv/pseudozone/data /srv/pseudozone/keys \
    && touch /opt/airflow/airflow.cfg \
    && chown -R airflow:0 /opt/airflow /srv/pseudozone \
    && chmod -R g+rwX /opt/airflow \
    && chmod 0700 /srv/pseudozone/data /srv/pseudozone/keys /opt/airflow/auth

WORKDIR /opt/pseudozone
# the locked dependencies first (a layer that changes only with uv.lock), then the project
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --group deploy --no-install-project --compile-bytecode
COPY README.md ./
COPY include/ include/
RUN uv sync --frozen --no-dev --group deploy --no-editable --compile-bytecode

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

USER airflow
WORKDIR /opt/airflow
EXPOSE 8080
CMD ["airflow", "version"]
