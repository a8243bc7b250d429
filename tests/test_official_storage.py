# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage area of the ``orthanc`` module.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from orthanc_py import _compat

from .dicom import make_dicom
from .official import (
    recorded,
    start,
)

# --- storage area -----------------------------------------------------------------------

STORAGE = """
import hashlib
import threading

FILES = {}
LOCK = threading.Lock()

def Create(uuid, contentType, data):
    with LOCK:
        FILES[uuid] = (contentType, data)
    RECORDED.setdefault("create", []).append([type(uuid).__name__, type(contentType).__name__,
                                              type(data).__name__])

def Read(uuid, contentType):
    RECORDED["reads"] = RECORDED.get("reads", 0) + 1
    with LOCK:
        return FILES[uuid][1]

def Remove(uuid, contentType):
    with LOCK:
        del FILES[uuid]

def Files(output, uri, **request):
    with LOCK:
        listing = {uuid: [kind, len(data), hashlib.sha256(data).hexdigest()] for uuid, (kind, data) in FILES.items()}
    output.AnswerBuffer(json.dumps(listing), "application/json")

orthanc.RegisterStorageArea(Create, Read, Remove)
orthanc.RegisterRestCallback("/files", Files)
"""


def test_storage_area_keeps_every_file(make_orthanc, plugin):
    # No storage cache: every download goes through read().
    server = start(make_orthanc, plugin, STORAGE, config={"MaximumStorageCacheSize": 0})
    dicom = make_dicom(patient_id="STORED")
    answer = server.post("/instances", dicom)
    assert answer.status == 200, answer.text
    instance = answer.json()["ID"]

    files = server.get_json("/files")
    kinds = sorted(kind for kind, _, _ in files.values())
    assert _compat.ContentType.DICOM in kinds
    assert [hashlib.sha256(dicom).hexdigest()] == [digest for kind, _, digest in files.values()
                                                   if kind == _compat.ContentType.DICOM]
    assert recorded(server)["create"][0] == ["str", "int", "bytes"]
    for uuid in files:  # nothing went to Orthanc's own storage folder
        assert not list((Path(server.workdir) / "storage").rglob(uuid))

    download = server.get(f"/instances/{instance}/file")
    assert download.status == 200
    assert download.body == dicom
    assert recorded(server).get("reads", 0) >= 1

    assert server.request("DELETE", f"/instances/{instance}").status == 200
    assert server.get_json("/files") == {}
    assert server.get(f"/instances/{instance}/file").status == 404
