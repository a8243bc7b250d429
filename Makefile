# SPDX-License-Identifier: GPL-3.0-or-later
# The two commands of the README: `make run` and `make test`. Each installs what
# is missing first: Debian's Orthanc and its plugin SDK, a venv, the package.

PYTHON ?= python3
VENV ?= .venv
HTTP_PORT ?= 8042
DICOM_PORT ?= 4242
SCRIPT ?= examples/seed/hello.py
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := orthanc orthanc-dev

.PHONY: run test setup system-deps clean

run: setup
	$(VENV)/bin/orthanc-py run $(SCRIPT) --http-port $(HTTP_PORT) --dicom-port $(DICOM_PORT)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup: system-deps $(VENV)/.installed

# Orthanc (the server the tests drive) and orthanc-dev (OrthancCPlugin.h, which
# the loader is compiled against and the SDK bindings are generated from).
system-deps:
	@if ! command -v Orthanc >/dev/null || [ ! -f /usr/include/orthanc/OrthancCPlugin.h ]; then \
	  echo "Installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEBIAN_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml CMakeLists.txt loader/loader.c
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis
