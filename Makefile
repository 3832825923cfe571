# fleetops: `make setup` once (idempotent), then `make test`, `make check`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FLEETOPS_CACHE ?= $(HOME)/.cache/fleetops

.PHONY: setup venv binaries test check lint proto demo clean

setup: venv binaries

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "make setup: could not create $(VENV); install python3-venv (apt-get install python3-venv)"; exit 1; }
	@$(BIN)/python -m pip install --quiet --upgrade pip || { \
	  echo "make setup: pip could not upgrade itself; check that PyPI is reachable"; exit 1; }
	@$(BIN)/python -m pip install --quiet -e '.[dev]' || { \
	  echo "make setup: installing the Python dependencies failed (see above); check that PyPI is reachable and rerun"; exit 1; }
	@touch $@

binaries:
	@deploy/local/build-binaries.sh

test: setup
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python proto/codegen.py --check

check: setup lint
	$(BIN)/pytest

proto: venv
	$(BIN)/python proto/codegen.py

# `make demo ARGS=--no-tui` runs headless; `ARGS="--contexts a,b,c"` uses your clusters.
demo:
	@deploy/demo/prereqs
	@$(MAKE) --no-print-directory setup
	@$(BIN)/python deploy/demo/demo.py $(ARGS)

clean:
	@if [ -e .demo/demo.pid ] && ! flock -n .demo/demo.pid true; then \
	  echo "make clean: a demo is running (pid $$(cat .demo/demo.pid)); stop it first"; exit 1; fi
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo
