# SPDX-License-Identifier: GPL-3.0-or-later
"""Sphinx configuration of orthanc_py's documentation.

Build it with ``make docs``, or::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is downloaded while building (no intersphinx): the API reference
imports ``orthanc_py`` and ``orthanc`` from the venv the build runs in.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the checkout's orthanc_py, even without an install

project = "orthanc_py"
author = "orthanc_py developers"
copyright = "orthanc_py developers; GPL-3.0-or-later"


def _version() -> str:
    # pyproject.toml holds the one version: read there, installed or not.
    import re

    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as source:
        match = re.search(r'^version = "([^"]+)"', source.read(), re.MULTILINE)
    assert match, "pyproject.toml names no version"
    return match.group(1)


release = version = _version()

extensions = [
    "sphinx.ext.autodoc",
    "sphinxarg.ext",  # sphinx-argparse: the CLI reference, from orthanc_py.cli.build_parser()
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # code blocks wrap their long lines

html_theme = "alabaster"
html_title = f"orthanc_py {release}"
html_theme_options = {
    "description": "Orthanc plugins in Python, in your own venv",
    "fixed_sidebar": False,
    # A 1280-pixel screen holds the page, its text as wide as the space
    # left by the sidebar (no 800-pixel cap); code wraps beyond (_static/custom.css).
    "page_width": "1240px",
    "body_max_width": "none",
}

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
highlight_language = "python3"
# Curly quotes and ellipses, but no dashes: "--http-port" must stay as typed.
smartquotes_action = "qe"

# Objects that orthanc_py makes and hands to a script's handlers: a script
# never calls their constructors, whose parameters are orthanc_py's own
# (an Orthanc request view, the address of an Orthanc instance...). The
# reference shows their attributes and methods, not how they are built.
MADE_BY_ORTHANC_PY = {
    "orthanc_py.Request",
    "orthanc_py.FilterRequest",
    "orthanc_py.Change",
    "orthanc_py.StoredInstance",
    "orthanc_py.ReceivedInstance",
    "orthanc_py.FindQuery",
    "orthanc_py.WorklistQuery",
    "orthanc_py.MoveRequest",
    "orthanc_py.Connection",
    "orthanc_py.rest.RestError",
    "orthanc_py.server.HttpAnswer",
}


# The pytest fixtures of the testing kit: a test names them as parameters and
# never calls them, and their own parameters are other fixtures (pytest's
# ``request``, ``tmp_path_factory``...), which say nothing to a reader. The
# reference shows what a test gets instead: the server, or how to call the
# factory (as the first line of each docstring says).
FIXTURES = {
    "orthanc_py.testing.orthanc": ("()", "OrthancServer"),
    "orthanc_py.testing.orthanc_factory": ("(script=None, config=None, start=True, **options)", "OrthancServer"),
    "orthanc_py.testing.orthanc_cluster_factory": (
        "(script=None, nodes=2, config=None, balancer=True, **options)", "OrthancCluster"),
}


def _hide_internal_constructor(app, what, name, obj, options, signature, return_annotation):  # type: ignore[no-untyped-def]
    if what in ("class", "exception") and name in MADE_BY_ORTHANC_PY:
        return "", None
    return FIXTURES.get(name)


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-signature", _hide_internal_constructor)
