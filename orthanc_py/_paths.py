# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the installed loader (the Orthanc plugin file) is."""

from __future__ import annotations

import importlib.resources
import os
import sysconfig

LOADER_NAME = "libOrthancPy.so"


def plugin_path() -> str:
    """The absolute path of the loader: the value for Orthanc's ``Plugins`` option.

    :raises FileNotFoundError: when the package was installed without its
        loader (for example copied rather than installed with pip).
    """
    candidates = []
    try:
        candidates.append(str(importlib.resources.files("orthanc_py") / LOADER_NAME))
    except (ModuleNotFoundError, TypeError):
        pass
    # An editable install keeps the Python files in the source tree and the
    # built loader in site-packages.
    for scheme_path in ("platlib", "purelib"):
        candidates.append(os.path.join(sysconfig.get_paths()[scheme_path], "orthanc_py", LOADER_NAME))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise FileNotFoundError(
        f"the orthanc_py loader ({LOADER_NAME}) is not installed next to the package; "
        "reinstall with `pip install orthanc-py` (or `pip install -e .` in a checkout)"
    )
