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
	$(BIN)/ruff check issuer tests bench
	$(BIN)/ruff format --check issuer tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# Benchmark tooling (bench/, never part of `make test`): matplotlib and PyJWT from the
# `bench` extra (which `dev` includes), wrk from Debian. Results go to
# bench/results/<timestamp>/ (git-ignored); BENCH_* knobs in the README.
bench: install
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q wrk || { apt-get update -q && apt-get install -y -q wrk; }; \
	  else echo "make bench needs wrk: sudo apt-get install wrk" >&2; exit 2; fi; }
	$(BIN)/python -m bench.run

rotate-keys: install
	$(BIN)/issuer keys rotate $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
