# SPDX-License-Identifier: GPL-3.0-or-later
"""The package type-checks under mypy's strict mode and passes ruff: part of the test command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_passes_over_the_package():
    result = run("mypy", "--strict", "orthanc_py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes_over_the_package():
    result = run("ruff", "check", "orthanc_py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_is_marked_as_typed():
    assert (ROOT / "orthanc_py" / "py.typed").is_file()
