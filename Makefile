# The template's own tooling. `make test` is what CI runs.
PYTHON ?= python3
JOBS ?= 4
VENV := .venv
BIN := $(abspath $(VENV)/bin)
BUILD := build
DEMO := $(BUILD)/my-service

.PHONY: test test-fast bake demo demo-prepare bench lock clean

# The dev venv is rebuilt whenever requirements-dev.txt changes.
$(VENV)/.installed: requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

## Run the whole template suite: hooks, every bake, and each baked project's own checks.
test: $(VENV)/.installed
	$(BIN)/pytest -n $(JOBS) --dist worksteal

## Only the cheap checks (no per-bake venv).
test-fast: $(VENV)/.installed
	$(BIN)/pytest -n $(JOBS) --dist worksteal -m "not slow"

## Bake the default (all resources on) service into $(DEMO).
bake: $(VENV)/.installed
	rm -rf $(DEMO)
	$(BIN)/cookiecutter . --no-input -o $(BUILD)

## Bake, install, migrate and run the default service in the foreground (config from its .env).
demo: demo-prepare
	cd $(DEMO) && exec .venv/bin/python -m my_service

## Everything `make demo` does before the service starts: the project's own quick start, with
## uv. `make migrate` creates the database of .env's DATABASE_URL (my_service) when missing.
demo-prepare: bake
	$(MAKE) -C $(DEMO) install VENV=.venv UV=$(BIN)/uv PYTHON=$(BIN)/python
	cp $(DEMO)/.env.example $(DEMO)/.env
	$(MAKE) -C $(DEMO) migrate VENV=.venv

## Benchmark the all-on service against a bare app and the naive pattern (see docs/benchmarks.md).
## BENCH_ARGS=--quick for a ~1 minute smoke run; --template-suite also times `make test`.
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## Re-lock what baked projects install (scripts/lock.py, see docs/developing.md: Locked dependencies): keeps
## the locked versions and locks what pyproject.toml adds; UPGRADE=1: every dependency at its newest.
lock: $(VENV)/.installed
	$(BIN)/python scripts/lock.py $(if $(filter 1,$(UPGRADE)),--upgrade)

clean:
	rm -rf $(VENV) $(BUILD) .pytest_cache
