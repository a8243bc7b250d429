# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc's plugin SDK for Python scripts, compatible with the official ``orthanc`` module.

Provided by orthanc_py: scripts written for the official Python plugin run unchanged.
"""

from orthanc_py._compat import *  # noqa: F401,F403
from orthanc_py._compat import __all__  # noqa: F401
