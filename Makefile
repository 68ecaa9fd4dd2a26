# The README's two commands are `make demo` and `make test`; everything else here serves them.
# Both work on a fresh clone: they create .venv, install the package and its dev tools, and (for
# the tests) the pinned reference client from the npm registry.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/interop/node_modules/.wafleet-installed
# The admin page's browser test drives Debian's Chromium through its chromedriver (no browser
# download): installed from the distribution when missing and we are root.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver

.PHONY: demo test check lint typecheck contracts pytest install interop browser protos bench clean

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

# Not root, or no apt-get: nothing is installed here, and tests/services.py's rule decides (a
# missing browser fails under WAFLEET_REQUIRE_SERVICES=1, is skipped otherwise).
browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (the admin page's browser test)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	      || echo "warning: installing chromium chromium-driver failed" >&2; \
	  else \
	    echo "warning: $(CHROMIUM) or $(CHROMEDRIVER) missing; install chromium chromium-driver" >&2; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

protos: $(STAMP)
	$(BIN)/python tests/tools/gen_protos.py

pytest: $(STAMP) $(NODE_STAMP) browser
	WAFLEET_REQUIRE_SERVICES=$${WAFLEET_REQUIRE_SERVICES:-1} $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m tests.benchmarks

clean:
	rm -rf $(VENV) tests/interop/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
