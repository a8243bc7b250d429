# SPDX-License-Identifier: GPL-3.0-or-later
"""The version of orthanc_py, as installed.

The one source of the version is ``pyproject.toml``: pip records it in the
package's metadata, and the build passes it to the loader
(``OrthancPluginGetVersion``).
"""

from __future__ import annotations

import importlib.metadata


def _installed_version() -> str:
    try:
        return importlib.metadata.version("orthanc-py")
    except importlib.metadata.PackageNotFoundError:  # a checkout imported without being installed
        return "0+unknown"


__version__ = _installed_version()
