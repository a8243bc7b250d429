# SPDX-License-Identifier: GPL-3.0-or-later
"""The README's ``make run`` and ``make test``: what each installs, and what ``make run`` says.

Debian's package database is stood in for by a ``dpkg-query`` that knows the
packages a test names, and ``SUDO=echo`` prints the apt-get commands instead
of running them: the Makefile's own decisions, on this machine's Orthanc.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orthanc_py.server import free_port

from .conftest import REPO

RUN_SET = ["gcc", "libc6-dev"]
TEST_ONLY = ["orthanc-dev", "cmake", "dcmtk", "orthanc-python", "python3-pydicom", "python3-pil", "chromium", "wrk",
             "postgresql", "orthanc-postgresql", "nginx-light"]


def make(tmp_path: Path, *args: str, installed: tuple[str, ...] = (), path: str = "") -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    dpkg = bin_dir / "dpkg-query"
    # dpkg-query -W -f='${db:Status-Status}' PACKAGE: "installed" for the packages given here.
    dpkg.write_text("#!/bin/sh\nfor p; do :; done\ncase ' " + " ".join(installed) + " ' in\n"
                    "  *\" $p \"*) printf installed; exit 0;;\nesac\nexit 1\n")
    dpkg.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "ORTHANC_BINARY"}
    env["PATH"] = f"{bin_dir}:{path or env['PATH']}"
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "SUDO=echo", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def installing(result: subprocess.CompletedProcess) -> list[str]:
    line = next((line for line in result.stdout.splitlines() if line.startswith("Installing Debian packages:")), "")
    return line.split(":", 1)[1].split() if line else []


def test_make_run_installs_the_compiler_alone_when_orthanc_is_in_usr_sbin(tmp_path):
    if not Path("/usr/sbin/Orthanc").exists():
        pytest.fail("this test reads Debian's /usr/sbin/Orthanc: apt-get install orthanc (make test does)")
    # A user's PATH, without /usr/sbin: Orthanc is found there all the same and not installed again.
    result = make(tmp_path, "run-deps", f"PYTHON={sys.executable}", path="/usr/local/bin:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert installing(result) == RUN_SET
    assert "apt-get install -y gcc libc6-dev" in result.stdout


def test_make_run_adds_the_python_headers_when_python_lacks_them(tmp_path):
    result = make(tmp_path, "run-deps", "PYTHON=/bin/false", installed=("gcc",))
    assert installing(result) == ["libc6-dev", "python3-dev", "python3-venv"]


def test_make_run_installs_nothing_when_everything_is_there(tmp_path):
    result = make(tmp_path, "run-deps", f"PYTHON={sys.executable}", installed=tuple(RUN_SET))
    assert result.returncode == 0, result.stderr
    assert installing(result) == [] and "apt-get" not in result.stdout


def test_make_test_installs_what_the_whole_suite_needs(tmp_path):
    result = make(tmp_path, "test-deps")
    assert result.returncode == 0, result.stderr
    wanted = installing(result)
    assert set(RUN_SET + TEST_ONLY + ["orthanc", "python3-dev", "python3-venv"]) <= set(wanted)
    assert installing(make(tmp_path, "test-deps", installed=tuple(wanted))) == []


@pytest.mark.parametrize("kind", ["HTTP", "DICOM"])
def test_make_run_on_a_taken_port_says_in_one_line_which_variable_to_change(tmp_path, kind):
    with socket.socket() as listener:
        listener.bind(("", 0))  # another program's port, as 38064 may be
        listener.listen()
        port = listener.getsockname()[1]
        ports = {"HTTP": free_port(), "DICOM": free_port(), kind: port}
        # This venv as it is: neither the packages nor the venv are (re)installed here.
        result = make(tmp_path, "-o", "run-deps", "-o", f"{sys.prefix}/.installed", "run", f"VENV={sys.prefix}",
                      f"HTTP_PORT={ports['HTTP']}", f"DICOM_PORT={ports['DICOM']}")
    assert result.returncode != 0
    assert result.stdout == ""
    # orthanc-py's line, then make's own report of the failed recipe, which make always prints.
    line, made = result.stderr.splitlines()
    assert line == f"orthanc-py: error: the {kind} port {port} is already in use; choose another with {kind}_PORT=N"
    assert made.startswith("make: *** [") and made.endswith("Error 3")
