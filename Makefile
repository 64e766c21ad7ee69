# Governor's two commands:  `make demo`  and  `make test`  (each sets up what it needs first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_STATE := .governor/test/session

.PHONY: help setup demo test test-long lint typecheck collector down clean

help:
	@echo "make demo   set up, then run the demo (local Kafka + Redis + worker + fleet)"
	@echo "make test   set up, then ruff, mypy and pytest against a real local stack"
	@echo "make down   stop what the demo left up  |  make clean   remove venv and state"

setup: $(BIN)/.installed
	@ops/local/setup.sh

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# the distribution was called "governor" before it became fleet-governor (issue 14)
	$(BIN)/pip uninstall -q -y governor 2>/dev/null || true
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# the demo leaves the stack, its worker and the console (http://127.0.0.1:6070) up to explore:
# `make down` (governor demo --stop) stops them
demo: setup
	$(BIN)/governor demo --keep

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# two pytest processes, a file each at a time (module fixtures run once); the controller starts
# and stops the stack (tests/conftest.py); `down` also covers an interrupted run
# the OpenTelemetry Collector of ops/otel-collector/builder.yaml, built once from the Go module
# proxy for the test that runs the shipped Collector config (minutes the first time, then
# reused); a failed build leaves that one test skipped, naming the log
collector: setup
	@mkdir -p .governor
	@ops/otel-collector/build.sh > .governor/otelcol-build.log 2>&1 \
	  || echo "the Collector did not build (.governor/otelcol-build.log): its test is skipped"

test: lint typecheck collector
	$(BIN)/pytest -ra -n 2 --dist loadfile; status=$$?; \
	GOVERNOR_STATE_DIR=$(TEST_STATE) $(BIN)/governor down >/dev/null 2>&1; \
	exit $$status

# the minutes-long fault runs (kill -9 of one of 3 workers five times, scaling 1 -> 3 -> 1)
test-long: setup
	$(BIN)/pytest -ra -m long; status=$$?; \
	GOVERNOR_STATE_DIR=$(TEST_STATE) $(BIN)/governor down >/dev/null 2>&1; \
	exit $$status

down:
	$(BIN)/governor demo --stop

clean: down
	rm -rf $(VENV) .governor
