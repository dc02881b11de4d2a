# Entry points for people and CI. `make test` is what .ci/run and the README use.
.NOTPARALLEL:
.DEFAULT_GOAL := help

VENV      ?= .venv
BIN       := $(VENV)/bin
PYTEST    := $(BIN)/pytest -ra -p no:cacheprovider
LINT_DIRS := reconciler runtime tests
DEMO      := manifests/demo/
DEMO_TAR  := .state/demo/busybox-rootfs.tar

.PHONY: help setup lint imports typecheck unit e2e test demo bench clean-state

help:
	@echo "make setup       install packages, venv, start dockerd, build the test image"
	@echo "make lint        ruff check + ruff format --check + make imports"
	@echo "make imports     the import contracts between rooms (import-linter, pyproject.toml)"
	@echo "make typecheck   mypy (strict, see pyproject.toml)"
	@echo "make unit        unit tests"
	@echo "make e2e         end-to-end tests on both runtimes (dockerd and native)"
	@echo "make test        setup + lint + typecheck + every test except benchmarks (CI)"
	@echo "make demo        apply $(DEMO) on the native runtime (no dockerd, no registry)"
	@echo "make bench       run tests/bench/*.py"
	@echo "make clean-state remove ./.state and objects left by interrupted e2e runs"

setup:
	bash scripts/setup.sh

lint: imports
	$(BIN)/ruff check $(LINT_DIRS)
	$(BIN)/ruff format --check $(LINT_DIRS)

# The rooms' boundaries (docs/ARCHITECTURE.md): import-linter reads [tool.importlinter] in
# pyproject.toml and finds the package `pyapply` through the editable install.
imports:
	$(BIN)/lint-imports --no-cache

typecheck:
	$(BIN)/mypy

unit:
	$(PYTEST) tests/unit

e2e:
	$(PYTEST) -m e2e tests/e2e

# Two pytest processes at once: the host dockerd's and swarm's tests, and the rest (tests/streams.py)
test: setup lint typecheck
	$(BIN)/python -m tests.streams -ra -p no:cacheprovider --durations=25 tests --ignore=tests/bench

# The demo needs no daemon and no registry: the busybox image is made here from Debian's
# busybox-static and imported into the native runtime's image store.
demo:
	bash scripts/setup.sh --native
	bash scripts/build-test-image.sh --tar $(DEMO_TAR)
	$(BIN)/pyapply image import $(DEMO_TAR) --ref pyapply-test/busybox:latest
	$(BIN)/pyapply -f $(DEMO)
	@echo
	@echo "It answers:  curl http://127.0.0.1:$${DEMO_PORT:-8080}/"
	@echo "Look at it:  $(BIN)/pyapply get -f $(DEMO)   |   $(BIN)/pyapply logs --file $(DEMO) worker"
	@echo "State:       $${PYAPPLY_ROOT:-/var/lib/pyapply} (containers, images, networks, volumes)"
	@echo "Tear down:   $(BIN)/pyapply down -f $(DEMO)   (add --volumes to delete the volume)"

bench:
	@set -e; found=0; for f in tests/bench/bench_*.py; do \
	  [ -e "$$f" ] || continue; found=1; \
	  echo "== $$f"; $(BIN)/python "$$f"; \
	done; [ $$found = 1 ] || echo "no benchmarks in tests/bench"

# E2E stacks are named t + 8 hex digits; a killed test run can leave their objects behind.
E2E_STACK := grep -E ' t[0-9a-f]{8}$$' | cut -d' ' -f1
clean-state:
	rm -rf .state
	@if docker info >/dev/null 2>&1; then \
	  ids=$$(docker ps -a --filter label=io.pyapply.stack \
	    --format '{{.ID}} {{.Label "io.pyapply.stack"}}' | $(E2E_STACK)); \
	  [ -z "$$ids" ] || docker rm -f $$ids >/dev/null; \
	  nets=$$(docker network ls --filter label=io.pyapply.stack \
	    --format '{{.ID}} {{.Label "io.pyapply.stack"}}' | $(E2E_STACK)); \
	  [ -z "$$nets" ] || docker network rm $$nets >/dev/null; \
	  vols=$$(docker volume ls --filter label=io.pyapply.stack \
	    --format '{{.Name}} {{.Label "io.pyapply.stack"}}' | $(E2E_STACK)); \
	  [ -z "$$vols" ] || docker volume rm $$vols >/dev/null; \
	  echo "clean-state: removed objects left by e2e stacks"; \
	fi
	@# the swarm tests' second dockerd, its network namespace and veth, if a run was killed
	$(BIN)/python -m tests.e2e.swarm
