# flag-scheduler: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONTROLPLANE := hack/controlplane
QUICK ?=
# Integration tests wait far more than they compute: this many pytest-xdist workers share one control plane.
# With 4, both cores sat half idle for stretches in which every worker's test was waiting (a due time, a
# Lease): 6 took 286 s of pytest in a fresh-clone run where 4 took 298 s (2026-12-03).
TEST_WORKERS ?= 6
ARGOCD_LUA := build/argocd-lua
# The kubectl of install/deploy/run; `make cluster-up` prints the one it built (KUBECTL=...).
KUBECTL ?= kubectl
LEASE_NAMESPACE = $${FLAG_SCHEDULER_LEASE_NAMESPACE:-flag-scheduler-system}

.PHONY: help venv binaries clients test argocd-lua argocd-snippet unit integration lint cluster-up cluster-down demo run install deploy bench bench-scale bench-propagation bench-cron bench-serving bench-handover bench-fairness clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

# uv installs the same pinned dependencies as pip would, in parallel: 22 s from nothing cached, where
# pip took 50 s with its cache warm (most of a fresh clone's set-up before the tests). uv itself is
# installed once into the cache outside the checkout (as the control plane's binaries are) and makes the
# venv too: `python -m venv` spent 8 s of a fresh clone's 27 s of set-up in ensurepip, and pip installing
# uv into each venv 4 s more. Compiling all of site-packages ahead took 16 CPU-s; but where
# PYTHONDONTWRITEBYTECODE is set (this machine and CI set it) no import ever writes its bytecode, so every
# operator process compiled kopf, both kubernetes clients, aiohttp and pydantic again: 3.6 CPU-s of
# imports, 1.4 with bytecode. So `make venv` then compiles what the two workloads import
# (hack/warm_bytecode.py), including the Kubernetes client's API classes, which it imports only when first
# named (CoreV1Api: 2.0 CPU-s from source, 1.1 with bytecode, in each process that names it). The test run
# writes bytecode as it goes (below).
UV_VERSION := 0.13.9
FS_CACHE := $(or $(FLAG_SCHEDULER_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/flag-scheduler)
UV_DIR := $(FS_CACHE)/uv-$(UV_VERSION)
UV := $(UV_DIR)/bin/uv
WARM_IMPORTS := flag_scheduler.scheduling.handlers flag_scheduler.serving.flag_server \
	kubernetes.aio.client:CoreV1Api,CustomObjectsApi,CoordinationV1Api,AdmissionregistrationV1Api

# Whole or not at all: into a directory of its own, then renamed (another clone may be doing the same).
$(UV):
	@mkdir -p $(FS_CACHE)
	@tmp=$$(mktemp -d $(FS_CACHE)/.uv-XXXXXX) \
	  && $(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target $$tmp uv==$(UV_VERSION) \
	  && (mv -T $$tmp $(UV_DIR) 2>/dev/null || rm -rf $$tmp)

$(STAMP): pyproject.toml hack/warm_bytecode.py | $(UV)
	rm -rf $(VENV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)
	$(UV) pip install --quiet --python $(PY) -e '.[test,bench]'
	$(PY) hack/warm_bytecode.py $(WARM_IMPORTS)
	touch $@

venv: $(STAMP) ## Create .venv with the pinned dependencies (and the workloads' bytecode)

binaries: ## Build (or reuse from the cache) etcd, kube-apiserver, kube-controller-manager, kubectl
	@$(CONTROLPLANE)/build.sh

clients: ## Install the JS, Java and browser SDK clients the tests run (npm ci, mvn, Debian's chromium); cached
	@$(PYTHON) tests/clients/install.py

# The set-up steps do not depend on each other (tests/clients/install.py needs only the standard library): they run
# side by side, then the tests. The tests run with bytecode writes on (into .venv and tests/, both ignored by git):
# with PYTHONDONTWRITEBYTECODE every pytest worker, zygote and SDK client compiled the same modules again, and
# pytest rewrote the asserts of every test module in each worker (it keeps that cache only where bytecode may be
# written). Compiling it all at set-up instead lengthened the set-up by as much as it saved.
test: ## Run the Argo CD Lua cases, then unit and integration tests (in parallel) against the real local control plane
	@$(MAKE) --no-print-directory -j 4 venv binaries clients argocd-lua
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest tests -n $(TEST_WORKERS) --maxschedchunk=1 --durations=10

argocd-lua: ## Run argocd/'s health checks and actions on gopher-lua as Argo CD does (every *_test.yaml case)
	cd hack/argocd && go test ./... && go build -o ../../$(ARGOCD_LUA) .
	$(ARGOCD_LUA) test argocd/resource_customizations

argocd-snippet: ## Regenerate argocd/install/argocd-cm.yaml from argocd/resource_customizations
	cd hack/argocd && go build -o ../../$(ARGOCD_LUA) .
	$(ARGOCD_LUA) snippet argocd/resource_customizations > argocd/install/argocd-cm.yaml.new
	mv argocd/install/argocd-cm.yaml.new argocd/install/argocd-cm.yaml

unit: venv ## Run the unit tests only (no cluster)
	$(PY) -m pytest tests/unit

lint: venv binaries ## Compile the Python code, lint the Dockerfile, render the kustomize trees and kube-score them
	$(PY) -m compileall -q operator tests bench hack
	$(VENV)/bin/hadolint Dockerfile
	@kubectl="$$($(CONTROLPLANE)/build.sh | tail -1)/kubectl"; kube_score="$$(hack/kube-score/build.sh | tail -1)"; \
	ignored=$$(grep -v '^#' hack/kube-score/accepted.txt | cut -f1 | sed 's/^/--ignore-test=/'); \
	mkdir -p build; \
	for dir in manifests/default manifests/namespaced manifests/network-policy; do \
		"$$kubectl" kustomize $$dir > build/rendered.yaml || exit 1; \
		echo "$$dir renders"; \
		"$$kube_score" score --output-format=ci $$ignored build/rendered.yaml | grep -E '^\[(CRITICAL|WARNING)\]' || true; \
		"$$kube_score" score --output-format=ci $$ignored build/rendered.yaml > /dev/null \
			|| { echo "$$dir: kube-score found a critical problem (above); fix it or list it in hack/kube-score/accepted.txt and README"; exit 1; }; \
	done

install: ## Install the CRDs and the admission policies (the operator applies nothing without them) into $$KUBECONFIG
	$(KUBECTL) apply --server-side -k crds
	$(KUBECTL) apply --server-side -k manifests/policy

deploy: ## Deploy CRDs, RBAC and the operator (manifests/default) into the cluster in $$KUBECONFIG
	$(KUBECTL) apply --server-side -k manifests/default

cluster-up: venv binaries ## Start a local control plane in the background; prints KUBECONFIG= and KUBECTL=
	@$(PY) $(CONTROLPLANE)/detached.py up

cluster-down: venv ## Stop the control plane started by cluster-up
	@$(PY) $(CONTROLPLANE)/detached.py down

demo: venv binaries ## Start the control plane, the scheduler and the flag server, and show a schedule being applied
	$(PY) hack/demo.py

run: venv ## Run the scheduler and the flag server against the cluster in $$KUBECONFIG (creates the Lease namespace if missing)
	@$(KUBECTL) get namespace $(LEASE_NAMESPACE) > /dev/null 2>&1 || $(KUBECTL) create namespace $(LEASE_NAMESPACE)
	@# One machine: the flag server leaves health and metrics to the scheduler (in a pod each has its own).
	FLAG_SCHEDULER_HEALTH_PORT=0 FLAG_SCHEDULER_METRICS_PORT=0 $(VENV)/bin/flag-scheduler serve & server=$$!; \
	trap 'kill $$server 2> /dev/null; wait $$server' EXIT; \
	$(VENV)/bin/flag-scheduler

bench: venv binaries clients ## Run the benchmarks (QUICK=1 for a short run), then the scale, propagation (Python, JS, Java), hand-over, serving and cron phases
	$(PY) bench/run.py $(if $(QUICK),--quick,)
	$(PY) bench/scale.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation_runtimes.py $(if $(QUICK),--quick,)
	$(PY) bench/handover.py $(if $(QUICK),--quick,)
	$(PY) bench/serving.py $(if $(QUICK),--quick,)
	$(PY) bench/cron.py $(if $(QUICK),--quick,)

bench-serving: venv binaries ## Only the flag server: stream memory, OFREP rate, 1,000-stream propagation, lateness under a flood
	$(PY) bench/serving.py $(if $(QUICK),--quick,)

bench-scale: venv binaries ## Only the scale phase: long history and one long queue (QUICK=1: a tenth)
	$(PY) bench/scale.py $(if $(QUICK),--quick,)

bench-propagation: venv binaries clients ## Only propagation: scheduledAt to 1 and 100 SDK clients, flagd sync and OFREP; 100 JS and 100 Java providers
	$(PY) bench/propagation.py $(if $(QUICK),--quick,)
	$(PY) bench/propagation_runtimes.py $(if $(QUICK),--quick,)

bench-handover: venv binaries clients ## Only the hand-over: a flag server replaced under connected Python, JS and Java providers (default settings)
	$(PY) bench/handover.py $(if $(QUICK),--quick,)

bench-fairness: venv binaries ## Only fairness: another namespace's lateness while one namespace creates 20,000 due schedules (QUICK=1: 2,000)
	$(PY) bench/run.py --only fairness $(if $(QUICK),--quick,)

bench-cron: venv binaries ## Only recurring windows: 1,000 FlagCronSchedules whose edges fall at the same minute
	$(PY) bench/cron.py $(if $(QUICK),--quick,)

clean: ## Remove the virtualenv and caches inside the checkout
	rm -rf $(VENV) .pytest_cache .hypothesis .cluster build
