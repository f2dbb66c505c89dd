# Set-up and entry points. Every target installs into .venv (reused while it is
# up to date with requirements.txt and pyproject.toml).
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv repro test test-quick bench

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python -m pytest -q tests

test-quick: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/metrics.py
