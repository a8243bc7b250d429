# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that start real Orthanc servers with orthanc_py loaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import settings

from orthanc_py.server import OrthancServer

# In CI, the same examples every run: a failure there can be replayed here.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

pytest_plugins = ["pytester", "tests.ci_skips"]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture
def make_orthanc(orthanc_factory: Callable[..., OrthancServer]) -> Callable[..., OrthancServer]:
    """The testing kit's ``orthanc_factory`` (the project's own tests use the kit users get)."""
    return orthanc_factory


def pytest_report_header(config: pytest.Config) -> str:
    from orthanc_py import plugin_path
    from orthanc_py.server import OrthancNotFoundError, find_orthanc

    try:
        orthanc = find_orthanc()
    except OrthancNotFoundError as error:
        orthanc = str(error)
    return f"orthanc_py loader: {plugin_path()}; Orthanc: {orthanc}"


from .fixtures_dicom import storescp  # noqa: E402,F401  (the DCMTK C-STORE receiver fixture)
from .official import plugin  # noqa: E402,F401  (the tests that run a script in orthanc_py and in the official plugin)
