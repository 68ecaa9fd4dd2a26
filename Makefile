# The README's two commands are `make demo` and `make test`; everything else here serves them.
# Both work on a fresh clone: they create .venv, install the package and its dev tools, and (for
# the tests) the pinned reference client from the npm registry.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/interop/node_modules/.wafleet-installed

.PHONY: demo test check lint typecheck contracts pytest install interop protos bench clean

demo: $(STAMP)
	$(BIN)/wafleet demo

test: check

check: lint typecheck contracts pytest

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wafleet needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

$(NODE_STAMP): tests/interop/package.json tests/interop/package-lock.json
	cd tests/interop && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

interop: $(NODE_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

protos: $(STAMP)
	$(BIN)/python tests/tools/gen_protos.py

pytest: $(STAMP) $(NODE_STAMP)
	WAFLEET_REQUIRE_SERVICES=$${WAFLEET_REQUIRE_SERVICES:-1} $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m tests.benchmarks

clean:
	rm -rf $(VENV) tests/interop/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
