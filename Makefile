# The index of what can be done here. `make help` lists it.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
# The SAM CLI, pinned, in a virtual environment of its own (`make sam`).
SAM_VERSION := 1.170.0
SAM := .venv-sam/bin/sam
SAM_STAMP := .venv-sam/.installed-$(SAM_VERSION)
# Python 3.13 as the Lambda runtime has it: boto3 (the version the tests use), compiled, and
# nothing else. `make bench` imports the built handlers with it (bench/footprint.py).
LAMBDA_PY := .venv-lambda/bin/python
LAMBDA_STAMP := .venv-lambda/.installed
BOTO3_PIN := $(shell grep -E '^(boto3|botocore)==' requirements-dev.txt)

# `sam build` and the layer's Makefile need python3.13 (the Lambda runtime). Where pyenv has
# it but does not put it on PATH, ask pyenv for it next to the current version.
ifeq ($(shell python3.13 --version 2>/dev/null),)
PYENV_313 := $(shell command -v pyenv >/dev/null && pyenv versions --bare | grep -m1 '^3\.13')
ifneq ($(PYENV_313),)
export PYENV_VERSION := $(shell pyenv version-name):$(PYENV_313)
endif
endif
PYTHON313 := $(shell $(if $(PYENV_VERSION),PYENV_VERSION=$(PYENV_VERSION)) python3.13 --version 2>/dev/null)
# What the build tests need (tests/infra/test_sam_build.py, the README's `sam build`), made by
# `make test` wherever python3.13 is found; elsewhere those tests are skipped, saying why.
BUILD_TOOLS := $(if $(PYTHON313),$(SAM_STAMP) $(LAMBDA_STAMP))
# The suite runs in parallel (pytest-xdist), test by test; the tests of an `xdist_group` (a
# sam build, the README reader's shell) go to one worker, in order.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

.DEFAULT_GOAL := help
.PHONY: help venv sam lambda-runtime test unit integration lint demo bench soak build deploy clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{gsub(/\$$\$$/, "$$", $$2); printf "  make %-15s %s\n", $$1, $$2}'

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

test: lint $(BUILD_TOOLS) ## lint, type checks and every test, in parallel (with the SAM CLI for the build tests)
	@$(if $(PYTHON313),,echo "python3.13 not found: the sam build tests will be skipped")
	SAM_CLI_TELEMETRY=0 $(PYTEST)

unit: $(STAMP) ## unit tests only (no network)
	$(PYTEST) tests/unit

integration: $(STAMP) ## integration tests (moto server + CTM emulator on loopback)
	$(PYTEST) tests/integration

demo: $(STAMP) ## run the whole system locally against the emulators
	@$(PY) -m devkit.demo

bench: $(STAMP) build $(LAMBDA_STAMP) ## throughput, cold start (of sam build's output), cost -> bench/RESULTS.md
	$(PY) -m bench
	$(PY) -m bench.simulation scale

soak: $(STAMP) ## the liveness property over SOAK (default 2000) simulated schedules
	$(PY) -m bench.simulation soak $(or $(SOAK),2000)

lambda-runtime: $(LAMBDA_STAMP) ## .venv-lambda: python3.13 with only boto3, as the Lambda runtime has it

$(LAMBDA_STAMP): requirements-dev.txt
	@python3.13 --version >/dev/null || { echo "make bench needs python3.13 (the Lambda runtime)"; exit 2; }
	rm -rf .venv-lambda && python3.13 -m venv .venv-lambda
	.venv-lambda/bin/pip install --quiet --disable-pip-version-check $(BOTO3_PIN)
	@touch $@

$(SAM_STAMP):
	rm -rf .venv-sam && $(PYTHON) -m venv .venv-sam
	.venv-sam/bin/pip install --quiet --disable-pip-version-check aws-sam-cli==$(SAM_VERSION)
	@touch $@

sam: $(SAM_STAMP) ## the pinned SAM CLI in .venv-sam; then: export PATH="$$PWD/.venv-sam/bin:$$PATH"

build: $(SAM_STAMP) ## sam build into .aws-sam/build (python3.13 from PATH or pyenv)
	$(SAM) build
	@du -sh .aws-sam/build/CommonLayer

deploy: build ## sam deploy --guided (ENV=prod deploys the prod environment of samconfig.toml)
	$(SAM) deploy $(if $(ENV),--config-env $(ENV),--guided)

clean: ## remove the virtual environments and build output
	rm -rf $(VENV) .venv-sam .venv-lambda .aws-sam .mypy_cache .ruff_cache
