# The two commands: `make run` and `make test` (both install first).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Real engines for the test suite (override to use other databases/instances).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/mailadmin
TEST_REDIS_URL ?= redis://127.0.0.1:6379
TEST_REDIS_DB ?= 0
TEST_SECRET_KEY := test-secret-key-not-for-production-0123456789abcdef
PYTEST_ARGS ?=

.PHONY: install run test lint format lock clean

install: $(STAMP)

$(STAMP): requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-virtualenv -r requirements.lock
	@touch $(STAMP)

run: install
	DEBUG=1 $(BIN)/python manage.py migrate --noinput
	DEBUG=1 $(BIN)/python manage.py bootstrap
	DEBUG=1 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

test: install
	DATABASE_URL=$(TEST_DATABASE_URL) \
	CELERY_BROKER_URL=$(TEST_REDIS_URL)/$(TEST_REDIS_DB) \
	CACHE_URL=$(TEST_REDIS_URL)/$$(( $(TEST_REDIS_DB) + 1 )) \
	SECRET_KEY=$(TEST_SECRET_KEY) \
	$(BIN)/pytest $(PYTEST_ARGS)
	@echo "--- embedded defaults (SQLite + filesystem broker), the configuration make run uses ---"
	env -u DATABASE_URL -u CELERY_BROKER_URL -u CACHE_URL \
	VAR_DIR=$(CURDIR)/var/test-embedded SECRET_KEY=$(TEST_SECRET_KEY) \
	$(BIN)/pytest -m embedded $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-resolve the pinned dependency tree from requirements.in + requirements-dev.in.
lock:
	rm -rf /tmp/mailadmin-lock && $(PYTHON) -m venv /tmp/mailadmin-lock
	/tmp/mailadmin-lock/bin/pip install --quiet -r requirements.in -r requirements-dev.in
	/tmp/mailadmin-lock/bin/pip freeze --exclude-editable > requirements.lock

clean:
	rm -rf $(VENV) var/test-embedded
