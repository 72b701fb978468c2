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
	@$(PY) -m devkit.demo

bench: $(STAMP) ## throughput, cold start and cost benchmarks (prints figures)
	$(PY) -m bench

build: ## sam build into .aws-sam/ (SAM CLI in .venv-sam; python3.13 from PATH or pyenv)
	@test -x .venv-sam/bin/sam || { $(PYTHON) -m venv .venv-sam && \
	  .venv-sam/bin/pip install --quiet --disable-pip-version-check aws-sam-cli==1.170.0; }
	@if ! python3.13 --version >/dev/null 2>&1 && command -v pyenv >/dev/null; then \
	  export PYENV_VERSION="$$(pyenv version-name):$$(pyenv versions --bare | grep -m1 '^3\.13')"; \
	fi; .venv-sam/bin/sam build
	@du -sh .aws-sam/build/CommonLayer

deploy: build ## sam deploy --guided (ENV=prod deploys the prod environment of samconfig.toml)
	.venv-sam/bin/sam deploy $(if $(ENV),--config-env $(ENV),--guided)

clean: ## remove the virtual environment and build output
	rm -rf $(VENV) .aws-sam .mypy_cache .ruff_cache
