# SPDX-License-Identifier: GPL-3.0-or-later
"""The release archives, built and installed as a user would install them.

``make dist`` builds an sdist and a wheel and has twine check them; here the
same build runs offline (``--no-isolation``, against the build backend the
test extras install), and the sdist is installed into a fresh venv with the
Orthanc SDK headers out of reach (a private mount namespace hides
``/usr/include/orthanc``), its build backend taken from the wheels that
``make setup`` downloads beside the venv. Then that venv's ``orthanc-py
doctor`` runs, and a real Orthanc loads its loader and answers a route.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

VERSION = importlib.metadata.version("orthanc-py")
# Filled by `make setup` (pip download of the build backend), read with --no-index.
WHEELHOUSE = Path(sys.prefix) / "wheelhouse"
SDK_HEADERS = Path("/usr/include/orthanc")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # As make dist: the sdist first, then the wheel built from that sdist.
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_dist_builds_an_sdist_and_a_wheel_that_twine_accepts(dist: Path) -> None:
    sdist = dist / f"orthanc_py-{VERSION}.tar.gz"
    (wheel,) = dist.glob(f"orthanc_py-{VERSION}-*.whl")
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "CMakeLists.txt", "LICENSE", "README.md", "loader/loader.c",
            "loader/orthanc_sdk_subset.h", "orthanc_py/__init__.py", "orthanc/__init__.pyi"} <= names
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"orthanc_py/libOrthancPy.so", "orthanc_py/py.typed", "orthanc/__init__.py", "orthanc/__init__.pyi",
            f"orthanc_py-{VERSION}.dist-info/licenses/LICENSE"} <= names


def test_the_pages_name_the_archive_of_this_version() -> None:
    # The install commands name the release archive: they must name this one.
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst"))]
    named = {
        (page.name, name) for page in pages for name in re.findall(r"orthanc_py-[\w.]+?\.tar\.gz", page.read_text())
    }
    assert {page for page, _ in named} >= {"README.md", "quickstart.rst", "deployment.rst", "migration.rst"}
    assert {name for _, name in named} == {f"orthanc_py-{VERSION}.tar.gz"}, named


def test_the_testing_extra_brings_pytest(dist: Path) -> None:
    # pip install 'orthanc-py[testing]': the pytest plugin of orthanc_py.testing, with pytest.
    (wheel,) = dist.glob(f"orthanc_py-{VERSION}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"orthanc_py-{VERSION}.dist-info/METADATA").decode()
    assert "Provides-Extra: testing" in metadata.splitlines()
    testing = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "testing" in line]
    assert testing == ['Requires-Dist: pytest>=8; extra == "testing"'], testing


def test_the_pages_install_what_pip_can_install() -> None:
    # `pip install ./orthanc_py` in a checkout names the package folder, which pip
    # cannot install: a local argument is the checkout itself or a release archive.
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.rst")),
             *sorted((REPO / "examples").glob("*/README.md"))]
    local = [
        (page.name, argument) for page in pages
        for argument in re.findall(r"pip install (?:-\S+ )*([^\s`]+)", page.read_text())
        if argument.strip("'\"").startswith(".")
    ]
    assert {page for page, _ in local} >= {"README.md", "quickstart.rst", "deployment.rst"}
    for page, argument in local:
        path = re.sub(r"\[\w+\]$", "", argument.strip("'\"").rstrip(";,"))  # an extra too: '.[testing]'
        if path.endswith(".tar.gz"):
            assert path == f"./orthanc_py-{VERSION}.tar.gz", (page, argument)
        else:
            assert (REPO / path / "pyproject.toml").is_file(), f"{page}: pip install {argument} is no project"


HIDE_SDK_HEADERS = f"""
if [ -d {SDK_HEADERS} ]; then mount -t tmpfs -o size=1m none {SDK_HEADERS} || exit 97; fi
[ ! -e {SDK_HEADERS}/OrthancCPlugin.h ] || exit 98
exec "$@"
"""

ROUTE = """
from orthanc_py import route

@route("/from-the-sdist")
def hello(request):
    return "installed from the sdist"
"""


def test_the_sdist_installs_in_a_fresh_venv_without_the_sdk_headers_and_serves_a_route(
    dist: Path, tmp_path: Path, make_orthanc
) -> None:
    assert any(WHEELHOUSE.glob("scikit_build_core-*.whl")), (
        f"no scikit-build-core wheel in {WHEELHOUSE}: `make setup` downloads the build backend there"
    )
    assert shutil.which("unshare"), "unshare (Debian: util-linux) is needed to hide the SDK headers"
    venv = tmp_path / "fresh venv"  # a space in the path, as users have
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)  # pip from ensurepip
    install = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", HIDE_SDK_HEADERS, "sh",
         str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index",
         "--find-links", str(WHEELHOUSE), str(dist / f"orthanc_py-{VERSION}.tar.gz")],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert f"Successfully installed orthanc-py-{VERSION}" in install.stdout

    cli = str(venv / "bin" / "orthanc-py")
    doctor = subprocess.run([cli, "doctor"], capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert f"venv {venv}" in doctor.stdout
    assert f"loader version {VERSION}, package version {VERSION}" in doctor.stdout
    assert "all good" in doctor.stdout
    loader = subprocess.run([cli, "plugin-path"], capture_output=True, text=True, timeout=60).stdout.strip()
    assert Path(loader).is_relative_to(venv)

    script = tmp_path / "app.py"
    script.write_text(ROUTE)
    server = make_orthanc(script=script, plugin=loader)
    assert server.get("/from-the-sdist").text == "installed from the sdist"
    assert f"orthanc_py {VERSION} on Python" in server.log
    assert f"({venv})" in server.log
    server.stop()

    # A broken installation: doctor's fix is a command that works as printed
    # (pip told to read the wheelhouse, as it would read the package index).
    Path(loader).unlink()
    broken = subprocess.run([cli, "doctor"], capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1
    assert "PROBLEM loader not found" in broken.stdout
    fix = next(line for line in broken.stdout.splitlines() if line.strip().startswith("fix: the orthanc_py loader"))
    command = fix.split("reinstall orthanc-py: ", 1)[1]
    assert command == f"'{venv}/bin/python' -m pip install --force-reinstall {dist / f'orthanc_py-{VERSION}.tar.gz'}"
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=600,
                   env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)})
    assert "all good" in subprocess.run([cli, "doctor"], capture_output=True, text=True, timeout=120).stdout
