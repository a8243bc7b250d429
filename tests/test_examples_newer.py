# SPDX-License-Identifier: GPL-3.0-or-later
"""The examples of ``examples/newer``: what Orthanc 1.12.6 to 1.13 add, used from the decorators.

Each example is loaded unchanged into a real Orthanc and driven as a user
would. On a row whose Orthanc lacks the service, the test checks what the
user sees there: a buffered answer, or an error at start-up or in the log
that names the version needed.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import urllib.parse
from typing import Callable

import pydicom
import pytest

from orthanc_py.server import OrthancServer, OrthancStartError, find_orthanc, orthanc_version

from .conftest import EXAMPLES
from .dicom import make_dicom, make_study, sop_instance_uids
from .test_scp_decorators import findscu, move_responses, movescu, peer_ip

NEWER = EXAMPLES / "newer"
VERSION = orthanc_version(find_orthanc())
RELEASE = tuple(map(int, re.match(r"(\d+)\.(\d+)\.(\d+)", VERSION).groups())) if VERSION[0].isdigit() else (99,)
STREAMS, SECURITY = RELEASE >= (1, 12, 6), RELEASE >= (1, 12, 9)
TOO_OLD = f"needs Orthanc 1.12.9 or newer; this Orthanc is {VERSION}"

Start = Callable[..., OrthancServer]


def test_streamed_export_answers_a_line_per_study(make_orthanc: Start) -> None:
    server = make_orthanc(NEWER / "streamed_export.py")
    for patient in ("P1", "P2"):
        _uid, files = make_study(2, patient_id=patient)
        for data in files:
            server.upload(data)
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", "/export/studies.csv")
    answer = connection.getresponse()
    lines = answer.read().decode().splitlines()
    assert answer.getheader("Content-Type") == "text/csv"
    assert lines[0] == "StudyInstanceUID,PatientID,StudyDate,Instances"
    assert sorted(line.split(",")[1:] for line in lines[1:]) == [["P1", "20240101", "2"], ["P2", "20240101", "2"]]
    # Streamed where Orthanc can: no length, the answer ends with the connection.
    assert (answer.getheader("Content-Length") is None) == STREAMS


TOKENS = {"s3cr3t-alice": {"user": "alice", "admin": False}, "s3cr3t-root": {"user": "root", "admin": True}}


def test_token_auth_guards_every_route(make_orthanc: Start) -> None:
    if not SECURITY:
        with pytest.raises(OrthancStartError) as refused:
            make_orthanc(NEWER / "token_auth.py", config={"ApiTokens": TOKENS})
        assert f"RegisterHttpAuthentication() {TOO_OLD}" in str(refused.value)
        return
    server = make_orthanc(NEWER / "token_auth.py", config={"ApiTokens": TOKENS})
    alice, root = ({"Authorization": f"Bearer {token}"} for token in TOKENS)
    assert server.get("/me").status == 401
    assert server.get("/me", headers=alice).json() == {"user": "alice", "admin": False}
    assert server.get("/tools/now", headers=alice).status == 403
    assert server.get("/tools/now", headers=root).status == 200
    assert server.get("/system", headers=alice).status == 200
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", "/app/explorer.html", headers={"Accept": "text/html"})
    browser = connection.getresponse()
    # Orthanc sends the path relative to the page asked for.
    assert browser.status == 307
    assert urllib.parse.urljoin("/app/explorer.html", browser.getheader("Location")) == "/login"
    assert "Authorization: Bearer" in server.get("/login").text


def test_audit_trail_records_who_sent_what(make_orthanc: Start, storescp) -> None:
    config = {"DicomModalities": {"pacs": [storescp.aet, "127.0.0.1", storescp.port]}}
    if not SECURITY:
        with pytest.raises(OrthancStartError) as refused:
            make_orthanc(NEWER / "audit_trail.py", config=config)
        assert f"RegisterAuditLogHandler() {TOO_OLD}" in str(refused.value)
        return
    server = make_orthanc(NEWER / "audit_trail.py", config=config)
    study = server.upload(make_dicom(patient_id="AUDITED"))["ParentStudy"]
    sent = server.post(f"/studies/{study}/send-to/pacs", b"", headers={"X-User": "alice"})
    assert sent.status == 200, sent.text
    assert len(list(storescp.directory.iterdir())) == 1
    trail = server.get_json("/audit-trail")
    assert trail == [{"plugin": "orthanc_py", "user": "alice", "level": "STUDY", "resource": study, "action": "sent",
                      "details": {"modality": "pacs", "instances": sent.json().get("InstancesCount")}}]


def announced(data: bytes, count: int) -> bytes:
    """The file with NumberOfStudyRelatedInstances (0020,1208) set, as a modality sends it."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.NumberOfStudyRelatedInstances = count
    out = io.BytesIO()
    dataset.save_as(out)
    return out.getvalue()


def test_complete_studies_are_stable_without_waiting(make_orthanc: Start) -> None:
    server = make_orthanc(NEWER / "complete_studies.py", config={"StableAge": 3600})
    _uid, files = make_study(3, patient_id="COMPLETE")
    study = ""
    for data in files:
        study = server.upload(announced(data, 3))["ParentStudy"]
    if SECURITY:
        server.wait_for_log(f"study {study} is complete")
        assert server.get_json(f"/studies/{study}")["IsStable"] is True
        return
    # The handler's call is refused, with the version named; the study waits for StableAge.
    server.wait_for_log(re.escape(f"SetStableStatus() {TOO_OLD}"))
    assert server.get_json(f"/studies/{study}")["IsStable"] is False
    assert "is complete" not in server.log


def test_modality_services_answer_find_worklist_and_move(make_orthanc: Start, storescp, tmp_path) -> None:
    worklists = tmp_path / "worklists"
    worklists.mkdir()
    for name, patient, station in (("mine", "Alice", "PEERSCU"), ("other", "Bob", "CT2"), ("any", "Carol", "")):
        step = {"Modality": "CT", "ScheduledStationAETitle": station, "ScheduledProcedureStepStartDate": "20240101"}
        (worklists / f"{name}.json").write_text(json.dumps({"PatientName": patient, "PatientID": name.upper(),
                                                            "ScheduledProcedureStepSequence": [step]}))
    server = make_orthanc(NEWER / "modality_services.py", config={
        "WorklistsFolder": str(worklists),
        "DicomModalities": {"peer": ["PEERSCU", "127.0.0.1", 104], "pacs": storescp.modality()},
    })
    uid, files = make_study(2, patient_id="SERVED", study_date="20240315")
    for data in files:
        server.upload(data)
    who = f"PEERSCU ({peer_ip(server) or 'address unknown'})"

    result, studies = findscu(server, tmp_path / "find", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20240301-",
                              "PatientID=SERV*", "StudyInstanceUID", "PatientName", called="ORTHANC")
    assert result.returncode == 0, result.stderr
    assert [(s.StudyInstanceUID, s.PatientID, str(s.PatientName), s.StudyDate) for s in studies] == [
        (uid, "SERVED", "Doe^John", "20240315")]
    server.wait_for_log(re.escape(f"C-FIND (STUDY) from {who} calling ORTHANC: 1 match(es)"))
    _result, none = findscu(server, tmp_path / "none", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=-20231231")
    assert none == []

    # Bob is scheduled on another station.
    _result, procedures = findscu(server, tmp_path / "worklist", "-W", "PatientName", "PatientID")
    assert sorted(str(item.PatientName) for item in procedures) == ["Alice", "Carol"]
    server.wait_for_log(re.escape(f"worklist C-FIND from {who} calling ANYCALLED: 2 of 2 procedure(s)"))

    moved = movescu(server, storescp.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}")
    assert move_responses(moved)[-1] == "Final Move Response (Success)", moved.stderr
    assert sop_instance_uids([path.read_bytes() for path in storescp.wait_for_files(2)]) == sop_instance_uids(files)
    server.wait_for_log(re.escape(f"C-MOVE of 2 instance(s) to STORESCP for {who} calling MOVECALLED"))
