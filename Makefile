# SPDX-License-Identifier: GPL-3.0-or-later
# The two commands of the README: `make run` and `make test`. Each installs what
# is missing first: Debian's Orthanc and its plugin SDK, a venv, the package.

PYTHON ?= python3
VENV ?= .venv
HTTP_PORT ?= 8042
DICOM_PORT ?= 4242
SCRIPT ?= examples/decorators/rest.py
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# orthanc: the server; orthanc-dev: OrthancCPlugin.h, which the loader is
# compiled against and the SDK bindings are generated from; dcmtk: a real DICOM
# peer for the tests (storescp, findscu...); orthanc-python with python3-pydicom
# and python3-pil: the official plugin, which the tests compare against;
# chromium: the documentation test opens the built site in it.
DEBIAN_PACKAGES := orthanc orthanc-dev dcmtk orthanc-python python3-pydicom python3-pil chromium

.PHONY: run test bench docs setup system-deps clean

run: setup
	$(VENV)/bin/orthanc-py run $(SCRIPT) --http-port $(HTTP_PORT) --dicom-port $(DICOM_PORT)

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Requests/s of Python routes against Orthanc's own API and the official plugin (wrk).
bench: setup
	@command -v wrk >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y wrk; }
	$(VENV)/bin/python bench/http_bench.py

# The Sphinx site, warnings as errors; open docs/_build/html/index.html.
docs: setup
	$(VENV)/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

setup: system-deps $(VENV)/.installed

system-deps:
	@if ! command -v Orthanc >/dev/null || [ ! -f /usr/include/orthanc/OrthancCPlugin.h ] \
	    || ! command -v storescp >/dev/null || [ ! -f /usr/share/orthanc/plugins/libOrthancPython.so ] \
	    || ! /usr/bin/python3 -c "import pydicom, PIL" 2>/dev/null || ! command -v chromium >/dev/null; then \
	  echo "Installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEBIAN_PACKAGES); \
	fi

$(VENV)/.installed: pyproject.toml CMakeLists.txt loader/loader.c
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis docs/_build
