# Flux: `make run` to try it, `make test` to check it. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
LOCK := requirements-dev.lock
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/flux
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV := SECRET_KEY=test-only-not-secret SECURE_SSL_REDIRECT=0 DEBUG=0
# The browser the end-to-end tests drive (Debian's package; `make test` installs it).
CHROMIUM ?= /usr/bin/chromium

# The first Python >= 3.12 on PATH (pyenv honours .python-version for plain python3).
BOOT_PYTHON := $(shell for c in python3.13 python3.12 python3 python; do \
	if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	echo $$c; break; fi; done)

.PHONY: help run test test-postgres test-sqlite lint lint-offline format lock services-check \
	chromium clean bench chaos

help:
	@echo "make run     set up and serve Flux at http://127.0.0.1:$(PORT) (SQLite, no services needed)"
	@echo "make test    run the whole suite against PostgreSQL and Redis, then the SQLite guards"
	@echo "             (installs Chromium for the browser tests when it is missing and it can)"
	@echo "make lint    ruff check, ruff format --check, mypy, pip-audit of the lock files"
	@echo "make lint-offline   the same without pip-audit (no network): what CI runs"
	@echo "make lock    re-resolve requirements*.lock from pyproject.toml"

$(VENV)/.installed: $(LOCK)
	@if [ -z "$(BOOT_PYTHON)" ]; then \
		echo "Flux needs Python 3.12 or newer (3.13 recommended); none was found on PATH." >&2; \
		echo "Install it (e.g. 'pyenv install 3.13') and run make again." >&2; exit 1; fi
	@if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
		rm -rf $(VENV); echo "Creating $(VENV) with $$($(BOOT_PYTHON) --version)"; \
		$(BOOT_PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	@touch $@

run: $(VENV)/.installed
	@mkdir -p var
	DEBUG=1 $(PY) manage.py migrate --noinput -v0
	DEBUG=1 $(PY) manage.py seed_demo
	@echo
	@echo "  Flux is running at http://127.0.0.1:$(PORT)/  —  log in as demo / demo"
	@echo "  (admin at http://127.0.0.1:$(PORT)/admin/ with the same login; Ctrl-C stops)"
	@echo
	DEBUG=1 $(PY) -m uvicorn flux.asgi:application --host 127.0.0.1 --port $(PORT) \
		--reload $(foreach d,flux activity boards history delivery templates,--reload-dir $(d)) --reload-include '*.html' \
		--timeout-graceful-shutdown 2

services-check: $(VENV)/.installed
	@$(PY) -m flux.servicecheck "$(TEST_DATABASE_URL)" "$(TEST_REDIS_URL)"

# The end-to-end tests drive Chromium through Playwright, which cannot download its own
# browser everywhere: Debian's package is used. Installed here when missing (as root, with
# apt-get); otherwise one line says how, before anything runs.
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "Installing Chromium for the end-to-end tests (apt-get install chromium)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			{ apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || { \
				echo "Could not install Chromium with apt-get (see above). Install it and run make test again, or set CHROMIUM=/path/to/chromium." >&2; \
				exit 1; }; \
			[ -x "$(CHROMIUM)" ] || { echo "apt-get installed chromium, but not at $(CHROMIUM): set CHROMIUM to it." >&2; exit 1; }; \
		else \
			echo "The end-to-end tests need Chromium at $(CHROMIUM): install it (sudo apt-get install -y chromium, or run make test as root to have it installed) or set CHROMIUM=/path/to/chromium." >&2; \
			exit 1; \
		fi; \
	fi

test: services-check chromium
	@mkdir -p var
	@$(TEST_ENV) $(PY) manage.py collectstatic --noinput -v0
	$(TEST_ENV) CHROMIUM=$(CHROMIUM) DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)
	$(TEST_ENV) DATABASE_URL=sqlite:///var/test.sqlite3 REDIS_URL= $(PY) -m pytest -m sqlite $(PYTEST_ARGS)

# pip-audit checks every pinned version against the PyPI advisory database (network needed).
# Found vulnerabilities fail the lint. If the service cannot be reached, or does not answer for
# a package, nothing was audited: that is said plainly, and fails only with AUDIT_STRICT=1.
lint: lint-offline
	@for lock in requirements.lock requirements-dev.lock; do \
		out=$$($(VENV)/bin/pip-audit -r $$lock --require-hashes --disable-pip --strict \
			--progress-spinner off 2>&1); rc=$$?; \
		if [ $$rc -eq 0 ]; then echo "pip-audit $$lock: no known vulnerabilities"; \
		elif echo "$$out" | grep -q "known vulnerabilit"; then echo "$$out"; exit 1; \
		elif echo "$$out" | grep -qiE "could not be audited|connection|timed out|resolve"; then \
			echo "pip-audit $$lock: NOT AUDITED - the advisory service could not be reached or"; \
			echo "  did not answer for the pinned versions (network?):"; \
			echo "$$out" | grep -iE "error|could not" | head -3 | sed 's/^/    /'; \
			if [ -n "$(AUDIT_STRICT)" ]; then exit 1; fi; \
		else echo "$$out"; exit $$rc; fi; \
	done

# The lint checks that need no network: `make lint` without pip-audit. .ci/run runs these.
# mypy ([tool.mypy] in pyproject.toml) loads flux.settings through the django-stubs plugin,
# which needs a SECRET_KEY: TEST_ENV's.
lint-offline: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(TEST_ENV) $(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: $(VENV)/.installed
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.13 --generate-hashes -q -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --group dev --python-version 3.13 --generate-hashes -q -o requirements-dev.lock

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache .mypy_cache

# The benchmark harness (bench/): its own database, a production-like server, var/bench.json.
# QUICK=1 for a run under two minutes. BENCH_DATABASE_URL / BENCH_REDIS_URL override the defaults.
bench: $(VENV)/.installed
	@mkdir -p var
	$(PY) -m bench $(if $(filter 1,$(QUICK)),--quick,) $(BENCH_ARGS)

# Fault injection (chaos/): a private PostgreSQL cluster and Redis, uvicorn, Celery worker and
# beat; load, then Redis killed, PostgreSQL restarted, the worker SIGKILLed mid-rollup, two
# beats. Prints a table, writes var/chaos.json, fails on any FAIL. QUICK=1: about four minutes.
chaos: $(VENV)/.installed
	@mkdir -p var
	$(PY) -m chaos $(if $(filter 1,$(QUICK)),--quick,) $(CHAOS_ARGS)
