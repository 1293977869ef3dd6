# A newcomer needs only python3: every target bootstraps .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-fast lint bench venv clean whiteboard-js

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Sparkplug B codec of the MQTT bridge: --no-deps, see pyproject.toml (fleet).
	$(BIN)/pip install -q --no-deps 'pysparkplug==0.6.1'
	touch $(STAMP)

venv: $(STAMP)

## demo: the embedded homeserver, devices, a dashboard and a whiteboard (Ctrl-C stops all)
demo: $(STAMP)
	$(BIN)/mxsync demo

## test: the whole suite against a real Synapse started by the tests
test: $(STAMP)
	scripts/ensure-system-packages
	$(BIN)/python -m pytest -q -p no:cacheprovider

## test-fast: every unit test (no server, seconds)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

lint: $(STAMP)
	$(BIN)/ruff check mxsync tests bench examples
	$(BIN)/mypy mxsync

## bench: every benchmark against a fresh devserver (BENCH_ARGS="--quick --json FILE")
bench: $(STAMP)
	scripts/ensure-system-packages
	$(BIN)/python -m bench $(BENCH_ARGS)

## whiteboard-js: rebuild the whiteboard page's bundle (npm yjs + y-websocket, esbuild)
whiteboard-js: $(STAMP)
	$(BIN)/python -m examples.whiteboard.build

clean:
	rm -rf $(VENV) .mxsync .pytest_cache
