# The project's commands. Each target creates .venv when it is missing or older than
# pyproject.toml, installs the project with its dev extra, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit bench soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rh_agents needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rh_agents tests examples bench
	$(BIN)/ruff format --check rh_agents

typecheck: $(STAMP)
	$(BIN)/mypy

# coverage starts before pytest so the rh_agents pytest plugin's early import is measured.
unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python -m rh_agents.demo

soak: $(STAMP)
	$(BIN)/pytest -m soak -s

# Benchmarks (docs/performance.md) in their own environment, bench/.venv: the project plus
# the bench-only competitors of bench/requirements.txt. Writes bench/results.md and .json.
# `make bench BENCH_ARGS=--quick` runs in under a minute.
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .rh_agents .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
