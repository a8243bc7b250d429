# SPDX-License-Identifier: GPL-3.0-or-later
"""The DICOM SCPs of the ``orthanc`` module: C-FIND, worklists, C-MOVE, storage commitment.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

from orthanc_py.server import OrthancServer

from .dicom import make_dicom
from .official import (
    dcmtk,
    needs_dcmtk,
    recorded,
    start,
)

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


def findscu(
    server: OrthancServer, folder: Path, model: str, *keys: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
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


# --- storage commitment -------------------------------------------------------------------------------

STORAGE_COMMITMENT = """
HANDLERS = []

def Factory(jobId, transactionUid, sopClassUids, sopInstanceUids, remoteAet, calledAet):
    RECORDED["factory"] = [jobId != "", transactionUid, sopClassUids, sopInstanceUids, remoteAet, calledAet]
    handler = {"transaction": transactionUid}
    HANDLERS.append(handler)
    return handler

def Destructor(handler):
    RECORDED["destroyed"] = handler

def Lookup(handler, sopClassUid, sopInstanceUid):
    RECORDED.setdefault("lookups", []).append([handler, sopClassUid, sopInstanceUid])
    if sopInstanceUid == "1.2.3.4.2":
        return orthanc.StorageCommitmentFailureReason.NO_SUCH_OBJECT_INSTANCE
    if sopInstanceUid == "1.2.3.4.3":
        raise ValueError("lookup failed")
    return orthanc.StorageCommitmentFailureReason.SUCCESS

orthanc.RegisterStorageCommitmentScpCallback(Factory, Destructor, Lookup)
"""


def test_storage_commitment_scp_answers_through_python(make_orthanc):
    # No jobs history: Orthanc drops the SCP's job, and its handler, once it is done.
    scp = start(make_orthanc, None, STORAGE_COMMITMENT, start=False, config={"JobsHistorySize": 0})
    scu = make_orthanc(None, start=False)
    scp.configuration["DicomModalities"] = {"scu": ["SCU", "127.0.0.1", scu.dicom_port]}
    scp.configuration["DicomAet"] = "SCP"
    scu.configuration["DicomModalities"] = {"scp": ["SCP", "127.0.0.1", scp.dicom_port]}
    scu.configuration["DicomAet"] = "SCU"
    scp.start()
    scu.start()

    ct = "1.2.840.10008.5.1.4.1.1.2"
    request = {"DicomInstances": [[ct, "1.2.3.4.1"], [ct, "1.2.3.4.2"], [ct, "1.2.3.4.3"]]}
    answer = scu.post("/modalities/scp/storage-commitment", json.dumps(request))
    assert answer.status == 200, answer.text
    transaction = answer.json()["ID"]

    def report() -> Any:
        status = scu.get_json(f"/storage-commitment/{transaction}")
        return status if status["Status"] != "Pending" else None

    status = scu.wait_until(report, what="the storage commitment report")
    assert status["Status"] == "Failure", status
    assert status["Success"] == [{"SOPClassUID": ct, "SOPInstanceUID": "1.2.3.4.1"}]
    failures = {item["SOPInstanceUID"]: item["FailureReason"] for item in status["Failures"]}
    # The SCU shows the DICOM Failure Reason (0008,1197) that Orthanc sent for
    # NO_SUCH_OBJECT_INSTANCE (0x0112) and PROCESSING_FAILURE (0x0110).
    assert failures == {"1.2.3.4.2": 0x0112, "1.2.3.4.3": 0x0110}

    seen = recorded(scp)
    assert seen["factory"] == [True, transaction, [ct] * 3, ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"], "SCU", "SCP"]
    assert [uid for _, _, uid in seen["lookups"]] == ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    assert seen["lookups"][0][0] == {"transaction": transaction}
    scp.wait_until(lambda: "destroyed" in recorded(scp), what="the destructor")
    assert recorded(scp)["destroyed"] == {"transaction": transaction}
    assert "lookup failed" in scp.log
