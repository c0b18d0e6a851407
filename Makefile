# Two commands for a newcomer: `make demo` and `make test`. Both build their own virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-batching test bench clean lua install-manifest sync-crds e2e-kind

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

demo-batching: $(STAMP)
	$(BIN)/python examples/batching_demo.py

# Lua 5.4 (Debian's lua5.4) runs the tests of the Argo CD health check, docs/argocd-health.lua.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
lua:
	@command -v lua5.4 >/dev/null || { echo "installing lua5.4 for the Argo CD health check's tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq lua5.4; }

test: $(STAMP) lua
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q --cov --cov-report=term

# deploy/servegraph.yaml: the chart (CRDs synced first) rendered with its defaults, for
# `kubectl apply` (a test checks drift).
install-manifest: sync-crds
	$(BIN)/python scripts/render_install.py

# Copy the generated crds/*.yaml into the chart (charts/servegraph/crds/).
sync-crds: $(STAMP)
	$(BIN)/python scripts/sync_crds.py

# End to end on a kind cluster: needs docker, kind, kubectl and helm (not run in CI).
e2e-kind: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/e2e-kind.sh

bench: $(STAMP)
	$(BIN)/python bench/run.py --setup

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .coverage .coverage.* .mypy_cache
