# fleetops: `make setup` once (idempotent), then `make test`, `make check`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export FLEETOPS_CACHE ?= $(HOME)/.cache/fleetops
# tests/deploy/test_wheel.py installs fleetops beside it: both must work
PROTO_PLUS := proto_plus-1.29.0-py3-none-any.whl

.PHONY: setup venv links binaries test check lint proto demo clean

setup: venv binaries

venv: $(VENV)/.installed links

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "make setup: could not create $(VENV); install python3-venv (apt-get install python3-venv)"; exit 1; }
	@$(BIN)/python -m pip install --quiet --upgrade pip || { \
	  echo "make setup: pip could not upgrade itself; check that PyPI is reachable"; exit 1; }
	@$(BIN)/python -m pip install --quiet -e '.[dev]' || { \
	  echo "make setup: installing the Python dependencies failed (see above); check that PyPI is reachable and rerun"; exit 1; }
	@mkdir -p $(FLEETOPS_CACHE)/wheels
	@test -s $(FLEETOPS_CACHE)/wheels/$(PROTO_PLUS) || $(BIN)/python -m pip download --quiet --no-deps \
	  --dest $(FLEETOPS_CACHE)/wheels 'proto-plus==1.29.0' || { \
	  echo "make setup: downloading proto-plus (for the wheel test) failed; check that PyPI is reachable"; exit 1; }
	@touch $@

# The wheel installs hub/, agent/, tui/ and proto/ as fleetops.hub and so on (pyproject.toml). In
# the checkout, build/ns/fleetops/ links to the folders and the venv puts build/ns on sys.path, so
# Python, mypy and import-linter all see the installed names while you edit the folders in place.
links: $(VENV)/.installed
	@mkdir -p build/ns/fleetops
	@for d in hub agent tui proto; do ln -sfn ../../../$$d build/ns/fleetops/$$d; done
	@$(BIN)/python -c 'import pathlib, site, sys; pathlib.Path(site.getsitepackages()[0], "fleetops-ns.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)/build/ns"

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
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .demo
