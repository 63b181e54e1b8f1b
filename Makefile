# modelyard: every entry point a developer, CI or a workflow uses.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY ?= python3.11
VENV := .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# No telemetry from any tool in the stack.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: help docs setup system-tools browser-tools policy-tools bench-webapp bench-suite run serve test test-fast test-server test-e2e test-image test-browser coverage check lint format lock clean bench bench-monitoring bench-optimize bench-workers bench-shadow

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# The stamp is named after the lock's content, not its mtime: a venv restored from the CI
# cache (older mtimes than the fresh checkout) is reused when the lock is the same.
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)

setup: $(STAMP) ## Create .venv from requirements.lock (Python 3.11)

$(STAMP):
	@command -v $(PY) >/dev/null || { echo "$(PY) not found: install Python 3.11 or run make PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

run: setup ## Run the whole pipeline (dvc repro) on the embedded MLflow store and print a summary
	$(BIN)/modelyard run

serve: setup ## Build the Bento for the default model version and serve it on 127.0.0.1:3000
	$(BIN)/modelyard serve

bench: setup ## Serving benchmark: this service vs mlflow models serve vs Flask (needs wrk)
	$(BIN)/python benchmarks/serving.py

bench-monitoring: setup ## Drift job over 1M and 10M logged rows: time, peak RSS, verdict vs Evidently on the full data
	$(BIN)/python benchmarks/monitoring.py

bench-optimize: setup ## The optimize stage's measured table for the CNN and the wide MLP
	$(BIN)/python benchmarks/optimize.py

bench-workers: setup ## Throughput per pod at 1 and 2 workers vs a bare Starlette app (needs wrk; after make run)
	$(BIN)/python benchmarks/workers.py

bench-shadow: setup ## Champion p50/p99 and req/s with the shadow challenger off vs on, one Bento (needs wrk; a @champion and a @challenger)
	$(BIN)/python benchmarks/shadow.py

bench-webapp: setup browser-tools ## Web app: page load, draw-to-prediction p50/p95 (chromium), overhead vs the API (after make run)
	$(BIN)/python benchmarks/webapp.py

# The container tests build, push and run a real OCI image with these Debian/Ubuntu packages
# (no Docker daemon needed). Installed only when missing, with apt as root (or passwordless
# sudo, as on GitHub's runners); elsewhere those tests report skipped and say why.
SYSTEM_TOOLS := buildah docker-registry mmdebstrap
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell sha256sum requirements-checkov.lock 2>/dev/null | cut -c1-16)

policy-tools: $(CHECKOV_STAMP) ## checkov (pinned, its own venv): the policy check of the rendered manifests

$(CHECKOV_STAMP):
	@command -v $(PY) >/dev/null || { echo "$(PY) not found: install Python 3.11 or run make PY=/path/to/python3.11"; exit 1; }
	rm -rf $(CHECKOV_VENV)
	$(PY) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.lock
	touch $@

system-tools: ## Install buildah, docker-registry, mmdebstrap with apt when missing
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "system-tools: not root and no sudo: not installing$$missing (the image tests will be skipped)"; exit 0; fi; \
	command -v apt-get >/dev/null || { echo "system-tools: no apt-get: install$$missing yourself (the image tests will be skipped)"; exit 0; }; \
	echo "system-tools: installing$$missing"; \
	$$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends$$missing debian-archive-keyring

# The browser tests drive Debian's chromium with Playwright (never `playwright install`,
# which downloads a browser build). Installed only when missing, like system-tools;
# without it those tests report skipped and say why.
browser-tools: ## Install chromium with apt when missing (for the browser tests)
	@if command -v chromium >/dev/null || command -v google-chrome >/dev/null || [ -n "$$MODELYARD_CHROMIUM" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "browser-tools: not root and no sudo: not installing chromium (the browser tests will be skipped)"; exit 0; fi; \
	command -v apt-get >/dev/null || { echo "browser-tools: no apt-get: install chromium yourself (the browser tests will be skipped)"; exit 0; }; \
	$$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq; \
	if ! apt-cache show chromium >/dev/null 2>&1; then echo "browser-tools: no chromium package here (the browser tests will be skipped)"; exit 0; fi; \
	echo "browser-tools: installing chromium"; \
	DEBIAN_FRONTEND=noninteractive $$sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium

# Tiers (tests/conftest.py derives them from the fixtures a test uses): fast (in-process, no
# server, no subprocess), server, e2e, image, browser. The tests of one file stay on one
# worker (its module fixtures are built once) and every image test on the same worker.
XDIST ?= -n auto --dist loadgroup --no-loadscope-reorder
test: setup system-tools browser-tools policy-tools ## Run every tier (real MLflow, DVC, GX, ONNX Runtime, buildah, chromium) on all CPUs
	$(BIN)/pytest $(XDIST)

test-fast: setup ## The fast tier only (in-process, no server, no subprocess): about 2 minutes
	$(BIN)/pytest -m fast $(XDIST)

test-server: setup ## The server tier (real MLflow, PostgreSQL, bentoml serve)
	$(BIN)/pytest -m server $(XDIST)

test-e2e: setup policy-tools ## The e2e tier (the pipeline, the CLI, dvc, git, kubectl as subprocesses)
	$(BIN)/pytest -m e2e $(XDIST)

test-image: setup system-tools ## The image tier (buildah builds, pushes and runs the images)
	$(BIN)/pytest -m image $(XDIST)

test-browser: setup browser-tools ## The browser tier (chromium drives the web app)
	$(BIN)/pytest -m browser $(XDIST)

bench-suite: setup system-tools browser-tools ## Time each tier on a fresh clone of HEAD: benchmarks/results/suite.{json,md}
	$(BIN)/python benchmarks/suite.py

coverage: setup system-tools browser-tools ## Line coverage of the product packages over every tier (subprocesses included)
	rm -rf .coverage-data && mkdir -p .coverage-data
	export MODELYARD_COVERAGE_DIR=$(abspath .coverage-data) COVERAGE_RCFILE=$(abspath .coveragerc); \
	$(BIN)/coverage run -m pytest $(XDIST) -p no:cacheprovider -q; status=$$?; \
	$(BIN)/coverage combine -q && $(BIN)/coverage report | tail -1; exit $$status

docs: setup ## Build the manual (docs/, MkDocs --strict) into site/
	$(BIN)/mkdocs build --strict

check: setup ## Lint and type-check (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: ## Re-resolve requirements.in into requirements.lock in a scratch venv
	rm -rf .lockenv && $(PY) -m venv .lockenv
	.lockenv/bin/pip install --quiet -r requirements.in
	.lockenv/bin/pip freeze --exclude-editable > requirements.lock
	rm -rf .lockenv

clean: ## Remove the venv, the local MLflow store and pipeline outputs
	rm -rf $(VENV) .modelyard data/raw data/prepared data/models
