# Warren: `make up` runs it on this machine, `make test` is what CI runs (.ci/run).
# Works on a fresh Debian/Ubuntu with only python3 and apt: system packages are installed
# through apt when missing (as root), the Python side goes into .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.warren-setup-stamp
# The layer image converter's compiled fast path (native/layer_convert.c), beside the venv's
# python where the agent looks for it (agent/layer_convert.py). A failed build fails setup.
CONVERTER := $(VENV)/bin/warren-layer-convert
# The squashfs image writer (native/layer_sqfs.c), in tar2sqfs' place where it is built
# (agent/layer_image.py; tar2sqfs stays the fallback). A failed build fails setup.
WRITER := $(VENV)/bin/warren-layer-sqfs
CC := gcc

# System packages the platform and its test suite need. One list: append to it.
#   runc, crun: OCI runtimes for sandboxes; debootstrap: builds the base template rootfs;
#   iptables, iproute2: per-sandbox network namespaces and NAT; uidmap: user-namespace id maps;
#   chromium: the dashboard's browser tests (Playwright drives the Debian build);
#   squashfs-tools-ng: tar2sqfs, layers installed as squashfs images (docs/templates.md §2);
#   gcc: builds the layer converter's fast path ($(CONVERTER));
#   libsquashfs-dev: the library (and headers) the image writer ($(WRITER)) is built with.
APT_PACKAGES := runc crun runsc debootstrap iptables iproute2 chromium uidmap squashfs-tools-ng gcc \
	libsquashfs-dev

# Parallel where safe: test files are spread over workers (a file's tests stay together, as
# they share module-scoped fixtures). Tests marked `serial` run afterwards, alone. Three workers
# on two cores: the suite waits more than it computes (25 CPU-minutes in 22 minutes with two:
# 1.2 cores busy); with three the same clean-clone CI took 17.4 min instead of 21.9, all passing.
# PYTEST_WORKERS=2 if a slower machine makes timing-sensitive tests suffer.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=
ARGS ?=

# Python caches its compiled modules (__pycache__, gitignored) whatever the caller's environment
# says. With PYTHONDONTWRITEBYTECODE set (this machine's shells set it) and uv, which writes no
# bytecode at install, every Python process compiled every module it imports from source: each
# CP, agent and CLI the suite starts (hundreds), ~2 CPU-s each; a module with its own platform
# took 16 CPU-s instead of 9 (session 20, measured on a clean clone).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help setup apt-packages up test lint typecheck pytest bench floors clean

help:
	@echo "make up      set up, then run Warren on this machine (warren up $(ARGS))"
	@echo "make test    set up, then ruff (lint, format), import-linter, mypy and the whole pytest suite (what CI runs)"
	@echo "make bench   run every benchmark in bench/ and print their tables"
	@echo "make floors  the lowest dependency versions pyproject.toml allows, in .venv-floors: unit and SDK tests"
	@echo "make setup   apt packages (as root, when missing) and the .venv"

setup: apt-packages $(STAMP) $(CONVERTER) $(WRITER)

# It parses tenants' tars: hardened (no measurable cost, docs/benchmarks.md session 12), and
# 0711 so that nobody, running it, cannot read it: execve leaves the process undumpable (no
# other process of nobody may ptrace it) from its first instruction.
HARDEN := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fstack-clash-protection -fPIE -pie \
	-Wl,-z,relro,-z,now,-z,noexecstack
$(CONVERTER): native/layer_convert.c native/tar_fmt.c native/seccomp.c native/layer_convert.h $(STAMP)
	$(CC) -O2 -Wall -Wextra -Werror $(HARDEN) -o $@ native/layer_convert.c native/tar_fmt.c native/seccomp.c
	chmod 0711 $@

# The same hardening and mode: it parses what a converter wrote, as a uid of its own.
$(WRITER): native/layer_sqfs.c native/layer_sqfs_tar.c native/seccomp.c native/layer_sqfs.h \
	native/layer_convert.h $(STAMP)
	$(CC) -O2 -Wall -Wextra -Werror $(HARDEN) -o $@ native/layer_sqfs.c native/layer_sqfs_tar.c native/seccomp.c \
		-lsquashfs
	chmod 0711 $@

# Installs only what is missing, so a set-up machine pays one dpkg query, not an apt run.
apt-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "apt: installing$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -q && apt-get install -y -q $$missing; \
	  else \
	    echo "warning: missing system packages:$$missing (run 'make setup' as root to install them;"; \
	    echo "         tests that need them are skipped locally)"; \
	  fi; \
	fi

# Rebuilt only when pyproject.toml changes (or the venv is gone).
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@# uv resolves and installs the same versions as pip in ~8 s instead of ~150 s (CI's clean clone).
	$(VENV)/bin/python -m pip install -q 'uv==0.13.9'
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python -e '.[dev]'
	@touch $@

up: setup
	$(VENV)/bin/warren up $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Exit code 5 = "no tests collected": fine for a pass that may select nothing.
# --no-loadscope-reorder: modules go out in tests/conftest.py's order (unit tests last, so
# they fill the workers' tail), not xdist's (most tests first, which ran the heaviest last).
# --durations=30: each CI log names its slowest tests (setup and teardown count too: a module's
# platform start is its first test's setup), where to look when the suite nears its budget.
# The serial pass collects only the files that name the marker (a superset of those that use it;
# collecting all ~3000 tests to select 7 took ~15 s), unless PYTEST_ARGS names tests to run.
SERIAL_FILES = $(if $(filter tests%,$(PYTEST_ARGS)),,$(shell grep -rlw --include='test_*.py' serial tests))
pytest: $(STAMP)
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not serial" --durations=30 $(PYTEST_ARGS)
	$(VENV)/bin/pytest -m serial $(PYTEST_ARGS) $(SERIAL_FILES) || [ $$? -eq 5 ]

# mypy (~20 CPU-s on a clean clone) runs beside the parallel tests, niced: it takes CPU their
# waits leave idle instead of ~20 s before they start. Its output, and its failure, come after.
test: setup
	$(MAKE) --no-print-directory lint
	@log=$$(mktemp); \
	( nice -n 10 $(MAKE) --no-print-directory typecheck > "$$log" 2>&1 ) & tc=$$!; \
	$(MAKE) --no-print-directory pytest; rc=$$?; \
	wait $$tc; trc=$$?; cat "$$log"; rm -f "$$log"; \
	[ $$rc -eq 0 ] && [ $$trc -eq 0 ]

bench: setup
	@set -e; for f in bench/[!_]*.py; do \
	  echo "== $$f"; \
	  $(VENV)/bin/python "$$f"; \
	  echo; \
	done

# The dependency floors (docs/operations.md, "Dependency floors"): the lowest versions of Warren's
# own dependencies that pyproject.toml allows (uv's lowest-direct), the dev tools on top without
# moving them, then every module's import and the unit and SDK tests. Not part of `make test`
# (a second venv, ~90 s here): run it when a floor or an import of a dependency changes.
FLOORS := .venv-floors
floors: setup
	rm -rf $(FLOORS) && $(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q 'uv==0.13.9'
	$(FLOORS)/bin/uv pip install -q --python $(FLOORS)/bin/python --resolution lowest-direct -e .
	$(FLOORS)/bin/uv pip freeze --python $(FLOORS)/bin/python --exclude-editable \
	  | grep -v '^\(pip\|setuptools\)==' > $(FLOORS)/floors.txt
	@# The dev tools these tests need: the runner, moto (S3) and import-linter. The others want newer versions
	@# of Warren's own dependencies than their floors (E2B's SDKs rich>=14, schemathesis
	@# starlette<1 or rich>=13.9.4): the tests of E2B's wire are not in this run.
	$(FLOORS)/bin/python -c "import tomllib; dev = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['dev']; print('\n'.join(d for d in dev if d.startswith(('pytest', 'hypothesis', 'moto', 'import-linter'))))" > $(FLOORS)/dev.txt
	$(FLOORS)/bin/uv pip install -q --python $(FLOORS)/bin/python -c $(FLOORS)/floors.txt -r $(FLOORS)/dev.txt
	cp -p $(CONVERTER) $(WRITER) $(FLOORS)/bin/
	$(FLOORS)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile -q tests/unit tests/integration/sdk \
	  --ignore tests/unit/cp/services/test_envd_signatures.py --ignore tests/unit/cp/services/test_envd_tokens.py \
	  --ignore tests/unit/interpreter

clean:
	rm -rf $(VENV) $(FLOORS) .pytest_cache .mypy_cache .ruff_cache
