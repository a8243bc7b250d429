# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the installed loader (the Orthanc plugin file) is, how to install it again, and which other
plugins embed Python."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import json
import os
import shlex
import sys
import sysconfig
import urllib.parse
import urllib.request

LOADER_NAME = "libOrthancPy.so"


def plugin_path() -> str:
    """The absolute path of the loader: the value for Orthanc's ``Plugins`` option.

    :raises FileNotFoundError: when the package was installed without its
        loader (for example copied rather than installed with pip).
    """
    candidates = []
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        candidates.append(str(importlib.resources.files("orthanc_py") / LOADER_NAME))
    # An editable install keeps the Python files in the source tree and the
    # built loader in site-packages.
    for scheme_path in ("platlib", "purelib"):
        candidates.append(os.path.join(sysconfig.get_paths()[scheme_path], "orthanc_py", LOADER_NAME))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(
        f"the orthanc_py loader ({LOADER_NAME}) is not installed next to the package; "
        f"reinstall orthanc-py: {reinstall_command()}"
    )


def other_python_plugins(entries: object, loader: str) -> list[str]:
    """The plugins among Orthanc's ``Plugins`` entries, other than ``loader``, that embed Python.

    One process holds one interpreter: the official Python plugin (or a
    second copy of orthanc_py) beside this one makes Python abort when the
    second of them starts it. Entries are files or folders, as in Orthanc's
    configuration; a folder's shared libraries are looked at, not its
    sub-folders, as Orthanc loads them.
    """
    if not isinstance(entries, list):
        return []
    mine = os.path.realpath(loader)
    found = []
    for entry in entries:
        if not isinstance(entry, str):
            continue
        paths = [entry]
        if os.path.isdir(entry):
            paths = sorted(os.path.join(entry, name) for name in os.listdir(entry) if name.endswith(".so"))
        for path in paths:
            if os.path.realpath(path) == mine or not os.path.isfile(path):
                continue
            try:
                with open(path, "rb") as library:
                    content = library.read()
            except OSError:
                continue
            if b"Py_InitializeEx" in content or b"Py_InitializeFromConfig" in content:
                found.append(path)
    return found


def install_source() -> tuple[str, bool]:
    """What pip installed orthanc-py from, and whether it was an editable install.

    pip records the checkout folder, archive or repository URL it installed
    from in the package's ``direct_url.json``; without it (an install from a
    package index), the source is the name ``orthanc-py``.
    """
    try:
        text = importlib.metadata.distribution("orthanc-py").read_text("direct_url.json")
        record = json.loads(text) if text else {}
    except (importlib.metadata.PackageNotFoundError, ValueError):
        record = {}
    url = record.get("url", "")
    if not url:
        return "orthanc-py", False
    editable = bool(record.get("dir_info", {}).get("editable"))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return urllib.request.url2pathname(parts.path), editable
    vcs = record.get("vcs_info", {}).get("vcs")  # pip install git+https://...
    return (f"{vcs}+{url}" if vcs else url), editable


def reinstall_command(python: str = "") -> str:
    """The pip command that installs this orthanc-py again, from where it came from."""
    source, editable = install_source()
    pip = f"{shlex.quote(python or sys.executable)} -m pip install"
    if editable:
        return f"{pip} -e {shlex.quote(source)}"
    return f"{pip} --force-reinstall {shlex.quote(source)}"
