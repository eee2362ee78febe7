# dcca_jax: `make run` (main job) and `make test` work on a fresh clone; the venv is created when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_VENV ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
WORKDIR ?= runs/default
PYTEST_FLAGS ?=

.PHONY: install run test test-slow test-all bench bench-scale bench-semantic bench-finetune bench-pipeline corel5k-finetune corel5k-levers \
	accelerator-check accelerator-check-tiny clean

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

# Peers (scikit-learn, cca-zoo, torch CPU, the TFLite interpreter) live only in .venv-bench.
# Benchmarks that read Corel5k/MNIST/MobileNetV2 expect ../shared (or $$DCCA_SHARED). Each writes <name>.json and
# .md under --workdir.
BENCH_PY := $(BENCH_VENV)/bin/python
bench: $(BENCH_STAMP)
	$(BENCH_PY) experiments/bench/cca.py --workdir=results/bench
	$(BENCH_PY) experiments/bench/kcca.py --n=5000 --workdir=results/bench
	$(BENCH_PY) experiments/bench/dcca.py --workdir=results/bench
	$(BENCH_PY) experiments/bench/extract.py --workdir=results/bench
	$(BENCH_PY) experiments/bench/topk.py --workdir=results/bench
	$(BENCH_PY) experiments/bench/scale.py --workdir=results/bench/quick --cca_sizes=10000,100000 \
	  --kcca_sizes=5000,20000 --kcca_stream_sizes=5000,20000 --dcca_sizes=10000,30000 --repeats=1
	$(BENCH_PY) experiments/bench/pipeline_models.py --config=experiments/configs/default.py --workdir=$(WORKDIR)

# The full cost-against-n table (n up to 1M; about 30 minutes on 2 cores).
bench-scale: $(BENCH_STAMP)
	$(BENCH_PY) experiments/bench/scale.py --workdir=results/bench

bench-semantic: $(BENCH_STAMP)
	$(BENCH_PY) experiments/bench/semantic_view.py --shared=../shared --cache=runs/cache --workdir=results/bench
	$(BENCH_PY) experiments/bench/synthetic.py --shared=../shared --data=runs/synthetic --cache=runs/cache --workdir=results/bench

# The whole Corel5k pipeline (experiments/pipeline.py) in a fresh workdir: wall clock, seconds per stage, load
# average; writes results/bench/pipeline.json and .md. Needs ../shared; no peer packages (the normal venv).
# BENCH_PIPELINE_FLAGS e.g. --before=results/bench/pipeline_before.json (a "before" column) or
# --name=pipeline_before --label=before --config.visual.engine=jax; --xla_cache=runs/xla_cache keeps XLA's
# compilations between runs (jax's JAX_COMPILATION_CACHE_DIR; the record says cold or warm).
BENCH_PIPELINE_FLAGS ?=
bench-pipeline: install
	PYTHONPATH=$(CURDIR) $(BIN)/python experiments/bench/pipeline.py --config=experiments/configs/corel5k.py \
	  --config.data.root=../shared/data/corel5k --out_dir=results/bench $(BENCH_PIPELINE_FLAGS)

# DCCA from pixels (MobileNetV2 fine-tuned in the visual tower): epoch timing, and the 3-seed Corel5k study
# (about 22 minutes on 2 cores). Both need ../shared (Corel5k and the MobileNetV2 TFLite file).
bench-finetune: install
	$(BIN)/python experiments/bench/finetune.py --workdir=results/corel5k_finetune

corel5k-finetune: install
	$(BIN)/python experiments/finetune_corel5k.py --config=experiments/configs/finetune_corel5k.py \
	  --workdir=runs/corel5k_finetune

corel5k-levers: install
	$(BIN)/python experiments/feature_levers.py --config=experiments/configs/feature_levers.py \
	  --workdir=runs/corel5k_levers

# On a GPU/TPU machine: correctness and speed checks, each capped, about 8 minutes in all; writes
# results/accelerator/<device>.json and .md. ACCEL_FLAGS e.g. --wheels=DIR (offline jax install), --only=a,b.
ACCEL_FLAGS ?=
accelerator-check: install
	PYTHONPATH=$(CURDIR) $(BIN)/python experiments/accelerator_check.py --out_dir=results/accelerator $(ACCEL_FLAGS)

# The same checks at small sizes on the CPU (about a minute; tests/experiments/test_accelerator_check.py runs it).
accelerator-check-tiny: install
	PYTHONPATH=$(CURDIR) $(BIN)/python experiments/accelerator_check.py --tiny --out_dir=results/accelerator $(ACCEL_FLAGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) runs
