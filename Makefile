# Entry points: `make run` (the Dagster UI), `make demo` (the same story headless), `make test`.
# Each creates .venv and installs the project first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` settings: the UI's port, Dagster's home (runs, logs, landing folder, event store)
# and the instance config copied into it (dagster.postgres.yaml: Dagster's storage on PostgreSQL).
PORT ?= 3000
DAGSTER_HOME_DIR ?= dagster_home
DAGSTER_YAML ?= dagster.sqlite.yaml

.PHONY: run demo batch test lint bench bench-scale schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines.demo serve --home $(DAGSTER_HOME_DIR) --port $(PORT) --instance $(DAGSTER_YAML)

demo: $(STAMP)
	$(PY) -m pipelines.demo demo

# Drop a new batch into `make run`'s landing folder (DRIFTED=1: one with concept drift).
batch: $(STAMP)
	$(PY) -m pipelines.demo batch --home $(DAGSTER_HOME_DIR) $(if $(DRIFTED),--drifted)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_store.py

# Reads, projections and provenance at 100k and 1M events (EVENTS=... for another size).
EVENTS ?= 1000000
bench-scale: $(STAMP)
	$(PY) bench/bench_scale.py --events $(EVENTS)

schema: $(STAMP)
	$(VENV)/bin/mlevents schema --markdown docs/event-catalog.md --json-dir docs/schemas

clean:
	rm -rf $(VENV) .mlevents $(DAGSTER_HOME_DIR) .pytest_cache .mypy_cache .ruff_cache
