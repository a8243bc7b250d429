# SPDX-License-Identifier: GPL-3.0-or-later
"""The code checks of the test command: mypy's strict mode, ruff, the import layers, module sizes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orthanc_py"
# Written by tools/gen_sdk.py from the SDK header: as long as the SDK is.
GENERATED = {PACKAGE / "_sdk.py", PACKAGE / "_enums.py", PACKAGE / "_sdk_calls.py"}
MAX_MODULE_LINES = 800


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_passes_over_the_package():
    result = run("mypy", "--strict", "orthanc_py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes_over_the_package():
    result = run("ruff", "check", "orthanc_py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_keep_the_layers_and_make_no_cycle():
    # The contracts are in pyproject.toml ([tool.importlinter]).
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint_imports, "lint-imports not found: pip install -e '.[test]'"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_no_hand_written_module_is_over_800_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
        if path not in GENERATED
    }
    assert len(sizes) > 20, sizes  # the walk found the package
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"split these modules (at most {MAX_MODULE_LINES} lines each): {too_long}"


def test_the_package_is_marked_as_typed():
    assert (ROOT / "orthanc_py" / "py.typed").is_file()
