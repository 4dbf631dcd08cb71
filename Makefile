# Evalsite: `make run` (installs, migrates, loads the demo, starts worker + web) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HTMX := static/vendor/htmx.min.js
PYTEST_ARGS ?=

.PHONY: run test install static chromium bench clean

# The local demo runs with DEBUG on (known demo passwords, a development key); a deployment leaves
# it off and sets SECRET_KEY and ALLOWED_HOSTS (README: Deployment).
run: export DEBUG ?= 1
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py load_demo
	$(BIN)/python manage.py runall

install: $(STAMP) $(HTMX)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[ml,crowd,s3,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

static: $(HTMX)

$(HTMX): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js $(HTMX)

# Browser tests drive Debian's chromium through Playwright; never `playwright install`.
chromium:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Install Debian's chromium (sudo apt-get install chromium) for the browser tests" >&2; exit 1; fi; }

# The suite runs with DEBUG off, as a deployment does; evalsite/test_settings.py (pytest's settings
# module) generates a strong SECRET_KEY for the run unless the environment has one.
test: install chromium
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EVALSITE_VAR_DIR=$(CURDIR)/var/test EVALSITE_QUEUE_PREFIX=test- \
	  $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/ratings_bench.py

clean:
	rm -rf var/test .pytest_cache
