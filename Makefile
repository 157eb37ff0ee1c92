# Every command in the README runs through here. Each target installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
export DAGSTER_HOME ?= $(CURDIR)/.forecast_data/dagster_home

.PHONY: install instance demo ui backfill test check lint typecheck pytest postgres bench bench-real-load clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

# The instance's settings (run queue, SageMaker pools) come from instance/dagster.yaml. Not from
# the repo root: `dagster dev` runs there and would warn that a dagster.yaml in its working
# directory "will not be used", DAGSTER_HOME being elsewhere.
INSTANCE_TEMPLATE := instance/dagster.yaml

instance: $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: $(INSTANCE_TEMPLATE)
	mkdir -p "$(DAGSTER_HOME)"
	cp $(INSTANCE_TEMPLATE) "$@"

## demo: demo data for 5 customers, then the whole graph for each (no AWS account needed)
demo: install instance
	$(PY) -m forecast_assets.demo

## ui: the Dagster UI (and daemon) on the same data and instance as `make demo`
ui: install instance
	$(VENV)/bin/dagster dev -w workspace.yaml

## backfill: every customer through the daemon, as the UI's backfill (BACKFILL_ARGS=...)
backfill: install instance
	bash scripts/backfill.sh $(BACKFILL_ARGS)

## test: lint, type check, then every test (PostgreSQL is installed if it is missing)
test: check postgres pytest

check: lint typecheck

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy forecast_assets resources containers

pytest: install
	$(PY) -m pytest $(PYTEST_ARGS)

postgres:
	bash scripts/ensure_postgres.sh

## bench: the measurements in benchmarks/README.md
bench: install
	$(PY) -m benchmarks.run

## bench-real-load: published forecasts of real load against seasonal naive, 12 origins (about 55 min)
bench-real-load: install
	nice -n 10 $(PY) -m benchmarks.run --only real_load --real-origins 12 --output benchmarks/real_load_results.json $(BENCH_ARGS)

clean:
	rm -rf .forecast_data

.PHONY: wheelhouse images

## wheelhouse: wheels of what SageMaker's prebuilt image lacks, for its Python (needs PyPI once)
wheelhouse: install
	$(PY) scripts/build_wheelhouse.py

## images: build containers/<job>/Dockerfile and push to ECR (ECR_REGISTRY=..., PUSH=0 builds only)
images:
	bash scripts/build_images.sh $(IMAGE_JOBS)
