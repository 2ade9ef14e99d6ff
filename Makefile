# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast test-no-browser install browser

install: $(STAMP)

# pip (not uv) so torch==2.13.0 comes from the CPU wheel on this machine's disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# `make serve PORT=8080 HOST=0.0.0.0`: either may be left out (then FERRYMAN_PORT / FERRYMAN_HOST, else the defaults).
serve: $(STAMP)
	$(BIN)/ferryman serve $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

# The admin page's tests drive Debian's chromium (playwright's own browser download cannot work offline).
# Say so before apt-get pulls chromium and its ~125 dependencies into the system.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || ( \
	  echo "make test: installing Debian's chromium (and the packages it needs) with apt-get, for the admin page's browser tests; skip with 'make test-no-browser'"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the admin page's browser tests will skip"

test: $(STAMP) browser
	$(BIN)/python -m pytest

# Before every commit, in about 90 s: everything but the tests marked slow, the browser's and those that need
# PostgreSQL (most billing tests also run on SQLite; those stay). Markers: pyproject.toml, tests/conftest.py.
# `make test` still runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser and not postgres"

test-no-browser: $(STAMP)
	$(BIN)/python -m pytest -m "not browser"
