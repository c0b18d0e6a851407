# Two commands for a newcomer: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-batching test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

demo-batching: $(STAMP)
	$(BIN)/python examples/batching_demo.py

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --cov --cov-report=term

bench: $(STAMP)
	$(BIN)/python bench/run.py --setup

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .coverage .coverage.* .mypy_cache
