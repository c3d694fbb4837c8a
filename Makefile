PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH ?=
# The installer of the lock files (the same version as in them).
UV_VERSION := 0.13.9

.PHONY: install lock dev test demo bench lint format clean

install: $(STAMP)

# The Makefile too: a change to how the environment is installed (its bytecode compiled, say)
# reaches an existing .venv.
$(STAMP): pyproject.toml requirements-dev.lock Makefile
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	@echo "== creating $(VENV): uv, then the locked dependencies (requirements-dev.lock), then waflow"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar on "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes --compile-bytecode \
		-r requirements-dev.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@touch $(STAMP)

# Re-resolve the lock files from pyproject.toml (production's, and development's with the
# `local` and `dev` extras); commit both.
lock: install
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes --no-header \
		--annotation-style line --upgrade -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra local --extra dev --python-version 3.11 \
		--generate-hashes --no-header --annotation-style line --upgrade -o requirements-dev.lock

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
