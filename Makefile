# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when it is missing and installs what it needs.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Editable install in "strict" mode: a link tree that mypy and pytest can read.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check
EDITABLE := --config-settings editable_mode=strict

.PHONY: demo test lint typecheck unit bench clean relink

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) $(EDITABLE) -e '.[train,broker]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) $(EDITABLE) -e '.[train,broker,dev,bench,deploy]'
	touch $@ $(VENV)/.demo-installed

# The strict editable install links each module file; new modules need a relink.
relink: $(VENV)/.demo-installed
	$(PIP_INSTALL) --no-deps --no-build-isolation $(EDITABLE) -e . 2>/dev/null

demo: $(VENV)/.demo-installed relink
	$(BIN)/recstream demo

lint: $(VENV)/.test-installed relink
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy -p recstream
	$(BIN)/mypy tests benchmarks

unit: $(VENV)/.test-installed
	$(BIN)/python -m pytest -m "not integration"

# Everything on the embedded noida broker, then on Tansu the end-to-end test and the
# crash and rebalance tests (noida cannot rebalance two live members; Tansu can).
test: lint typecheck $(VENV)/.test-installed
	$(BIN)/python -m pytest
	RECSTREAM_TEST_BROKER=tansu $(BIN)/python -m pytest tests/integration/test_end_to_end.py \
		tests/integration/test_crash_and_rebalance.py

bench: $(VENV)/.test-installed
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
