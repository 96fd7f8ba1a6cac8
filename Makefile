# `make demo`: set up and run the main job on the embedded default (CPU, local Ray, no network).
# `make test`: set up and run the CPU test suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo run test test-slow clean

$(STAMP): pyproject.toml .ci/constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c .ci/constraints-cpu.txt -e ".[test,data]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/nabla-dist demo

run: demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
