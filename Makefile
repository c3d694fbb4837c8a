PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH ?=

.PHONY: install dev test demo bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(STAMP)

dev: install
	$(BIN)/waflow dev

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

demo: install
	$(BIN)/waflow demo

bench: install
	$(BIN)/python -m tests.bench $(BENCH)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) .state .bench .pytest_cache .ruff_cache *.egg-info
