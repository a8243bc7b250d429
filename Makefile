# SPDX-License-Identifier: GPL-3.0-or-later
# The two commands of the README: `make run` and `make test`. Each installs what
# is missing first (Debian packages, a venv, the package), and nothing more.

PYTHON ?= python3
VENV ?= .venv
# A venv of Debian's own Python, on which `make test` runs a smoke subset.
DEBIAN_PYTHON ?= /usr/bin/python3
DEBIAN_VENV ?= .venv-debian
SMOKE_TESTS ?= tests/test_cli.py tests/test_testing_kit.py tests/test_ci.py
HTTP_PORT ?= 8042
DICOM_PORT ?= 4242
SCRIPT ?= examples/decorators/rest.py
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What `make run` needs: Orthanc, and a C compiler with the C library's headers
# to build the loader (pip fetches CMake when the machine has none). The
# Python headers and venv module come with python3-dev and python3-venv, added
# only when $(PYTHON) lacks them (pyenv's Pythons have both).
RUN_PACKAGES := gcc libc6-dev
PYTHON_PACKAGES := python3-dev python3-venv
# What `make test` adds: orthanc-dev, the SDK header the bindings are generated
# from and checked against; cmake, to build the sdist offline; dcmtk, a real
# DICOM peer (storescp, findscu...); orthanc-python with python3-pydicom and
# python3-pil, the official plugin the tests compare against; chromium, which
# opens the built documentation; wrk, the HTTP load of the soak tests;
# postgresql, orthanc-postgresql and nginx-light, the clusters of the
# scale-out tests (nodes sharing one database, behind a load balancer); and
# Debian's own Python with its headers and venv module, for the smoke subset.
TEST_PACKAGES := $(RUN_PACKAGES) $(PYTHON_PACKAGES) orthanc orthanc-dev cmake dcmtk orthanc-python \
	python3-pydicom python3-pil chromium wrk postgresql orthanc-postgresql nginx-light

# Installs the Debian packages of $(1) that dpkg does not list as installed.
define apt_install
	@missing=$$(for package in $(1); do \
	  dpkg-query -W -f='$${db:Status-Status}' $$package 2>/dev/null | grep -qx installed || echo $$package; \
	done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
endef

# Orthanc where Debian puts it (/usr/sbin is not on a user's PATH), where a
# build from source goes, or where ORTHANC_BINARY says: found, it is not installed again.
HAVE_ORTHANC = command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || [ -x /usr/local/sbin/Orthanc ] \
	|| { [ -n "$$ORTHANC_BINARY" ] && command -v "$$ORTHANC_BINARY" >/dev/null; }
PYTHON_READY = $(PYTHON) -c 'import ensurepip, os, sysconfig, sys; \
	sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null

# The other rows of the supported platforms (README, "Platforms"): Debian roots
# made by debootstrap into $(ROOTS_DIR), each running $(PLATFORM_TESTS) against
# its own Orthanc, official plugin and CPython.
ROOTS ?= trixie forky
ROOTS_DIR ?= .roots
# What differs from row to row: the loader, the seed samples and the
# side-by-side tests against each row's official plugin, the SDK bindings
# against its header, reset and stop, the decorators, the testing and
# cluster kits, deep recursion on its CPython. (The tests marked slow, twenty
# start-stop cycles and twenty in-process restarts, run on the machine's row.)
PLATFORM_TESTS ?= tests/test_runtime.py tests/test_seed_samples.py tests/test_decorators.py \
	tests/test_official_rest.py tests/test_official_filters.py tests/test_hooks_mixed.py tests/test_official_scp.py \
	tests/test_official_jobs.py tests/test_official_registration.py tests/test_official_storage.py \
	tests/test_official_system.py tests/test_official_transfers.py tests/test_official_images.py \
	tests/test_compat_signatures.py tests/test_compat_api.py tests/test_sdk_bindings.py \
	tests/test_lifecycle.py tests/test_testing_kit.py tests/test_cluster.py tests/test_small_stacks.py \
	tests/test_cli.py tests/test_streaming.py tests/test_auth_audit_stable.py tests/test_official_newer.py \
	tests/test_stores.py tests/test_examples_newer.py tests/test_scp_decorators.py tests/test_metrics.py \
	tests/test_durable.py tests/test_durable_cluster.py
PLATFORM_PYTEST_ARGS ?= -q -rf -m "not slow"

.PHONY: run test test-platforms smoke-debian bench docs dist setup run-deps test-deps clean

# A taken port is one line naming the variable to change (ORTHANC_PY_PORT_SETTINGS
# tells orthanc-py how this target names its ports).
run: run-deps $(VENV)/.installed
	@ORTHANC_PY_PORT_SETTINGS="HTTP_PORT=N DICOM_PORT=N" \
	  $(VENV)/bin/orthanc-py run $(SCRIPT) --http-port $(HTTP_PORT) --dicom-port $(DICOM_PORT)

test: setup $(DEBIAN_VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory smoke-debian

# Each root is made once (again when missing or when its package list
# changes); the roots run at once, each printing its output when it ends.
test-platforms:
	$(call apt_install,debootstrap util-linux)
	$(SUDO) $(PYTHON) tools/debian_root.py test $(ROOTS) --dir $(ROOTS_DIR) -- $(PLATFORM_PYTEST_ARGS) $(PLATFORM_TESTS)

# The smoke subset on Debian's own Python (python3-venv, python3-dev).
smoke-debian: $(DEBIAN_VENV)/.installed
	$(DEBIAN_VENV)/bin/python -m pytest -p no:cacheprovider $(SMOKE_TESTS)

# Requests/s of Python routes against Orthanc's own API and the official plugin (wrk),
# then the cost of SDK calls and of ingest with a stored-instance handler (DCMTK's storescu),
# then what durable change handlers cost on ingest, against the same handlers without durable=True.
bench: setup $(DEBIAN_VENV)/.installed
	$(VENV)/bin/python bench/http_bench.py
	$(VENV)/bin/python bench/sdk_bench.py all --rounds 5
	$(VENV)/bin/python bench/ingest_bench.py --rounds 5

# The Sphinx site, warnings as errors; open docs/_build/html/index.html.
docs: setup
	$(VENV)/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

# The release archives in dist/: the sdist (what a package index serves; pip
# builds the loader from it on the user's machine) and a wheel for this
# machine's Python, both checked by twine.
dist: setup
	rm -rf dist
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/python -m twine check --strict dist/*

setup: test-deps $(VENV)/.installed $(VENV)/wheelhouse/.downloaded

run-deps:
	$(call apt_install,$(RUN_PACKAGES) $(shell $(HAVE_ORTHANC) || echo orthanc) \
	  $(shell $(PYTHON_READY) || echo $(PYTHON_PACKAGES)))

test-deps:
	$(call apt_install,$(TEST_PACKAGES))

PACKAGE_SOURCES := pyproject.toml CMakeLists.txt $(wildcard loader/*.c loader/*.h)

# `make run` installs the package alone; `make test` (setup) adds the test extras.
$(VENV)/.installed: $(PACKAGE_SOURCES)
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-extras: $(VENV)/.installed
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# The build backend's wheels, for the test that installs the sdist offline.
$(VENV)/wheelhouse/.downloaded: pyproject.toml $(VENV)/.test-extras
	$(VENV)/bin/python -m pip download --quiet --dest $(VENV)/wheelhouse 'scikit-build-core>=0.10'
	touch $@

# Not editable: the smoke subset runs the package as a Debian user installs it.
$(DEBIAN_VENV)/.installed: $(PACKAGE_SOURCES) $(shell find orthanc_py orthanc -name "*.py" -o -name "*.pyi")
	[ -x $(DEBIAN_VENV)/bin/python ] || $(DEBIAN_PYTHON) -m venv $(DEBIAN_VENV)
	$(DEBIAN_VENV)/bin/python -m pip install --quiet '.[testing]' hypothesis pydicom
	touch $@

clean:
	rm -rf $(VENV) $(DEBIAN_VENV) $(ROOTS_DIR) build dist .pytest_cache .hypothesis docs/_build
