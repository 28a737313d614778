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

# The first Python >= 3.12 on PATH (pyenv honours .python-version for plain python3).
BOOT_PYTHON := $(shell for c in python3.13 python3.12 python3 python; do \
	if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	echo $$c; break; fi; done)

.PHONY: help run test test-postgres test-sqlite lint format lock services-check clean

help:
	@echo "make run     set up and serve Flux at http://127.0.0.1:$(PORT) (SQLite, no services needed)"
	@echo "make test    run the whole suite against PostgreSQL and Redis, then the SQLite guards"
	@echo "make lint    ruff check and ruff format --check"
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
	DEBUG=1 $(PY) manage.py runserver 127.0.0.1:$(PORT)

services-check: $(VENV)/.installed
	@$(PY) -m flux.servicecheck "$(TEST_DATABASE_URL)" "$(TEST_REDIS_URL)"

test: services-check
	@mkdir -p var
	@$(TEST_ENV) $(PY) manage.py collectstatic --noinput -v0
	$(TEST_ENV) DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(PY) -m pytest $(PYTEST_ARGS)
	$(TEST_ENV) DATABASE_URL=sqlite:///var/test.sqlite3 REDIS_URL= $(PY) -m pytest -m sqlite $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

lock: $(VENV)/.installed
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.13 --generate-hashes -q -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --group dev --python-version 3.13 --generate-hashes -q -o requirements-dev.lock

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache
