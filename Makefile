# The two commands that matter: `make run` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Lambda runtime is python3.12: the venv, the tests and `sam build` all use it.
PY312 := $(shell for p in "$$(command -v pyenv >/dev/null 2>&1 && ls -d $$(pyenv root)/versions/3.12.*/bin/python3.12 2>/dev/null | tail -1)" "$$(command -v python3.12)"; do [ -x "$$p" ] && "$$p" -c 'import sys' 2>/dev/null && echo "$$p" && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/layers/common:$(CURDIR)
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv run test lint build invoke fuzz bench load soak observe prometheus clean

help:
	@echo "make run     set up and run the platform locally on http://127.0.0.1:$${PAYMENTS_PORT:-3000}"
	@echo "make test    set up and run every test (lint, types, unit, integration, end-to-end)"
	@echo "make invoke FN=<function> EVENT=events/<file>   run one function on one event"
	@echo "make fuzz    a long schemathesis campaign against the local stack (openapi.yaml)"
	@echo "make build   sam build (needs python3.12)"
	@echo "make bench   benchmarks;  make load  load test against the local stack"
	@echo "make soak    20,000 requests at concurrency 8 against the local stack: RSS and latency"

$(STAMP): requirements-dev.txt layers/common/requirements.txt
	@test -n "$(PY312)" || { echo "python3.12 not found (pyenv install 3.12 or apt-get install python3.12)"; exit 1; }
	@test -x $(PY) || $(PY312) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m local.stack

# Silent: stdout is only the result JSON (`make invoke ... | jq`); set-up output goes to stderr.
invoke:
	@$(MAKE) --no-print-directory -s venv >&2
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make invoke FN=<function> EVENT=events/<file>" >&2; exit 2; }
	@$(PY) -m local.invoke $(FN) $(EVENT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Real Prometheus (with promtool) for the rule tests and the metrics integration test.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing prometheus (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus prometheus-alertmanager >/dev/null; }

# The fuzz stage (tests/e2e/test_fuzz.py) runs on its own after the other tests, bounded
# for CI: FUZZ_MAX_EXAMPLES per operation and phase, FUZZ_SECONDS shared by the operations.
FUZZ_TEST := tests/e2e/test_fuzz.py
FUZZ := $(PY) -m pytest --no-cov -p no:cacheprovider -q $(FUZZ_TEST)

test: lint prometheus
	$(PY) -m pytest --ignore=$(FUZZ_TEST)
	$(FUZZ)

# A longer campaign: cases per operation and status are printed (and written to
# .local/fuzz-report.json), failures as pytest failures with a curl line to reproduce.
fuzz: $(STAMP)
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-1000} FUZZ_SECONDS=$${FUZZ_SECONDS:-1200} $(FUZZ)

observe: $(STAMP) prometheus
	$(PY) -m local.observe

build: $(STAMP)
	PATH=$(dir $(PY312)):$$PATH $(VENV)/bin/sam build --parallel

# The cold-start section creates its Lambda-like venv (.local/lambda-venv) on first use.
bench: $(STAMP)
	$(PY) -m bench

load: $(STAMP)
	$(PY) -m bench.load

# ≥ 20,000 requests at concurrency 8 against `python -m local.stack`: RSS start/middle/end, p50/p99.
soak: $(STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .aws-sam .local .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
