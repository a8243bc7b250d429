# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage area of the ``orthanc`` module.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others check what the
official plugin does not have or does otherwise, in orthanc_py only. What a
callback received is read back through a REST route of the script.

``RegisterStorageArea3`` and the custom data functions need Orthanc 1.12.8:
on an older Orthanc the tests check their refusal (orthanc_py:
``SdkVersionError``; an official plugin without them: ``AttributeError``)
and that Orthanc then keeps its files itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from orthanc_py import _compat
from orthanc_py.server import OrthancServer

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


# --- storage area with custom data (Orthanc 1.12.8) ------------------------------------------------------

# On an older Orthanc, orthanc_py refuses RegisterStorageArea3 with
# SdkVersionError, and the official plugin before 7.0 does not have it
# (AttributeError): Orthanc then keeps its files itself.
CUSTOM_DATA_SDK = (1, 12, 8)


def release_of(server: OrthancServer) -> tuple[int, ...]:
    """The version of the running Orthanc as numbers: ``(1, 12, 7)``."""
    return tuple(int(part) for part in server.get_json("/system")["Version"].split(".")[:3])


def refusal(plugin: str | None, server: OrthancServer, function: str) -> list[str]:
    """What the script recorded when ``function`` was refused: orthanc_py's error, or the official plugin's."""
    if plugin is None:
        version = server.get_json("/system")["Version"]
        return ["SdkVersionError", f"{function}() needs Orthanc 1.12.8 or newer; this Orthanc is {version}"]
    return ["AttributeError", f"module 'orthanc' has no attribute '{function}'"]


STORAGE3 = """
import threading

FILES = {}
LOCK = threading.Lock()
MODE = {"create": "", "read": ""}

def attempt(function, *arguments):
    # The result of orthanc.<function>(), or the error: [type, text] (the text of an OrthancException is its
    # description).
    try:
        result = getattr(orthanc, function)(*arguments)
    except Exception as error:
        if isinstance(error, orthanc.OrthancException):
            kind = "OrthancException" if type(error) is orthanc.OrthancException else type(error).__name__
            return [kind, error.args[1]]
        return [type(error).__name__, str(error)]
    return [type(result).__name__, result.decode() if isinstance(result, bytes) else result]

def Create(uuid, contentType, compressionType, data, dicomInstance):
    # The official plugin gives other attachments a DicomInstance of a NULL pointer: only DICOM files are read.
    RECORDED.setdefault("create", []).append(
        [type(uuid).__name__, contentType, compressionType, type(data).__name__, len(data),
         type(dicomInstance).__name__, dicomInstance.GetInstanceSize() if contentType == 1 else None])
    mode = MODE["create"]
    if mode == "raise":
        raise ValueError("create failed")
    if mode == "full":
        return orthanc.ErrorCode.NOT_ENOUGH_MEMORY, None
    if mode == "text":
        return "custom"
    with LOCK:
        FILES[uuid] = data
    return orthanc.ErrorCode.SUCCESS, None if mode == "none" else ("custom:" + uuid).encode()

def Read(uuid, contentType, rangeStart, size, customData):
    RECORDED.setdefault("read", []).append([contentType, rangeStart, size, type(customData).__name__,
                                            customData.decode()])
    with LOCK:
        data = FILES.get(uuid) or ADOPTED.get(customData)
    mode = MODE["read"]
    if mode == "missing":
        return orthanc.ErrorCode.UNKNOWN_RESOURCE, b""
    if mode == "short":
        return orthanc.ErrorCode.SUCCESS, data[:10]
    return orthanc.ErrorCode.SUCCESS, data[rangeStart:rangeStart + size]

def Remove(uuid, contentType, customData):
    RECORDED.setdefault("remove", []).append([contentType, customData.decode()])
    with LOCK:
        FILES.pop(uuid, None)
    return orthanc.ErrorCode.SUCCESS

def Custom(output, uri, **request):
    uuid = request["groups"][0]
    if request["method"] == "POST":
        value = None if request["body"] == b"None" else request["body"]
        RECORDED.setdefault("set", []).append(attempt("SetAttachmentCustomData", uuid, value))
    output.AnswerBuffer(json.dumps(attempt("GetAttachmentCustomData", uuid)), "application/json")

def Mode(output, uri, **request):
    MODE.update(json.loads(request["body"]))
    output.AnswerBuffer("{}", "application/json")

ADOPTED = {}

def Adopt(output, uri, **request):
    key = ("adopted/%d" % len(ADOPTED)).encode()
    ADOPTED[key] = request["body"]
    result = orthanc.AdoptDicomInstance(request["body"], key)
    output.AnswerBuffer(json.dumps([[type(value).__name__ for value in result], list(result)]), "application/json")

orthanc.RegisterRestCallback("/custom/(.*)", Custom)
orthanc.RegisterRestCallback("/mode", Mode)
orthanc.RegisterRestCallback("/adopt", Adopt)
try:
    orthanc.RegisterStorageArea3(Create, Read, Remove)
except (AttributeError, orthanc.OrthancException) as error:
    RECORDED["refused"] = [type(error).__name__, str(error)]
"""

# No storage cache: every download goes through read().
NO_CACHE = {"MaximumStorageCacheSize": 0}


def dicom_uuid(server: OrthancServer, instance: str) -> str:
    return server.get_json(f"/instances/{instance}/attachments/dicom/info")["Uuid"]


def test_storage_area3_keeps_custom_data_with_each_file(make_orthanc, plugin):
    server = start(make_orthanc, plugin, STORAGE3, config=NO_CACHE)
    dicom = make_dicom(patient_id="CUSTOM")
    answer = server.post("/instances", dicom)
    assert answer.status == 200, answer.text
    instance = answer.json()["ID"]
    uuid = dicom_uuid(server, instance)
    download = server.get(f"/instances/{instance}/file")
    assert download.status == 200
    assert download.body == dicom
    seen = recorded(server)
    if release_of(server) < CUSTOM_DATA_SDK:
        # Orthanc kept the file itself; the custom data functions are refused too.
        assert seen["refused"][0] == refusal(plugin, server, "RegisterStorageArea3")[0]
        assert refusal(plugin, server, "RegisterStorageArea3")[1] in seen["refused"][1]
        assert server.get_json(f"/custom/{uuid}") == refusal(plugin, server, "GetAttachmentCustomData")
        assert "create" not in seen
        return

    assert "refused" not in seen
    # Orthanc gives the file uncompressed (CompressionType.NONE), with the DICOM instance it holds.
    assert seen["create"] == [["str", 1, 4, "bytes", len(dicom), "DicomInstance", len(dicom)]]
    assert seen["read"][-1] == [1, 0, len(dicom), "bytes", f"custom:{uuid}"]
    assert server.get_json(f"/custom/{uuid}") == ["bytes", f"custom:{uuid}"]

    # A range of the file: read() gets its start and length.
    part = server.get(f"/instances/{instance}/attachments/dicom/data", headers={"Range": "bytes=128-227"})
    assert part.status == 206
    assert part.body == dicom[128:228]
    assert recorded(server)["read"][-1] == [1, 128, 100, "bytes", f"custom:{uuid}"]

    # An attachment that is not DICOM: no instance (orthanc_py gives None). Orthanc tells the storage
    # area of the content types of users as UNKNOWN (0).
    assert server.request("PUT", f"/instances/{instance}/attachments/1025", b"a note").status == 200
    no_instance = "NoneType" if plugin is None else "DicomInstance"
    assert recorded(server)["create"][-1] == ["str", 0, 4, "bytes", 6, no_instance, None]
    note = server.get_json(f"/instances/{instance}/attachments/1025/info")["Uuid"]

    # The custom data changes (None clears it); read() and remove() get the new one.
    assert server.post(f"/custom/{uuid}", "None").json() == ["bytes", ""]
    assert server.post(f"/custom/{uuid}", "moved").json() == ["bytes", "moved"]
    assert server.get(f"/instances/{instance}/file").body == dicom
    assert recorded(server)["read"][-1] == [1, 0, len(dicom), "bytes", "moved"]
    assert recorded(server)["set"] == [["NoneType", None]] * 2

    assert server.request("DELETE", f"/instances/{instance}").status == 200
    assert sorted(recorded(server)["remove"]) == [[0, f"custom:{note}"], [1, "moved"]]
    assert server.get_json(f"/custom/{uuid}") == ["OrthancException", "Unknown resource"]


def test_storage_area3_errors_fail_the_operation(make_orthanc):
    server = start(make_orthanc, None, STORAGE3, config=NO_CACHE)
    if release_of(server) < CUSTOM_DATA_SDK:
        assert recorded(server)["refused"][0] == "SdkVersionError"
        assert refusal(None, server, "RegisterStorageArea3")[1] in recorded(server)["refused"][1]
        # A refused registration leaves nothing behind: Orthanc keeps the files itself.
        assert server.post("/instances", make_dicom(patient_id="OWN")).status == 200
        return

    def upload(create_mode: str, patient: str) -> Any:
        server.post("/mode", json.dumps({"create": create_mode}))
        return server.post("/instances", make_dicom(patient_id=patient))

    # A file the create callback did not keep is not indexed.
    assert upload("raise", "RAISED").status == 500
    assert "create failed" in server.log
    text = upload("text", "TEXT")
    assert text.status == 500
    assert "returned str, not a tuple (errorCode, customData)" in server.log
    # An error code is Orthanc's error for the upload.
    full = upload("full", "FULL")
    assert full.status == 500
    assert full.json()["OrthancError"] == "The server hosting Orthanc is running out of memory"
    assert server.get_json("/instances") == []

    # No custom data: read() gets b"".
    instance = upload("none", "PLAIN").json()["ID"]
    assert server.get_json(f"/custom/{dicom_uuid(server, instance)}") == ["bytes", ""]
    assert server.get(f"/instances/{instance}/file").status == 200
    assert recorded(server)["read"][-1][3:] == ["bytes", ""]

    server.post("/mode", json.dumps({"read": "missing"}))
    assert server.get(f"/instances/{instance}/file").status == 404
    server.post("/mode", json.dumps({"read": "short"}))
    assert server.get(f"/instances/{instance}/file").status == 500
    assert "returned 10 bytes, but Orthanc asked for" in server.log


def test_adopted_instance_is_read_through_its_custom_data(make_orthanc):
    # The official plugin 7.1 has no AdoptDicomInstance.
    server = start(make_orthanc, None, STORAGE3, config=NO_CACHE)
    dicom = make_dicom(patient_id="ADOPTED")
    adopted = server.post("/adopt", dicom)
    if release_of(server) < CUSTOM_DATA_SDK:
        assert adopted.status == 500
        assert refusal(None, server, "AdoptDicomInstance")[1] in server.log
        return
    assert adopted.status == 200, adopted.text
    types, (instance, uuid, status) = adopted.json()
    assert types == ["str", "str", "int"]
    assert status == _compat.StoreStatus.SUCCESS
    assert server.get_json("/instances") == [instance]
    assert dicom_uuid(server, instance) == uuid
    assert "create" not in recorded(server), "an adopted file is not written to the storage area"
    assert server.get_json(f"/custom/{uuid}") == ["bytes", "adopted/0"]
    assert server.get(f"/instances/{instance}/file").body == dicom
    assert recorded(server)["read"][-1] == [1, 0, len(dicom), "bytes", "adopted/0"]

    again = server.post("/adopt", dicom).json()
    assert again[1][0] == instance
    assert again[1][2] == _compat.StoreStatus.ALREADY_STORED


@pytest.mark.parametrize("order", ["2-3", "3-2"])
def test_one_storage_area_is_taken(make_orthanc, order):
    calls = ["orthanc.RegisterStorageArea(create, read, remove)", "orthanc.RegisterStorageArea3(create, read, remove)"]
    if order == "3-2":
        calls.reverse()
    script = f"""
def create(*arguments): return 0, None
def read(*arguments): return 0, b""
def remove(*arguments): return 0

for call in {calls!r}:
    try:
        eval(call)
        RECORDED.setdefault("registered", []).append(call)
    except Exception as error:
        RECORDED.setdefault("errors", []).append([call, type(error).__name__, str(error)])
"""
    server = start(make_orthanc, None, script)
    seen = recorded(server)
    if release_of(server) < CUSTOM_DATA_SDK:
        assert seen["registered"] == [calls[0 if order == "2-3" else 1]]
        ((call, kind, text),) = seen["errors"]
        assert call == calls[1 if order == "2-3" else 0]
        assert kind == "SdkVersionError"
        assert refusal(None, server, "RegisterStorageArea3")[1] in text
        return
    first, second = (name.split("(")[0] for name in calls)
    assert seen["registered"] == calls[:1]
    assert seen["errors"] == [[calls[1], "RuntimeError",
                               f"{second}(): Orthanc takes one storage area, and {first}() registered one already "
                               "(the storage area of create); remove one of them"]]
