# loraplane — the README's commands. `make test` does all set-up on a fresh
# machine (virtualenv, pip dependencies, control plane built from Go
# modules), reusing the pip, Go module and Go build caches when present.

PYTHON ?= python3
# The repository root holds the fixed folder `operator/`; with the current
# directory first on sys.path, `python -m ...` would import it instead of the
# standard library's `operator`. Python >= 3.11 leaves the cwd out with this.
export PYTHONSAFEPATH := 1
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test unit cluster demo venv control-plane crds dev-cluster-up dev-cluster-down clean

test: venv control-plane
	$(PY) -m pytest -m "unit or cluster" $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

cluster: venv control-plane
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

demo: venv control-plane
	$(VENV)/bin/loraplane demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --progress-bar off -e ".[dev]"
	touch $@

crds: venv
	$(PY) -m loraplane.operator.api.crdgen
	$(PY) -m loraplane.operator.api.crdgen charts/loraplane/crds

control-plane: venv
	$(PY) -m loraplane.devcluster.build

dev-cluster-up: venv control-plane
	$(VENV)/bin/loraplane dev-cluster up

dev-cluster-down: venv
	$(VENV)/bin/loraplane dev-cluster down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
