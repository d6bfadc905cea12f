# One command per intent, the same locally and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint rotate-keys bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/issuer init
	@$(BIN)/python -m issuer.quickstart
	$(BIN)/issuer serve

# The whole suite, as CI runs it.
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: no live servers, no PostgreSQL, on every core.
test-fast: install
	$(BIN)/python -m pytest -m "not e2e and not postgres" -n auto -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check issuer tests
	$(BIN)/ruff format --check issuer tests
	$(BIN)/mypy
	$(BIN)/lint-imports

rotate-keys: install
	$(BIN)/issuer keys rotate $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
