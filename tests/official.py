# SPDX-License-Identifier: GPL-3.0-or-later
"""What the tests of the ``orthanc`` module's families share: starting a script, reading back what it saw."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orthanc_py.server import OrthancServer

OFFICIAL = "/usr/share/orthanc/plugins/libOrthancPython.so"
DCMTK_TIMEOUT = 60
DATA = Path(__file__).resolve().parent / "data"


def official_plugin_version() -> str | None:
    """The major.minor version of Debian's ``orthanc-python`` here (``"4.0"``, ``"7.1"``), or ``None``."""
    try:
        answer = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "orthanc-python"],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    match = re.match(r"(\d+\.\d+)", answer.stdout.strip())
    return match.group(1) if match else None


def official_signatures_path(version: str | None = None) -> Path:
    """The measured argument lists of the official plugin ``version`` (default: the one installed here)."""
    return DATA / f"official-plugin-{version or official_plugin_version() or '4.0'}-signatures.json"

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu, findscu, movescu) is not installed"
)


@pytest.fixture(params=["ours", "official"])
def plugin(request: pytest.FixtureRequest) -> str | None:
    """``None`` for orthanc_py's loader, or the official plugin's path."""
    if request.param == "ours":
        return None
    if not os.path.exists(OFFICIAL):
        pytest.skip("the official Python plugin (Debian orthanc-python) is not installed")
    return OFFICIAL


# A REST route that answers the script's RECORDED dict as JSON.
RECORDER = """
import json
import orthanc

RECORDED = {}

def Recorded(output, uri, **request):
    output.AnswerBuffer(json.dumps(RECORDED), "application/json")

orthanc.RegisterRestCallback("/recorded", Recorded)
"""


def start(make_orthanc: Callable[..., OrthancServer], plugin: str | None, script: str, **kwargs: Any) -> OrthancServer:
    """Starts ``script`` after :data:`RECORDER`, in orthanc_py (``plugin=None``) or in the official plugin."""
    return make_orthanc(RECORDER + script, plugin=plugin, **kwargs)


def recorded(server: OrthancServer) -> Any:
    return server.get_json("/recorded")


def dcmtk(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=DCMTK_TIMEOUT)


def storescu(server: OrthancServer, path: Path, aet: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aet", aet, "-aec", "ORTHANC", "127.0.0.1", str(server.dicom_port), str(path))


def patient_ids(server: OrthancServer) -> list[str]:
    return sorted(
        server.get_json(f"/instances/{i}/simplified-tags")["PatientID"] for i in server.get_json("/instances")
    )


def wait_for_job(server: OrthancServer, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Polls ``/jobs/{id}`` until the job is over; returns its last state."""
    deadline = time.monotonic() + timeout
    while True:
        job = server.get_json(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)
