# SPDX-License-Identifier: GPL-3.0-or-later
"""orthanc_py: write Orthanc plugins in Python, in your own virtual environment."""

from __future__ import annotations

from ._paths import plugin_path

__all__ = ["plugin_path"]
