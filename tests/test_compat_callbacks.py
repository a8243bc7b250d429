# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters, DICOM SCP handlers and the storage area of the ``orthanc`` module.

Each test loads the same script into a real Orthanc twice: with orthanc_py
and with the official Python plugin (when installed), and checks what a user
sees over HTTP and DICOM (DCMTK's ``storescu``, ``findscu``, ``movescu``).
The scripts only use the standard library, so they also run in the official
plugin's interpreter; what a callback received is read back through a REST
route of the script.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from orthanc_py import _compat
from orthanc_py.server import OrthancServer

from .dicom import make_dicom

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


# --- incoming HTTP request filter ---------------------------------------------------

HTTP_FILTER = """
def Filter(uri, **request):
    if uri == "/recorded":
        return True
    RECORDED[uri] = {key: [type(value).__name__, value] for key, value in request.items()}
    if uri.startswith("/forbidden"):
        return False
    if uri.startswith("/boom"):
        raise ValueError("filter failed")
    if uri.startswith("/not-bool"):
        return 1
    return True

orthanc.RegisterIncomingHttpRequestFilter(Filter)
try:
    orthanc.RegisterIncomingHttpRequestFilter(Filter)
except RuntimeError as error:
    RECORDED["second"] = type(error).__name__
"""


def test_http_filter_accepts_and_refuses(make_orthanc, plugin):
    server = start(make_orthanc, plugin, HTTP_FILTER)
    assert server.get("/system?a=1&b=two", headers={"X-Token": "abc"}).status == 200
    assert server.get("/forbidden/x").status == 403
    assert server.post("/forbidden/post", b"{}").status == 403
    failed = server.get("/boom")
    assert failed.status == 500
    assert "filter failed" not in failed.text
    assert server.get("/not-bool").status == 500, "1 is not True: a filter must answer a bool"
    assert server.get("/system").status == 200, "Orthanc keeps serving"

    seen = recorded(server)
    assert seen["second"] == "RuntimeError"
    system = seen["/system"]
    assert sorted(system) == ["get", "headers", "ip", "method"]
    assert system["method"] == ["int", _compat.HttpMethod.GET]
    assert system["ip"] == ["str", "127.0.0.1"]
    assert system["get"] == ["dict", {}]  # the last /system had no query
    assert system["headers"][0] == "dict"
    assert "host" in system["headers"][1]
    # Query arguments come with GET only; headers have lower-case names.
    post = seen["/forbidden/post"]
    assert "get" not in post
    assert post["method"] == ["int", _compat.HttpMethod.POST]
    assert "filter failed" in server.log  # the traceback is logged, never sent


def test_http_filter_gives_query_arguments_and_headers(make_orthanc, plugin):
    server = start(make_orthanc, plugin, HTTP_FILTER)
    assert server.get("/forbidden/q?a=1&b=two", headers={"X-Token": "abc"}).status == 403
    request = recorded(server)["/forbidden/q"]
    assert request["get"] == ["dict", {"a": "1", "b": "two"}]
    assert request["headers"][1]["x-token"] == "abc"


# --- received instances: keep, modify, discard ------------------------------------------

RECEIVED = """
import re

def Received(dicom, origin):
    patient = re.search(rb"RCV-[A-Z]+", dicom).group(0).decode()
    RECORDED[patient] = [type(dicom).__name__, origin]
    keep = orthanc.ReceivedInstanceAction.KEEP_AS_IS
    if patient.endswith("DISCARD"):
        return orthanc.ReceivedInstanceAction.DISCARD, None
    if patient.endswith("MODIFY"):
        # Same length, so the DICOM element lengths stay right.
        return orthanc.ReceivedInstanceAction.MODIFY, dicom.replace(b"Doe^John", b"Mod^Ifed")
    if patient.endswith("RAISE"):
        raise ValueError("received-instance callback failed")
    if patient.endswith("NOTUPLE"):
        return keep
    return keep, None

orthanc.RegisterReceivedInstanceCallback(Received)
"""


def test_received_instances_are_kept_modified_or_discarded(make_orthanc, plugin):
    server = start(make_orthanc, plugin, RECEIVED)
    statuses = {}
    for action in ("KEEP", "DISCARD", "MODIFY", "RAISE", "NOTUPLE"):
        answer = server.post("/instances", make_dicom(patient_id=f"RCV-{action}"))
        assert answer.status == 200, answer.text
        statuses[action] = answer.json()["Status"]
    assert statuses["DISCARD"] == "FilteredOut"
    assert statuses["KEEP"] == statuses["MODIFY"] == "Success"

    # A failing callback loses nothing: the instance is stored as received.
    assert patient_ids(server) == ["RCV-KEEP", "RCV-MODIFY", "RCV-NOTUPLE", "RCV-RAISE"]
    names = {
        tags["PatientID"]: tags["PatientName"]
        for tags in (server.get_json(f"/instances/{i}/simplified-tags") for i in server.get_json("/instances"))
    }
    assert names == {"RCV-KEEP": "Doe^John", "RCV-MODIFY": "Mod^Ifed", "RCV-NOTUPLE": "Doe^John",
                     "RCV-RAISE": "Doe^John"}
    assert "received-instance callback failed" in server.log

    seen = recorded(server)
    assert seen["RCV-KEEP"] == ["bytes", _compat.InstanceOrigin.REST_API]


@needs_dcmtk
def test_received_instances_from_c_store(make_orthanc, plugin, tmp_path):
    server = start(make_orthanc, plugin, RECEIVED)
    for action in ("MODIFY", "DISCARD"):
        path = tmp_path / f"{action}.dcm"
        path.write_bytes(make_dicom(patient_id=f"RCV-{action}"))
        assert storescu(server, path).returncode == 0
    assert patient_ids(server) == ["RCV-MODIFY"]
    (instance,) = server.get_json("/instances")
    assert server.get_json(f"/instances/{instance}/simplified-tags")["PatientName"] == "Mod^Ifed"
    assert recorded(server)["RCV-MODIFY"] == ["bytes", _compat.InstanceOrigin.DICOM_PROTOCOL]


# --- C-STORE filter -------------------------------------------------------------------

CSTORE_FILTER = """
def Filter(instance):
    tags = json.loads(instance.GetInstanceSimplifiedJson())
    patient = tags["PatientID"]
    RECORDED[patient] = [type(instance).__name__, instance.GetInstanceRemoteAet()]
    if patient == "CS-REFUSE":
        return 0xA700  # the DIMSE status of the refusal: out of resources
    if patient == "CS-RAISE":
        raise ValueError("C-STORE filter failed")
    if patient == "CS-NONE":
        return None
    return 0  # store

orthanc.RegisterIncomingCStoreInstanceFilter(Filter)
"""


@needs_dcmtk
def test_c_store_filter_stores_or_refuses(make_orthanc, plugin, tmp_path):
    server = start(make_orthanc, plugin, CSTORE_FILTER)
    results = {}
    for patient in ("CS-ACCEPT", "CS-REFUSE", "CS-RAISE", "CS-NONE"):
        path = tmp_path / f"{patient}.dcm"
        path.write_bytes(make_dicom(patient_id=patient))
        results[patient] = storescu(server, path, aet="MODALITY")
    assert results["CS-ACCEPT"].returncode == 0
    for refused in ("CS-REFUSE", "CS-RAISE", "CS-NONE"):
        assert results[refused].returncode != 0, f"{refused}: storescu should report the failure"
    assert patient_ids(server) == ["CS-ACCEPT"]
    assert "C-STORE filter failed" in server.log

    # The REST API is not filtered.
    assert server.post("/instances", make_dicom(patient_id="CS-REFUSE")).status == 200
    assert patient_ids(server) == ["CS-ACCEPT", "CS-REFUSE"]
    assert recorded(server)["CS-ACCEPT"] == ["DicomInstance", "MODALITY"]


# --- C-FIND and worklists -----------------------------------------------------------------

FIND = """
import os

FOLDER = os.path.dirname(os.path.abspath(__file__))

def Find(answers, query, issuerAet, calledAet):
    RECORDED["call"] = [type(answers).__name__, type(query).__name__, issuerAet, calledAet]
    RECORDED["query"] = {
        query.GetFindQueryTagName(i): [query.GetFindQueryTagGroup(i), query.GetFindQueryTagElement(i),
                                       query.GetFindQueryValue(i)]
        for i in range(query.GetFindQuerySize())
    }
    if RECORDED["query"].get("PatientID", [0, 0, ""])[2] == "RAISE":
        raise ValueError("C-FIND callback failed")
    for name in ("alice.dcm", "bob.dcm"):
        with open(os.path.join(FOLDER, name), "rb") as source:
            answers.FindAddAnswer(source.read())

def Worklist(answers, query, issuerAet, calledAet):
    RECORDED["worklist"] = [type(answers).__name__, type(query).__name__, issuerAet, calledAet,
                            type(query.WorklistGetDicomQuery()).__name__]
    for name in ("alice.dcm", "bob.dcm"):
        with open(os.path.join(FOLDER, name), "rb") as source:
            item = source.read()
        if query.WorklistIsMatch(item):
            answers.WorklistAddAnswer(query, item)

orthanc.RegisterFindCallback(Find)
orthanc.RegisterWorklistCallback(Worklist)
"""

SCU_MODALITIES = {"DicomModalities": {"scu": ["FINDSCU", "127.0.0.1", 104], "target": ["TARGET", "127.0.0.1", 105]}}


def find_server(make_orthanc: Callable[..., OrthancServer], plugin: str | None, tmp_path: Path) -> OrthancServer:
    server = start(make_orthanc, plugin, FIND, start=False, config=SCU_MODALITIES)
    folder = Path(server.configuration["PythonScript"]).parent
    (folder / "alice.dcm").write_bytes(make_dicom(patient_id="ID-ALICE", patient_name="Alice"))
    (folder / "bob.dcm").write_bytes(make_dicom(patient_id="ID-BOB", patient_name="Bob"))
    return server.start()


def findscu(server: OrthancServer, folder: Path, model: str, *keys: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs ``findscu`` (``model`` is ``-P`` or ``-W``); returns its result and the answers' PatientName.

    The answers are read from the files ``findscu -X`` extracts, not from its log.
    """
    folder.mkdir()
    arguments = [argument for key in keys for argument in ("-k", key)]
    result = dcmtk("findscu", "-v", "-aet", "FINDSCU", "-aec", "ORTHANC", model, "-X", "-od", str(folder),
                   *arguments, "127.0.0.1", str(server.dicom_port))
    names = [str(pydicom.dcmread(path).PatientName) for path in sorted(folder.glob("rsp*.dcm"))]
    return result, names


@needs_dcmtk
def test_find_callback_answers_c_find(make_orthanc, plugin, tmp_path):
    server = find_server(make_orthanc, plugin, tmp_path)
    result, names = findscu(server, tmp_path / "find", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=ID-*",
                            "PatientName")
    assert result.returncode == 0, result.stderr
    assert sorted(names) == ["Alice", "Bob"]
    assert "Final Find Response (Success)" in result.stderr + result.stdout
    seen = recorded(server)
    assert seen["call"] == ["FindAnswers", "FindQuery", "FINDSCU", "ORTHANC"]
    assert seen["query"]["PatientID"] == [0x10, 0x20, "ID-*"]
    assert seen["query"]["QueryRetrieveLevel"] == [0x08, 0x52, "PATIENT"]

    failed, names = findscu(server, tmp_path / "failed", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=RAISE",
                            "PatientName")
    assert names == []
    assert "Failed" in failed.stderr + failed.stdout
    assert "C-FIND callback failed" in server.log


@needs_dcmtk
def test_worklist_callback_answers_matching_items(make_orthanc, plugin, tmp_path):
    server = find_server(make_orthanc, plugin, tmp_path)
    result, names = findscu(server, tmp_path / "worklist", "-W", "PatientName=Alice", "PatientID")
    assert result.returncode == 0, result.stderr
    assert names == ["Alice"], "WorklistIsMatch() keeps Bob out"
    assert recorded(server)["worklist"] == ["WorklistAnswers", "WorklistQuery", "FINDSCU", "ORTHANC", "bytes"]


# --- C-MOVE -----------------------------------------------------------------------------

MOVE = """
def Move(**request):
    RECORDED.setdefault("moves", []).append({key: [type(value).__name__, value] for key, value in request.items()})
    if request["PatientID"] == "RAISE":
        raise ValueError("C-MOVE callback failed")

orthanc.RegisterMoveCallback(Move)
"""


@needs_dcmtk
def test_move_callback_gets_the_request(make_orthanc, plugin):
    server = start(make_orthanc, plugin, MOVE, config=SCU_MODALITIES)

    def movescu(*keys: str) -> subprocess.CompletedProcess[str]:
        arguments = [argument for key in keys for argument in ("-k", key)]
        return dcmtk("movescu", "-v", "-aet", "FINDSCU", "-aec", "ORTHANC", "-aem", "TARGET", "-S",
                     *arguments, "127.0.0.1", str(server.dicom_port))

    ok = movescu("QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID=1.2.3", "AccessionNumber=ACC")
    assert ok.returncode == 0, ok.stderr
    assert "Final Move Response (Success)" in ok.stderr + ok.stdout
    failed = movescu("QueryRetrieveLevel=SERIES", "PatientID=RAISE", "SeriesInstanceUID=4.5")
    assert "Failures" in failed.stderr + failed.stdout
    assert "C-MOVE callback failed" in server.log

    first, second = recorded(server)["moves"]
    assert first == {
        "Level": ["str", "STUDY"],
        "PatientID": ["str", "P1"],
        "AccessionNumber": ["str", "ACC"],
        "StudyInstanceUID": ["str", "1.2.3"],
        "SeriesInstanceUID": ["str", ""],
        "SOPInstanceUID": ["str", ""],
        "OriginatorAET": ["str", "FINDSCU"],
        "SourceAET": ["str", "ORTHANC"],
        "TargetAET": ["str", "TARGET"],
        "OriginatorID": ["int", first["OriginatorID"][1]],
    }
    assert second["Level"] == ["str", "SERIES"]
    assert second["SeriesInstanceUID"] == ["str", "4.5"]


@needs_dcmtk
def test_move_without_a_level_still_reaches_the_callback(make_orthanc):
    # The official plugin fails such a C-MOVE ("Parameter out of range") before
    # calling the script; the SDK allows it, so orthanc_py passes Level "".
    server = start(make_orthanc, None, MOVE, config=SCU_MODALITIES)
    result = dcmtk("movescu", "-v", "-aet", "FINDSCU", "-aec", "ORTHANC", "-aem", "TARGET", "-S",
                   "-k", "StudyInstanceUID=1.2.3", "127.0.0.1", str(server.dicom_port))
    assert "Final Move Response (Success)" in result.stderr + result.stdout
    (move,) = recorded(server)["moves"]
    assert move["Level"] == ["str", ""]
    assert move["StudyInstanceUID"] == ["str", "1.2.3"]


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


# --- outside Orthanc ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "register, arguments",
    [
        (_compat.RegisterIncomingHttpRequestFilter, 1),
        (_compat.RegisterReceivedInstanceCallback, 1),
        (_compat.RegisterIncomingCStoreInstanceFilter, 1),
        (_compat.RegisterFindCallback, 1),
        (_compat.RegisterWorklistCallback, 1),
        (_compat.RegisterMoveCallback, 1),
        (_compat.RegisterStorageArea, 3),
    ],
)
def test_registrations_check_types_and_are_no_ops_outside_orthanc(register, arguments):
    register(*([print] * arguments))  # a worker process re-running the script: nothing happens
    with pytest.raises(TypeError, match=rf"{register.__name__}\(\) argument '\w+' must be callable, not int"):
        register(*([print] * (arguments - 1) + [1]))
    assert register.__module__ == "orthanc"
    assert register.__name__ in _compat.__all__
    assert register.__doc__ and ":raises TypeError:" in register.__doc__
