# make demo  - the portal with demo data on http://127.0.0.1:$(PORT) (embedded mode: SQLite, no services)
# make test  - the whole test suite (SQLite unless DATABASE_URL / REDIS_URL point at real services)
# make worker / make node-agent NODE=<name> / make beat - production processes (need DATABASE_URL, REDIS_URL, SECRET_KEY)

SHELL := /bin/bash
PORT ?= 8000
NODE ?= $(shell hostname)
VENV := .venv
PY := $(VENV)/bin/python

# Django 6 needs Python 3.12+: use the first such interpreter found (PATH, then pyenv's versions).
PYTHON ?= $(shell for p in python3.12 python3.13 python3.14 python3 $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python 2>/dev/null | sort -V); do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then command -v $$p; break; fi; done)

.PHONY: install demo test worker node-agent beat web check-python bench

check-python:
	@if [ -z "$(PYTHON)" ]; then echo "Python 3.12 or newer is required (Django 6). Set PYTHON=/path/to/python3.12." >&2; exit 1; fi

$(VENV)/.installed: pyproject.toml | check-python
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	@echo "Portal on http://127.0.0.1:$(PORT)/  (users: alice bob carol dave admin; password demo-pass-2026)"
	PORTAL_INPROCESS_BEAT=1 $(PY) manage.py runserver 127.0.0.1:$(PORT) --noreload

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# --- production processes ---
web: install
	$(PY) manage.py migrate --noinput
	STATIC_MANIFEST=1 $(PY) manage.py collectstatic --noinput -v 0
	@# Kernel and telemetry websocket frames are small: per-message compression costs more CPU and latency than it saves.
	STATIC_MANIFEST=1 $(VENV)/bin/uvicorn portal.asgi:application --host 0.0.0.0 --port $(PORT) --proxy-headers --workers $${WEB_WORKERS:-2} \
		--ws websockets-sansio --ws-per-message-deflate false

worker: install
	$(VENV)/bin/celery -A portal worker -Q default,scheduler -n scheduler@%h -l info

node-agent: install
	PORTAL_NODE_NAME=$(NODE) $(VENV)/bin/celery -A portal worker -Q node.$(NODE) -n node-$(NODE)@%h -l info

beat: install
	$(VENV)/bin/celery -A portal beat -l info --schedule .local/celerybeat-schedule

bench: install
	$(PY) bench/scheduler.py --seeds 10
	$(PY) bench/telemetry.py
	$(PY) bench/launch.py
