# SPDX-License-Identifier: GPL-3.0-or-later
"""The filters of the ``orthanc`` module: HTTP requests, received instances, C-STORE, DICOM instances.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

from orthanc_py import _compat

from .dicom import make_dicom
from .official import (
    needs_dcmtk,
    patient_ids,
    recorded,
    start,
    storescu,
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
    action = orthanc.ReceivedInstanceAction
    if patient.endswith("DISCARD"):
        return action.DISCARD, None
    if patient.endswith("MODIFY"):
        # Same length, so the DICOM element lengths stay right.
        return action.MODIFY, dicom.replace(b"Doe^John", b"Mod^Ifed")
    if patient.endswith("RAISE"):
        raise ValueError("received-instance callback failed")
    if patient.endswith("NONE"):
        return None
    if patient.endswith("TEXT"):
        return "keep it"
    if patient.endswith("NOTUPLE"):
        return action.KEEP_AS_IS
    if patient.endswith("UNKNOWN"):
        return 99, None
    if patient.endswith("NOTDICOM"):
        return action.MODIFY, b"this is not a DICOM file"
    if patient.endswith("EMPTY"):
        return action.MODIFY, b""
    return action.KEEP_AS_IS, None

orthanc.RegisterReceivedInstanceCallback(Received)
"""
# What a broken callback returns, and what orthanc_py's log then says of it.
BROKEN_RECEIVED = {
    "RAISE": "ValueError: received-instance callback failed",
    "NONE": "returned NoneType, not a tuple (action, modifiedDicom)",
    "TEXT": "returned str, not a tuple (action, modifiedDicom)",
    "NOTUPLE": "returned int, not a tuple (action, modifiedDicom)",
    "UNKNOWN": "returned the action 99, not an orthanc.ReceivedInstanceAction value",
    "NOTDICOM": None,  # Orthanc itself refuses bytes that are not DICOM (400)
    "EMPTY": "returned MODIFY with an empty file",
}


def test_received_instances_are_kept_modified_or_discarded(make_orthanc, plugin):
    server = start(make_orthanc, plugin, RECEIVED)
    statuses = {}
    for action in ("KEEP", "DISCARD", "MODIFY"):
        answer = server.post("/instances", make_dicom(patient_id=f"RCV-{action}"))
        assert answer.status == 200, answer.text
        statuses[action] = answer.json()["Status"]
    assert statuses == {"KEEP": "Success", "DISCARD": "FilteredOut", "MODIFY": "Success"}
    assert patient_ids(server) == ["RCV-KEEP", "RCV-MODIFY"]
    names = {
        tags["PatientID"]: tags["PatientName"]
        for tags in (server.get_json(f"/instances/{i}/simplified-tags") for i in server.get_json("/instances"))
    }
    assert names == {"RCV-KEEP": "Doe^John", "RCV-MODIFY": "Mod^Ifed"}
    seen = recorded(server)
    assert seen["RCV-KEEP"] == ["bytes", _compat.InstanceOrigin.REST_API]


def test_a_broken_received_instance_callback_refuses_the_instance(make_orthanc):
    # Fails closed: a de-identification callback that breaks must not let the
    # original through. (The official plugin 4.0 stores the instance as
    # received when its callback raises or returns None, text or a bare action.)
    server = start(make_orthanc, None, RECEIVED)
    for case, logged in BROKEN_RECEIVED.items():
        answer = server.post("/instances", make_dicom(patient_id=f"RCV-{case}"))
        assert answer.status in (400, 500), (case, answer.text)
        if logged is not None:
            assert logged in server.log, case
    assert server.get_json("/instances") == [], "nothing a broken callback saw is stored"
    assert "the received-instance callback Received" in server.log
    assert "the instance is refused" in server.log
    assert server.post("/instances", make_dicom(patient_id="RCV-KEEP")).status == 200
    assert patient_ids(server) == ["RCV-KEEP"]


@needs_dcmtk
def test_a_broken_received_instance_callback_fails_the_c_store(make_orthanc, tmp_path):
    server = start(make_orthanc, None, RECEIVED)
    path = tmp_path / "raise.dcm"
    path.write_bytes(make_dicom(patient_id="RCV-RAISE"))
    sent = storescu(server, path)
    assert "Failed" in sent.stdout + sent.stderr or sent.returncode != 0, sent
    assert server.get_json("/instances") == []
    assert "received-instance callback failed" in server.log


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


# --- incoming DICOM instance filter ------------------------------------------------------------

DICOM_FILTER = """
def Filter(instance):
    tags = json.loads(instance.GetInstanceSimplifiedJson())
    patient = tags["PatientID"]
    RECORDED[patient] = [type(instance).__name__, instance.GetInstanceOrigin()]
    if patient == "DF-REFUSE":
        return False
    if patient == "DF-ZERO":
        return 0
    if patient == "DF-RAISE":
        raise ValueError("DICOM instance filter failed")
    if patient == "DF-WRONG":
        return "yes"
    return True

orthanc.RegisterIncomingDicomInstanceFilter(Filter)
try:
    orthanc.RegisterIncomingDicomInstanceFilter(Filter)
except RuntimeError as error:
    RECORDED["second"] = type(error).__name__
"""


def test_dicom_instance_filter_refuses_rest_uploads(make_orthanc):
    server = start(make_orthanc, None, DICOM_FILTER)
    answers = {patient: server.post("/instances", make_dicom(patient_id=patient))
               for patient in ("DF-ACCEPT", "DF-REFUSE", "DF-ZERO", "DF-RAISE", "DF-WRONG")}
    assert answers["DF-ACCEPT"].status == 200
    assert answers["DF-ACCEPT"].json()["Status"] == "Success"
    for refused in ("DF-REFUSE", "DF-ZERO"):
        assert answers[refused].status == 200, answers[refused].text
        assert answers[refused].json()["Status"] == "FilteredOut"
    for failed in ("DF-RAISE", "DF-WRONG"):
        assert answers[failed].status >= 400, f"{failed}: a failing filter lets nothing through"
        assert "DICOM instance filter failed" not in answers[failed].text
    stored = [server.get_json(f"/instances/{i}/simplified-tags")["PatientID"] for i in server.get_json("/instances")]
    assert stored == ["DF-ACCEPT"]
    assert "DICOM instance filter failed" in server.log
    assert "returned 'yes'" in server.log
    seen = recorded(server)
    assert seen["second"] == "RuntimeError"
    assert seen["DF-ACCEPT"] == ["DicomInstance", _compat.InstanceOrigin.REST_API]
