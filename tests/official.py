# SPDX-License-Identifier: GPL-3.0-or-later
"""What the tests of the ``orthanc`` module's families share: starting a script, reading back what it saw."""

from __future__ import annotations

import os
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
