# flag-scheduler: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONTROLPLANE := hack/controlplane
QUICK ?=
ARGOCD_LUA := build/argocd-lua
# The kubectl of install/deploy/run; `make cluster-up` prints the one it built (KUBECTL=...).
KUBECTL ?= kubectl
LEASE_NAMESPACE = $${FLAG_SCHEDULER_LEASE_NAMESPACE:-flag-scheduler-system}

.PHONY: help venv binaries clients test argocd-lua argocd-snippet unit integration lint cluster-up cluster-down demo run install deploy bench bench-scale bench-propagation clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

venv: $(STAMP) ## Create .venv with the pinned dependencies

binaries: ## Build (or reuse from the cache) etcd, kube-apiserver, kube-controller-manager, kubectl
	@$(CONTROLPLANE)/build.sh

clients: venv ## Install the JS, Java and browser SDK clients the tests run (npm ci, mvn, Debian's chromium); cached
	@$(PY) tests/clients/install.py

test: venv binaries clients ## Run the Argo CD Lua cases, then unit and integration tests against the real local control plane
	@$(MAKE) --no-print-directory argocd-lua
	$(PY) -m pytest tests

argocd-lua: ## Run argocd/'s health checks and actions on gopher-lua as Argo CD does (every *_test.yaml case)
	cd hack/argocd && go test ./... && go build -o ../../$(ARGOCD_LUA) .
	$(ARGOCD_LUA) test argocd/resource_customizations

argocd-snippet: ## Regenerate argocd/install/argocd-cm.yaml from argocd/resource_customizations
	cd hack/argocd && go build -o ../../$(ARGOCD_LUA) .
	$(ARGOCD_LUA) snippet argocd/resource_customizations > argocd/install/argocd-cm.yaml.new
	mv argocd/install/argocd-cm.yaml.new argocd/install/argocd-cm.yaml

unit: venv ## Run the unit tests only (no cluster)
	$(PY) -m pytest tests/unit

lint: venv binaries ## Compile the Python code, lint the Dockerfile, render the kustomize trees
	$(PY) -m compileall -q operator tests bench hack
	$(VENV)/bin/hadolint Dockerfile
	@for dir in manifests/default manifests/namespaced manifests/network-policy; do \
		"$$($(CONTROLPLANE)/build.sh | tail -1)/kubectl" kustomize $$dir > /dev/null && echo "$$dir renders" || exit 1; \
	done

install: ## Install the CRDs into the cluster in $$KUBECONFIG
	$(KUBECTL) apply --server-side -k crds

deploy: ## Deploy CRDs, RBAC and the operator (manifests/default) into the cluster in $$KUBECONFIG
	$(KUBECTL) apply --server-side -k manifests/default

cluster-up: venv binaries ## Start a local control plane in the background; prints KUBECONFIG= and KUBECTL=
	@$(PY) $(CONTROLPLANE)/detached.py up

cluster-down: venv ## Stop the control plane started by cluster-up
	@$(PY) $(CONTROLPLANE)/detached.py down

demo: venv binaries ## Start the control plane and the operator, and show a schedule being applied
	$(PY) hack/demo.py

run: venv ## Run the operator against the cluster in $$KUBECONFIG (creates its Lease namespace if missing)
	@$(KUBECTL) get namespace $(LEASE_NAMESPACE) > /dev/null 2>&1 || $(KUBECTL) create namespace $(LEASE_NAMESPACE)
	$(VENV)/bin/flag-scheduler

bench: venv binaries clients ## Run the benchmarks (QUICK=1 for a short run), then the scale and propagation phases
	$(PY) bench/run.py $(if $(QUICK),--quick,)
	$(PY) bench/scale.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation_runtimes.py $(if $(QUICK),--quick,)

bench-scale: venv binaries ## Only the scale phase: long history and one long queue (QUICK=1: a tenth)
	$(PY) bench/scale.py $(if $(QUICK),--quick,)

bench-propagation: venv binaries clients ## Only propagation: scheduledAt to 1 and 100 SDK clients, flagd sync and OFREP; 100 JS and 100 Java providers
	$(PY) bench/propagation.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation_runtimes.py $(if $(QUICK),--quick,)

clean: ## Remove the virtualenv and caches inside the checkout
	rm -rf $(VENV) .pytest_cache .hypothesis .cluster build
