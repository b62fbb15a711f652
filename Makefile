# Two entry points a new user needs: `make run` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m event_sourcing.example

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) bench/bench_store.py

schema: $(STAMP)
	$(VENV)/bin/mlevents schema --markdown docs/event-catalog.md --json-dir docs/schemas

clean:
	rm -rf $(VENV) .mlevents .pytest_cache .mypy_cache .ruff_cache
