# The project's commands. Each target creates .venv when it is missing or older than
# pyproject.toml, installs the project (with the dask and postgres extras) and its dev dependency group
# (PEP 735; pip >= 25.1, hence the pip upgrade first), then runs.
# `make VENV=.venv-3.12 PYTHON=python3.12 suite` uses another interpreter (see `matrix`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# mkdocs and Material print banners about their own future on every build; they say
# nothing about this site.
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

.PHONY: test demo lint typecheck unit suite docs smoke matrix bench soak mutation clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rh_agents needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --group dev -e '.[dask,postgres]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check rh_agents tests examples bench tools
	$(BIN)/ruff format --check rh_agents tools

# rh_agents/ with mypy --strict; the code users copy (examples/ and the README's python
# blocks) with plain mypy, as a user runs it; the public API's type completeness
# (pyright --verifytypes, at least 95 %).
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/python tools/typecheck_user_code.py
	$(BIN)/python tools/type_completeness.py --minimum 95

# coverage starts before pytest so the rh_agents pytest plugin's early import is measured.
unit: $(STAMP)
	rm -f .coverage .coverage.*
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

# The whole suite without coverage (what `make matrix` runs on each interpreter).
suite: $(STAMP)
	$(BIN)/pytest

# The API reference and guides (mkdocs.yml) into site/, not committed. --strict: a broken
# link, a missing reference or a docstring the parser does not understand fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --clean --site-dir site

test: lint typecheck docs unit

# The wheel as a user installs it (tools/smoke.py): built from this tree and installed
# alone (with its declared dependencies, no extras) in a fresh venv, $(VENV)-wheel; every
# public module imports from it, py.typed and both entry points are there. Then pytest
# joins it and the pytest plugin's fixture works in a test.
SMOKE_PY := cd / && $(CURDIR)/$(VENV)-wheel/bin/python
smoke: $(STAMP)
	rm -rf $(VENV)/dist
	$(BIN)/python -m build --wheel --no-isolation --outdir $(VENV)/dist . >/dev/null
	$(PYTHON) -m venv --clear $(VENV)-wheel
	$(SMOKE_PY) -m pip install --quiet --upgrade pip
	$(SMOKE_PY) -m pip install --quiet $(CURDIR)/$(VENV)/dist/*.whl
	$(SMOKE_PY) -I $(CURDIR)/tools/smoke.py
	$(SMOKE_PY) -m pip install --quiet pytest
	$(SMOKE_PY) -I $(CURDIR)/tools/smoke.py --pytest

# The suite and the wheel smoke check on every interpreter from 3.11 up found on PATH
# (python3.11, python3.12, ...) or under ~/.pyenv/versions, one per minor version, each
# in its own .venv-X.Y. MATRIX_ARGS=--skip-default leaves out the version of $(PYTHON)
# (which `make test` covers, as in .ci/run).
MATRIX_ARGS ?=
matrix:
	$(PYTHON) tools/matrix.py $(MATRIX_ARGS)

demo: $(STAMP)
	$(BIN)/python -m rh_agents.demo

soak: $(STAMP)
	$(BIN)/pytest -m soak -s

# Mutation testing of the core (docs/testing.md): a score per module, each module's
# mutants against its own tests. Not part of `make test` (about an hour for all of
# them); MUTATION_ARGS="retry --survivors" runs one module and lists what survived.
MUTATION_ARGS ?=
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py $(MUTATION_ARGS)

# Benchmarks (docs/performance.md) in their own environment, bench/.venv: the project plus
# the bench-only competitors of bench/requirements.txt. Writes bench/results.md and .json.
# `make bench BENCH_ARGS=--quick` runs in under a minute.
BENCH_VENV := bench/.venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[postgres]' -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-* site .mutation .rh_agents .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
