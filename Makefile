# Bulwark: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers for `make test` and `make test-fast` (one per core).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all venv demo test test-fast lint protos bench clean

all: test

$(STAMP): pyproject.toml
	@command -v openssl >/dev/null || (echo "installing openssl (Debian package)"; apt-get update -qq && apt-get install -y -qq openssl)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# -qq: errors only (setuptools' "editable installation" banner is a warning)
	$(PY) -m pip install -qq -e '.[dev]'
	@touch $@

venv: $(STAMP)

# `make demo ARGS=--keep` keeps its temporary directory (and prints how to restart its CA).
demo: $(STAMP)
	$(PY) demo/demo.py $(ARGS)

test: $(STAMP)
	@# The issuance-record tests start a throwaway PostgreSQL cluster from the Debian package.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (echo "installing postgresql (Debian package)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	@# The web view tests (tests/ui) load /ui in headless Chromium from the Debian package.
	@test -x /usr/bin/chromium || (echo "installing chromium (Debian package)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	@# The HSM tests (tests/integration/hsm, tests/unit/ca_server/hsm) run a SoftHSM2 token per
	@# test and read it back with OpenSC's pkcs11-tool, both from Debian.
	@$(MAKE) --no-print-directory hsm-packages
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# SoftHSM2 (the PKCS#11 module /usr/lib/softhsm/libsofthsm2.so) and OpenSC's pkcs11-tool.
.PHONY: hsm-packages
hsm-packages:
	@test -e /usr/lib/softhsm/libsofthsm2.so -a -x /usr/bin/softhsm2-util || (echo "installing softhsm2 (Debian package)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2)
	@test -x /usr/bin/pkcs11-tool || (echo "installing opensc (Debian package)"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq opensc)

# The inner loop: in-process unit tests and the parsers' properties, no servers (under 90 s).
test-fast: $(STAMP)
	@$(MAKE) --no-print-directory hsm-packages
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests/unit tests/fuzz

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy ca_server certs agent tests bench demo
	@# every package the code imports is declared in pyproject.toml (not only arriving transitively)
	$(VENV)/bin/deptry ca_server certs agent protos
	@# layers point one way: certs imports neither ca_server nor agent; agent never imports ca_server
	$(VENV)/bin/lint-imports

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/istio/v1/auth/ca.proto
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. protos/bulwark/v1/identity.proto
	@# The Workload API: messages only; agent/endpoints/workload_api.py registers /SpiffeWorkloadAPI/* itself.
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. protos/spiffe/workload/workload.proto

# Bulwark vs Istio's CA, cfssl and pilot-agent in one run (bench/run.py says how).
# BENCH_ONLY=ca|hsm|agent|node|fleet runs one phase; BENCH_QUICK=1 tries the harness quickly.
bench: $(STAMP)
	@$(MAKE) --no-print-directory hsm-packages
	$(PY) bench/run.py

# Property-based fuzzing of the parsers (tests/fuzz) with the long Hypothesis profile;
# `make test` runs the same properties with a few examples each. BULWARK_FUZZ_EXAMPLES=N.
.PHONY: fuzz
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Kubernetes: real etcd + kube-apiserver + kubectl built from the Go module registry into
# $${BULWARK_CACHE:-~/.cache/bulwark}/k8s/<versions>/ (cold ~5 min on 2 cores, warm: nothing).
# helm, kustomize and promtool likewise (tests/k8s/build-tool.sh, cached in .../tools/<name>/);
# kube-controller-manager (the remote cluster's token controller in the multicluster tests) by
# tests/k8s/build-controller-manager.sh into .../tools/kube-controller-manager/ (cold ~5 min).
K8S_PEERS := bash tests/k8s/build-peers.sh
TOOL := bash tests/k8s/build-tool.sh
MANIFESTS := build/manifests

.PHONY: k8s-peers test-k8s manifests

k8s-peers:
	@$(K8S_PEERS)

test-k8s: $(STAMP)
	@bin=$$($(K8S_PEERS)) && helm=$$($(TOOL) helm) && kustomize=$$($(TOOL) kustomize) && \
	promtool=$$($(TOOL) promtool) && kcm=$$(bash tests/k8s/build-controller-manager.sh) && \
	BULWARK_K8S_TESTS=1 BULWARK_K8S_BIN="$$bin" BULWARK_HELM="$$helm" \
	BULWARK_KUSTOMIZE="$$kustomize" BULWARK_PROMTOOL="$$promtool" \
	BULWARK_KUBE_CONTROLLER_MANAGER="$$kcm" \
	$(PY) -m pytest -q -p no:cacheprovider tests/k8s

# Renders with kustomize alone (a ~20 MB binary built once), not the API server's build.
manifests:
	@kustomize=$$($(TOOL) kustomize) && mkdir -p $(MANIFESTS) && \
	for d in namespace base overlays/production overlays/plugged-ca overlays/with-istio examples/workload; do \
		out=$(MANIFESTS)/$$(echo $$d | tr / -).yaml; \
		"$$kustomize" build deploy/$$d > $$out && echo "rendered deploy/$$d -> $$out"; \
	done

# Istio's own CA client and pilot-agent against Bulwark (tests/interop). The Go builds are
# cached outside the repo (BULWARK_CACHE, default ~/.cache/bulwark); a warm run only tests.
.PHONY: test-interop
test-interop: $(STAMP)
	bash tests/interop/build-istio.sh
	@# Istio's own CA (the bench peer): the node agent's batch client falls back against it.
	bash bench/build-istio-ca.sh
	BULWARK_INTEROP_TESTS=1 $(PY) -m pytest -q tests/interop
