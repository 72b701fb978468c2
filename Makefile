# The index of what can be done here. `make help` lists it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)

.DEFAULT_GOAL := help
.PHONY: help venv test unit integration lint typecheck demo bench build deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt layers/common/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP) ## create .venv with the pinned dependencies (done by every target that needs it)

lint: $(STAMP) ## ruff (lint + format check), mypy --strict, cfn-lint with the serverless rules
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	@if [ -f template.yaml ]; then $(VENV)/bin/cfn-lint template.yaml -a cfn_lint_serverless.rules; fi

test: lint ## lint, type checks and every test (unit, integration, infra, resilience)
	$(PY) -m pytest

unit: $(STAMP) ## unit tests only (no network)
	$(PY) -m pytest tests/unit

integration: $(STAMP) ## integration tests (moto server + CTM emulator on loopback)
	$(PY) -m pytest tests/integration

demo: $(STAMP) ## run the whole system locally against the emulators
	@echo "make demo: not yet (issue 6)"; exit 1

bench: $(STAMP) ## throughput, cold start and cost benchmarks (prints figures)
	@echo "make bench: not yet (issue 7)"; exit 1

build: ## sam build (needs python3.13 on PATH)
	sam build

deploy: ## sam deploy --guided
	sam deploy --guided

clean: ## remove the virtual environment and build output
	rm -rf $(VENV) .aws-sam .mypy_cache .ruff_cache
