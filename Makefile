# Entry points: `make run` (the Dagster UI), `make demo` (the same story headless), `make test`.
# Each creates .venv and installs the project first; `make test` also installs Debian's chromium
# for the UI test when it is missing (Playwright never downloads a browser).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make run` settings: the UI's port, Dagster's home (runs, logs, landing folder, event store)
# and the instance config copied into it (dagster.postgres.yaml: Dagster's storage on PostgreSQL).
PORT ?= 3000
DAGSTER_HOME_DIR ?= dagster_home
DAGSTER_YAML ?= dagster.sqlite.yaml
# The browser the Dagster UI test drives (tests/test_dagster_ui.py reads the same variable).
MLEVENTS_CHROMIUM ?= /usr/bin/chromium
export MLEVENTS_CHROMIUM
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run demo batch test lint bench bench-scale bench-storage bench-archive bench-archive-heads bench-import schema clean

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

$(MLEVENTS_CHROMIUM):
	@command -v apt-get >/dev/null || { echo "no $@ and no apt-get: install Chromium, then" \
	    "make test MLEVENTS_CHROMIUM=/path/to/chromium"; exit 1; }
	@echo "Installing Debian's chromium for the Dagster UI test"
	$(SUDO) apt-get update -qq </dev/null
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium </dev/null >/dev/null

test: $(STAMP) $(MLEVENTS_CHROMIUM)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/bench_store.py

# Reads, projections and provenance at 100k and 1M events (EVENTS=... for another size).
EVENTS ?= 1000000
bench-scale: $(STAMP)
	$(PY) bench/bench_scale.py --events $(EVENTS)

# Bytes on disk per event against payload+metadata, and each index's size and query.
bench-storage: $(STAMP)
	$(PY) bench/bench_storage.py

# What each read of archived history reads: buffers and client CPU (docs/archive.md).
bench-archive: $(STAMP)
	$(PY) bench/bench_archive.py

# What an append to a stream whose head is archived costs, against a hot head (docs/archive.md).
bench-archive-heads: $(STAMP)
	$(PY) bench/bench_archive_heads.py

# Bulk import against a raw COPY (PostgreSQL) / raw batched INSERTs (SQLite) of the same rows.
IMPORT_EVENTS ?= 100000
bench-import: $(STAMP)
	$(PY) bench/bench_import.py --events $(IMPORT_EVENTS)

schema: $(STAMP)
	$(VENV)/bin/mlevents schema --markdown docs/event-catalog.md --json-dir docs/schemas

clean:
	rm -rf $(VENV) .mlevents $(DAGSTER_HOME_DIR) .pytest_cache .mypy_cache .ruff_cache
