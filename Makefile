# pseudozone: every target the README names.  Only Python 3.11+ (with its venv module) and
# make are needed: when uv is not on PATH it is installed, pinned, into a venv of its own
# (.venv-bootstrap/), never with the system's pip (Debian refuses that: PEP 668).
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
BOOTSTRAP := $(CURDIR)/.venv-bootstrap
UV := $(shell command -v uv 2>/dev/null)
UV_DEP :=
ifeq ($(UV),)
UV := $(BOOTSTRAP)/bin/uv
UV_DEP := $(UV)
endif
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

export PSEUDOZONE_HOME ?= $(CURDIR)/data
DEMO_EVENTS ?= 200000
BENCH_EVENTS ?= 1000000

# Airflow on the embedded default: SQLite metadata DB under .airflow/, this repo's DAGs.
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__LOGGING__LOGGING_LEVEL=INFO

.PHONY: install demo test test-integration lint unit bench clean

$(BOOTSTRAP)/bin/uv:
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock $(UV_DEP)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

install: $(VENV)/.installed

# the integration tier adds the dependency group 'deploy' (the Celery provider, as the image has it);
# redone after every plain install, whose exact sync removes it again
$(VENV)/.installed-deploy: $(VENV)/.installed
	$(UV) sync --frozen --compile-bytecode --group deploy
	@touch $@

demo: install
	$(BIN)/pseudozone generate --events $(DEMO_EVENTS)
	@mkdir -p $(CURDIR)/.airflow
	@echo "airflow db migrate (SQLite under .airflow/)"
	@$(AIRFLOW_ENV) $(BIN)/airflow db migrate > $(CURDIR)/.airflow/migrate.log 2>&1 \
		|| { tail -50 $(CURDIR)/.airflow/migrate.log; exit 1; }
	@echo "airflow dags test pseudonymize_ingested (log: .airflow/demo-run.log)"
	@$(AIRFLOW_ENV) $(BIN)/airflow dags test pseudonymize_ingested > $(CURDIR)/.airflow/demo-run.log 2>&1 \
		|| { tail -50 $(CURDIR)/.airflow/demo-run.log; exit 1; }
	@grep -oE "DagRun Finished: dag_id=[a-z_]+|run_duration=[0-9.]+|, state=[a-z]+" \
		$(CURDIR)/.airflow/demo-run.log | tr -d ',' | tr '\n' ' '; echo
	@echo
	$(BIN)/pseudozone status
	@echo
	$(BIN)/pseudozone query "SELECT tenant_id, event_name, count(*) AS events, \
		count(DISTINCT subject_id) AS subjects, count(DISTINCT ip_prefix) AS networks \
		FROM events GROUP BY ALL ORDER BY tenant_id, events DESC LIMIT 9"
	@echo
	@echo "airflow dags test nightly_compliance (log: .airflow/demo-nightly.log)"
	@$(AIRFLOW_ENV) $(BIN)/airflow dags test nightly_compliance > $(CURDIR)/.airflow/demo-nightly.log 2>&1 \
		|| { tail -50 $(CURDIR)/.airflow/demo-nightly.log; exit 1; }
	$(BIN)/pseudozone report

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit tests/integration

test: lint
	$(BIN)/pytest -q

# tests/system: PostgreSQL, Redis, Airflow's API server, scheduler and DAG processor and two Celery
# workers as processes on loopback (README, "Integration tier"); needs Debian's postgresql and
# redis-server, which .ci/run installs
test-integration: $(VENV)/.installed-deploy
	PSEUDOZONE_SYSTEM_TESTS=1 $(BIN)/pytest -q tests/system

bench: install
	$(BIN)/python bench/bench_ingest.py --events $(BENCH_EVENTS)
	$(BIN)/python bench/bench_ingest_s3.py --events $(BENCH_EVENTS)
	$(BIN)/python bench/bench_rights.py --events $(BENCH_EVENTS)
	$(BIN)/python bench/bench_rotation.py --events $(BENCH_EVENTS)
	$(BIN)/python bench/bench_validation.py --events $(BENCH_EVENTS)
	$(BIN)/python bench/bench_detection.py
	$(BIN)/python bench/bench_compaction.py --events $(BENCH_EVENTS) --days 365 --batches 24

clean:
	rm -rf $(CURDIR)/data $(CURDIR)/data.keys $(CURDIR)/.airflow bench/out
