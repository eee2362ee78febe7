# dcca_jax: `make run` (main job) and `make test` work on a fresh clone; the venv is created when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
WORKDIR ?= runs/default
PYTEST_FLAGS ?=

.PHONY: install run test test-slow test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python experiments/pipeline.py --config=experiments/configs/default.py --workdir=$(WORKDIR)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_FLAGS)

test-all: install
	$(BIN)/python -m pytest -q -m 'slow or not slow' $(PYTEST_FLAGS)

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	mkdir -p results/bench
	$(BENCH_VENV)/bin/python experiments/bench_cca.py --out=results/bench/cca.json

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs
