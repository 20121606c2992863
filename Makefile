# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV := .venv
MLSD := $(VENV)/bin/mlsd

.PHONY: install demo test test-unit test-shuffled lint typecheck up down bench drills clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# --quiet: uv prints errors only, not the 200 lines of installed packages (`$(UV) pip list` shows them).
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	@echo "Installing $(VENV) from uv.lock"
	$(UV) sync --frozen --quiet --python $(PYTHON)
	@touch $@

install: $(VENV)/.installed  ## create .venv from uv.lock

demo: install  ## every design end to end on the embedded stack
	$(MLSD) demo

test: install  ## unit, integration (embedded broker, Feast, MLflow, Redis, PostgreSQL) and end-to-end tests
	$(VENV)/bin/pytest

test-unit: install
	$(VENV)/bin/pytest -m unit

test-shuffled: install  ## the whole suite in a random order of modules and of tests within them
	$(VENV)/bin/pytest --random-order-bucket=module

lint: install
	$(VENV)/bin/ruff check pipelines services feature_repo tests benchmarks
	$(VENV)/bin/ruff format --check pipelines services feature_repo tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

up: install
	$(MLSD) up

down: install
	$(MLSD) down

bench: install  ## every benchmark in benchmarks/, results in benchmarks/results/
	$(VENV)/bin/python -m benchmarks.run_all

drills: install  ## the stream and service fault drills at full size (about 35 min), results in benchmarks/results/drills/
	$(VENV)/bin/python -m benchmarks.drills

clean:
	rm -rf .mlsd .pytest_cache .mypy_cache .ruff_cache
