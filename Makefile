# loraplane — the README's commands. `make test` does all set-up on a fresh
# machine (virtualenv, pip dependencies, control plane and real node built
# from Go modules, Debian packages of the node, the operator and worker
# images), reusing the Go module/build caches and the image cache when present.

PYTHON ?= python3
# The repository root holds the fixed folder `operator/`; with the current
# directory first on sys.path, `python -m ...` would import it instead of the
# standard library's `operator`. Python >= 3.11 leaves the cwd out with this.
export PYTHONSAFEPATH := 1
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test unit cluster e2e demo venv control-plane crds images dev-cluster-up dev-cluster-down clean

test: venv control-plane node prometheus images s3-server kstatus
	$(PY) -m pytest -m "unit or cluster or e2e" $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

cluster: venv control-plane node
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

# The real install on a real node (tests/e2e): images, helm, kubelet.
e2e: venv control-plane node images
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

demo: venv control-plane
	$(VENV)/bin/loraplane demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet -c constraints.txt pip
	$(PY) -m pip install --progress-bar off -c constraints.txt -e ".[dev]"
	touch $@

crds: venv
	$(PY) -m loraplane.operator.api.crdgen
	$(PY) -m loraplane.operator.api.crdgen charts/loraplane/crds

control-plane: venv
	$(PY) -m loraplane.devcluster.build

# prometheus + promtool from the Go module (loraplane/devcluster/prom_build.py),
# cached next to the control plane: the alert rule tests and metrics checks.
.PHONY: prometheus
prometheus: venv
	$(PY) -m loraplane.devcluster.prom_build

# kstatus (loraplane/devcluster/kstatus_build.py): the kstatus library Argo CD
# and Flux read health with, built from its Go module and cached; the
# GitOps-health tests ask it how it reads each object state.
.PHONY: kstatus
kstatus: venv
	$(PY) -m loraplane.devcluster.kstatus_build

# A real S3 server (versitygw) from its Go module (loraplane/devcluster/s3_build.py),
# cached next to the control plane: the ModelStore's S3 backend tests.
.PHONY: s3-server
s3-server: venv
	$(PY) -m loraplane.devcluster.s3_build

# The real node (loraplane/devcluster/realnode.py): kubelet, kube-proxy,
# containerd v2 and the pause program, built from Go modules next to the
# control plane (node_build.py), plus the host packages it runs with.
.PHONY: node node-deps
node: venv control-plane node-deps
	$(PY) -m loraplane.devcluster.node_build

# Debian packages of the real node (runc, CNI plugins, iptables, conntrack)
# and of local image builds (buildah, debootstrap); apt runs only when one
# of them is missing, so this is cheap on a prepared machine.
NODE_DEPS := runc:runc buildah:buildah debootstrap:debootstrap conntrack:conntrack iptables:iptables \
	/usr/lib/cni/bridge:containernetworking-plugins
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
node-deps:
	@missing=""; for dep in $(NODE_DEPS); do bin=$${dep%%:*}; pkg=$${dep##*:}; \
	  if ! command -v $$bin >/dev/null 2>&1 && [ ! -x "$$bin" ]; then missing="$$missing $$pkg"; fi; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	else echo "node packages present (runc, buildah, debootstrap, conntrack, iptables, CNI plugins)"; fi

dev-cluster-up: venv control-plane
	$(VENV)/bin/loraplane dev-cluster up

# The operator and worker images (buildah here, docker where an engine
# answers), cached by content hash; see docs/testing.md "Images".
images: venv node-deps
	$(VENV)/bin/loraplane images build

dev-cluster-down: venv
	$(VENV)/bin/loraplane dev-cluster down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
