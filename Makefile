# The two commands a newcomer runs: `make demo` and `make test`. Each sets up what it needs.
# `make check` is the developers' inner loop: lint, types and the tests not marked `slow`
# (a test taking 2 s or more is marked `slow`).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACK := models/buffalo_sc/manifest.json

.PHONY: setup system-deps test check lint demo bench clean

setup: $(STAMP) $(PACK)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV)
	touch $(STAMP)

$(PACK): $(STAMP)
	@echo "==> installing the default model pack into models/ (python -m agent models install-default)"
	$(PY) -m agent models install-default

system-deps:
	@echo "==> checking the Debian packages the tests and the demo start (Mosquitto, GStreamer's RTSP server, Chromium)"
	bash scripts/system-deps.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup system-deps lint
	$(PY) -m pytest

check: setup system-deps lint
	$(PY) -m pytest -m "not slow"

demo: setup system-deps
	$(PY) -m agent demo

bench: setup
	$(PY) bench/engine_vs_naive.py

clean:
	rm -rf $(VENV) models/buffalo_sc .pytest_cache .mypy_cache .ruff_cache
