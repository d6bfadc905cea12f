# One command per intent, the same locally and in CI.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint rotate-keys bench clean

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

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check issuer tests
	$(BIN)/ruff format --check issuer tests
	$(BIN)/mypy
	$(BIN)/lint-imports

rotate-keys: install
	$(BIN)/issuer keys rotate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
