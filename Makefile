# The two commands of the README: `make demo` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= $(shell scripts/find-python.sh)
VENV ?= .venv
VENV52 ?= .venv-django52
VENV60 ?= .venv-django60
PY := $(VENV)/bin/python
PY52 := $(VENV52)/bin/python
PY60 := $(VENV60)/bin/python
PYTHON52 ?= $(shell command -v python3.11 || echo python3)

.PHONY: venv build demo test test-rust test-python test-django52 test-django60 lint typecheck bench bench-quick bench-enqueue clean

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Builds the Rust extension (release) into the venv, editable.
build: venv
	scripts/ensure-system-deps.sh
	$(VENV)/bin/maturin develop --release --quiet

demo: build
	cd examples && ../$(PY) run_demo.py

test: build test-rust test-python

test-rust:
	scripts/ensure-system-deps.sh
	cargo test --workspace --exclude fasttasks-py

# pytest on SQLite, then on PostgreSQL (required under CI=true, skipped with a warning otherwise).
test-python: build
	FASTTASKS_TEST_DB=sqlite $(PY) -m pytest
	FASTTASKS_TEST_DB=postgres $(PY) -m pytest

$(VENV52)/.installed: requirements-django52.txt
	$(PYTHON52) -m venv $(VENV52)
	$(PY52) -m pip install --quiet --upgrade pip
	$(PY52) -m pip install --quiet -r requirements-django52.txt
	touch $@

# The same suite on Django 5.2 LTS + the django-tasks backport.
test-django52: $(VENV52)/.installed
	scripts/ensure-system-deps.sh
	VIRTUAL_ENV=$(abspath $(VENV52)) $(VENV52)/bin/maturin develop --release --quiet
	FASTTASKS_TEST_DB=sqlite $(PY52) -m pytest
	FASTTASKS_TEST_DB=postgres $(PY52) -m pytest

$(VENV60)/.installed: requirements-django60.txt
	$(PYTHON) -m venv $(VENV60)
	$(PY60) -m pip install --quiet --upgrade pip
	$(PY60) -m pip install --quiet -r requirements-django60.txt
	touch $@

# The same suite on Django 6.0, whose @task takes no extra options (fasttasks.task does).
test-django60: $(VENV60)/.installed
	scripts/ensure-system-deps.sh
	VIRTUAL_ENV=$(abspath $(VENV60)) $(VENV60)/bin/maturin develop --release --quiet
	FASTTASKS_TEST_DB=sqlite $(PY60) -m pytest
	FASTTASKS_TEST_DB=postgres $(PY60) -m pytest

lint: venv
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples

typecheck: build
	$(VENV)/bin/mypy python/fasttasks

# The benchmark suite (benches/run.py; scenarios S1-S6, idle, R1, ceiling), fasttasks vs django-tasks-db on
# SQLite and PostgreSQL in the same run, median of 3 (~45 min); appends to benches/RESULTS.md, raw JSON in
# benches/out/. Extra arguments: make bench BENCH_ARGS='--scenarios S1,S3 --worker-args "--concurrency 64"'
# R1 (database faults) restarts the local PostgreSQL cluster (pg_ctlcluster, or $BENCH_PG_RESTART) and
# terminates the bench databases' connections: run nothing else against that cluster meanwhile.
bench: build
	BENCH_MAKE_TARGET=bench $(PY) benches/run.py $(BENCH_ARGS)

# CI smoke run of the same: every scenario at tiny sizes, once, records nothing; fails if a scenario breaks
# (a wrong task count, a worker that fails). No timing is asserted. R1 is in it (~1 min, one PostgreSQL
# restart of ~3 s; skipped where pg_ctlcluster is missing, e.g. PostgreSQL in a container).
bench-quick: build
	BENCH_MAKE_TARGET=bench-quick $(PY) benches/run.py --quick $(BENCH_ARGS)

# Enqueue rates only (S2a single enqueue(), S2b aenqueue() x8 coroutines, S2c bulk); appends to RESULTS.md.
bench-enqueue: build
	BENCH_MAKE_TARGET=bench-enqueue $(PY) benches/run.py --scenarios S2a,S2b,S2c $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV52) $(VENV60) target
