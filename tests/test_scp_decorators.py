# SPDX-License-Identifier: GPL-3.0-or-later
"""The DICOM SCP decorators: ``@find_scp``, ``@worklist_scp`` and ``@move_scp``.

Orthanc is driven as a modality drives it, with DCMTK's ``findscu``
(patient root, study root, worklist) and ``movescu``; the answers are read
from the files ``findscu -X`` writes, and what a handler saw is read back
through a route of the script. Every row runs every test: the handler's
connection carries the peer's IP address from Orthanc 1.12.10 on, and
``None`` before (the AE titles on every version).
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from orthanc_py.server import OrthancServer, OrthancStartError

from .dicom import make_dicom, make_study, sop_instance_uids
from .fixtures_dicom import StoreScp
from .official import dcmtk

Start = Callable[..., OrthancServer]

CONNECTION_SINCE = (1, 12, 10)

# The modality the tests act as; Orthanc answers only the modalities it knows.
MODALITIES = {"peer": ["PEERSCU", "127.0.0.1", 104]}


def release_of(server: OrthancServer) -> tuple[int, ...]:
    return tuple(int(part) for part in server.get_json("/system")["Version"].split(".")[:3])


def peer_ip(server: OrthancServer) -> str | None:
    """The address a handler is told the peer has: Orthanc 1.12.10 tells it, an older one does not."""
    return "127.0.0.1" if release_of(server) >= CONNECTION_SINCE else None


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def findscu(server: OrthancServer, folder: Path, model: str, *keys: str,
            called: str = "ANYCALLED") -> tuple[subprocess.CompletedProcess[str], list[pydicom.Dataset]]:
    """Runs ``findscu`` as ``PEERSCU`` calling ``called`` (``model``: ``-P``, ``-S`` or ``-W``).

    Returns its result and the answers the modality received, in order.
    """
    folder.mkdir()
    arguments = [argument for key in keys for argument in ("-k", key)]
    result = dcmtk("findscu", "-v", "-aet", "PEERSCU", "-aec", called, model, "-X", "-od", str(folder),
                   *arguments, "127.0.0.1", str(server.dicom_port))
    return result, [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


# --- C-FIND -------------------------------------------------------------------------------------

FIND = """
import fnmatch
from orthanc_py import find_scp, rest, route

SEEN = []

@route("/seen")
def seen(request):
    return SEEN

PATIENTS = [
    {"PatientID": "ID-ALICE", "PatientName": "Alice", "PatientBirthDate": 19700101},  # a number: sent as text
    {"PatientID": "ID-BOB", "PatientName": "Bob", "PatientBirthDate": "19800202"},
    {"PatientID": "OTHER", "PatientName": "Carol", "PatientBirthDate": "19900303"},
]

@find_scp
def answer(query):
    connection = query.connection
    SEEN.append({"type": type(query).__name__, "level": query.level, "tags": query.tags,
                 "connection": [type(connection).__name__, connection.remote_aet, connection.remote_ip,
                                connection.called_aet]})
    wanted = query.tags.get("PatientID") or "*"
    if wanted == "RAISE":
        raise ValueError("this C-FIND handler broke")
    if wanted == "BARE":
        return PATIENTS[0]  # one answer, where a list of them is expected
    if query.level == "PATIENT":
        return (patient for patient in PATIENTS if fnmatch.fnmatchcase(patient["PatientID"], wanted))
    # Orthanc's own index, asked through its REST API from the DICOM thread.
    found = rest.post_json("/tools/find", {"Level": "Study", "Expand": True, "Query": {"PatientID": wanted}})
    return [{"StudyInstanceUID": study["MainDicomTags"]["StudyInstanceUID"],
             "PatientID": study["PatientMainDicomTags"]["PatientID"]} for study in found]
"""


def test_find_scp_answers_a_patient_root_query(make_orthanc: Start, tmp_path: Path) -> None:
    server = make_orthanc(FIND, config={"DicomModalities": MODALITIES})
    # A private creator is keyed by number; a private tag of unknown VR, whose value Orthanc gives
    # plugins no text for, is left out rather than failing the C-FIND.
    result, answers = findscu(server, tmp_path / "find", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=ID-*",
                              "PatientName", "PatientBirthDate", "(0011,0010)=ACME", "(0011,1010)=abcd")
    assert result.returncode == 0, output(result)
    assert "Final Find Response (Success)" in output(result)
    assert [(str(a.PatientName), a.PatientID, a.PatientBirthDate, a.QueryRetrieveLevel) for a in answers] == [
        ("Alice", "ID-ALICE", "19700101", "PATIENT"), ("Bob", "ID-BOB", "19800202", "PATIENT")]
    (seen,) = server.get_json("/seen")
    assert seen == {
        "type": "FindQuery", "level": "PATIENT",
        "tags": {"QueryRetrieveLevel": "PATIENT", "PatientID": "ID-*", "PatientName": "", "PatientBirthDate": "",
                 "0011,0010": "ACME"},
        "connection": ["Connection", "PEERSCU", peer_ip(server), "ANYCALLED"],
    }


def test_find_scp_answers_a_study_root_query_from_orthancs_index(make_orthanc: Start, tmp_path: Path) -> None:
    server = make_orthanc(FIND, config={"DicomModalities": MODALITIES})
    uid, files = make_study(1, patient_id="STUDIED")
    server.upload(files[0])
    result, answers = findscu(server, tmp_path / "find", "-S", "QueryRetrieveLevel=STUDY", "PatientID=STUDIED",
                              "StudyInstanceUID", called="ORTHANC")
    assert result.returncode == 0, output(result)
    assert [(a.StudyInstanceUID, a.PatientID, a.QueryRetrieveLevel) for a in answers] == [(uid, "STUDIED", "STUDY")]
    (seen,) = server.get_json("/seen")
    assert seen["level"] == "STUDY"
    assert seen["tags"] == {"QueryRetrieveLevel": "STUDY", "PatientID": "STUDIED", "StudyInstanceUID": ""}
    assert seen["connection"] == ["Connection", "PEERSCU", peer_ip(server), "ORTHANC"]


def test_a_failing_find_scp_handler_fails_that_c_find_only(make_orthanc: Start, tmp_path: Path) -> None:
    server = make_orthanc(FIND, config={"DicomModalities": MODALITIES})
    raised, answers = findscu(server, tmp_path / "raised", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=RAISE",
                              "PatientName")
    assert answers == []
    assert "Success" not in output(raised)
    assert "Failed" in output(raised), output(raised)
    server.wait_for_log("orthanc_py: exception in the @find_scp handler answer:")
    assert "ValueError: this C-FIND handler broke" in server.log

    bare, answers = findscu(server, tmp_path / "bare", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=BARE",
                            "PatientName")
    assert answers == []
    assert "Failed" in output(bare), output(bare)
    server.wait_for_log(re.escape("the @find_scp handler answer returned a dict: return (or yield) the answers"))

    # Orthanc goes on serving.
    result, answers = findscu(server, tmp_path / "after", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=ID-BOB",
                              "PatientName")
    assert result.returncode == 0, output(result)
    assert [str(answer.PatientName) for answer in answers] == ["Bob"]


# --- worklists ---------------------------------------------------------------------------------

WORKLIST = """
import io
import os
import pydicom
from orthanc_py import route, worklist_scp

SEEN = []

@route("/seen")
def seen(request):
    return SEEN

def procedure(patient_id, name, modality, station):
    return {"PatientID": patient_id, "PatientName": name, "AccessionNumber": "ACC-" + patient_id,
            "ScheduledProcedureStepSequence": [{"Modality": modality, "ScheduledStationAETitle": station,
                                                "ScheduledProcedureStepStartDate": "20240101"}]}

# A worklist item as a DICOM file, as a folder of worklists holds them (written by the test).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "carol.wl"), "rb") as source:
    CAROL = source.read()

ITEMS = [procedure("W1", "Alice", "CT", "CT1"), procedure("W2", "Bob", "MR", "MR1"), CAROL]

KEPT = []

@route("/kept")
def kept(request):
    # A query kept past its handler: its attributes stay, Orthanc's matching is gone.
    try:
        KEPT[0].matches(ITEMS[0])
    except Exception as error:
        return [type(error).__name__, KEPT[0].tags["PatientName"]]
    return ["matched"]

@worklist_scp
def scheduled(query):
    KEPT[:] = [query]
    connection = query.connection
    parsed = pydicom.dcmread(io.BytesIO(query.dicom), force=True)
    SEEN.append({"type": type(query).__name__, "tags": query.tags,
                 "dicom": [element.keyword for element in parsed],
                 "connection": [connection.remote_aet, connection.remote_ip, connection.called_aet]})
    if query.tags.get("PatientID") == "RAISE":
        raise ValueError("this worklist handler broke")
    return [item for item in ITEMS if query.matches(item)]
"""


def worklist_server(make_orthanc: Start) -> OrthancServer:
    server = make_orthanc(WORKLIST, config={"DicomModalities": MODALITIES}, start=False)
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(patient_id="W3", patient_name="Carol", modality="CT")))
    step = pydicom.Dataset()
    step.Modality, step.ScheduledStationAETitle = "CT", "CT2"
    dataset.ScheduledProcedureStepSequence = [step]
    dataset.save_as(Path(server.configuration["PythonScript"]).parent / "carol.wl")
    return server.start()


def test_worklist_scp_answers_the_matching_items(make_orthanc: Start, tmp_path: Path) -> None:
    server = worklist_server(make_orthanc)
    result, answers = findscu(server, tmp_path / "ct", "-W", "PatientName", "PatientID",
                              "ScheduledProcedureStepSequence[0].Modality=CT",
                              "ScheduledProcedureStepSequence[0].ScheduledStationAETitle", called="WLCALLED")
    assert result.returncode == 0, output(result)
    # A dict and a DICOM file, matched by Orthanc; each answer holds the tags asked for, no other.
    assert [(str(a.PatientName), a.PatientID, a.ScheduledProcedureStepSequence[0].ScheduledStationAETitle)
            for a in answers] == [("Alice", "W1", "CT1"), ("Carol", "W3", "CT2")]
    assert [("AccessionNumber" in answer, "Rows" in answer) for answer in answers] == [(False, False)] * 2
    (seen,) = server.get_json("/seen")
    assert seen == {
        "type": "WorklistQuery",
        "tags": {"PatientName": "", "PatientID": "",
                 "ScheduledProcedureStepSequence": [{"Modality": "CT", "ScheduledStationAETitle": ""}]},
        "dicom": ["PatientName", "PatientID", "ScheduledProcedureStepSequence"],
        "connection": ["PEERSCU", peer_ip(server), "WLCALLED"],
    }

    _result, answers = findscu(server, tmp_path / "alice", "-W", "PatientName=Alice", "PatientID")
    assert [answer.PatientID for answer in answers] == ["W1"]
    assert server.get_json("/kept") == ["ExpiredError", "Alice"]


def test_a_failing_worklist_scp_handler_fails_that_c_find_only(make_orthanc: Start, tmp_path: Path) -> None:
    server = worklist_server(make_orthanc)
    failed, answers = findscu(server, tmp_path / "failed", "-W", "PatientID=RAISE", "PatientName")
    assert answers == []
    assert "Failed" in output(failed), output(failed)
    server.wait_for_log("orthanc_py: exception in the @worklist_scp handler scheduled:")
    assert "ValueError: this worklist handler broke" in server.log
    result, answers = findscu(server, tmp_path / "after", "-W", "PatientID=W2", "PatientName")
    assert result.returncode == 0, output(result)
    assert [str(answer.PatientName) for answer in answers] == ["Bob"]


# --- C-MOVE -------------------------------------------------------------------------------------

MOVE = """
from orthanc_py import move_scp, rest, route

SEEN = []

@route("/seen")
def seen(request):
    return SEEN

@move_scp
def retrieve(request):
    connection = request.connection
    SEEN.append({"type": type(request).__name__, "level": request.level, "identifiers": request.identifiers,
                 "target": request.target_aet, "message_id": type(request.message_id).__name__,
                 "connection": [connection.remote_aet, connection.remote_ip, connection.called_aet]})
    if request.identifiers.get("PatientID") == "RAISE":
        raise ValueError("this C-MOVE handler broke")
    found = rest.post_json("/tools/find", {"Level": "Instance", "Query": request.identifiers})
    if request.identifiers.get("PatientID") == "GONE":
        return ["0000-no-such-instance", *found]  # the first sub-operation fails
    return sorted(found)
"""


def movescu(server: OrthancServer, destination: str, *keys: str) -> subprocess.CompletedProcess[str]:
    """Runs ``movescu`` as ``PEERSCU``, calling ``MOVECALLED``, to move to ``destination``."""
    arguments = [argument for key in keys for argument in ("-k", key)]
    return dcmtk("movescu", "-v", "-aet", "PEERSCU", "-aec", "MOVECALLED", "-aem", destination, "-S", *arguments,
                 "127.0.0.1", str(server.dicom_port))


def move_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The responses ``movescu -v`` printed: ``["Move Response 1 (Pending)", ..., "Final ... (Success)"]``."""
    return [line.split("Received ", 1)[1] for line in output(result).splitlines()
            if "Received " in line and "Move Response" in line]


def test_move_scp_sends_the_instances_its_handler_names(make_orthanc: Start, storescp: StoreScp) -> None:
    server = make_orthanc(MOVE, config={"DicomModalities": {**MODALITIES, "pacs": storescp.modality()}})
    uid, files = make_study(2, patient_id="MOVED")
    for data in files:
        server.upload(data)
    result = movescu(server, storescp.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}")
    # One sub-operation per instance, each reported to the modality.
    assert move_responses(result) == ["Move Response 1 (Pending)", "Final Move Response (Success)"], output(result)
    received = storescp.wait_for_files(2)
    assert sop_instance_uids([path.read_bytes() for path in received]) == sop_instance_uids(files)
    (seen,) = server.get_json("/seen")
    assert seen == {"type": "MoveRequest", "level": "STUDY", "identifiers": {"StudyInstanceUID": uid},
                    "target": "STORESCP", "message_id": "int",
                    "connection": ["PEERSCU", peer_ip(server), "MOVECALLED"]}


def test_a_failing_move_scp_fails_the_c_move(make_orthanc: Start, storescp: StoreScp) -> None:
    server = make_orthanc(MOVE, config={"DicomModalities": {**MODALITIES, "pacs": storescp.modality()}})
    _uid, files = make_study(1, patient_id="GONE")
    server.upload(files[0])

    raised = movescu(server, storescp.aet, "QueryRetrieveLevel=PATIENT", "PatientID=RAISE")
    assert move_responses(raised) == ["Final Move Response (Failed: UnableToProcess)"], output(raised)
    server.wait_for_log("orthanc_py: exception in the @move_scp handler retrieve:")
    assert "ValueError: this C-MOVE handler broke" in server.log

    nowhere = movescu(server, "NOWHERE", "QueryRetrieveLevel=PATIENT", "PatientID=GONE")
    assert move_responses(nowhere) == ["Final Move Response (Failed: UnableToProcess)"], output(nowhere)
    server.wait_for_log(re.escape("LookupError: unknown move destination 'NOWHERE'"))

    # An instance that cannot be sent: Orthanc ends the move, with failures.
    gone = movescu(server, storescp.aet, "QueryRetrieveLevel=PATIENT", "PatientID=GONE")
    assert move_responses(gone) == ["Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)"], \
        output(gone)
    server.wait_for_log(re.escape("the @move_scp handler retrieve (sending an instance)"))
    assert storescp.received_files() == []

    # Orthanc goes on serving.
    moved = movescu(server, storescp.aet, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={_uid}")
    assert move_responses(moved) == ["Final Move Response (Success)"], output(moved)
    assert len(storescp.wait_for_files(1)) == 1


# --- one handler per SCP, whichever API declares it ---------------------------------------------------

MIXED = {
    "find-then-official": ("""
import orthanc
from orthanc_py import find_scp

@find_scp
def answer(query):
    return []

def Find(answers, query, issuerAet, calledAet):
    pass

orthanc.RegisterFindCallback(Find)
""", "orthanc.RegisterFindCallback(): Orthanc takes one C-FIND handler, and @find_scp registered one already "
     "(the @find_scp handler answer); remove one of them"),
    "official-then-worklist": ("""
import orthanc
from orthanc_py import worklist_scp

def Worklist(answers, query, issuerAet, calledAet):
    pass

orthanc.RegisterWorklistCallback(Worklist)

@worklist_scp
def scheduled(query):
    return []
""", "@worklist_scp: Orthanc takes one worklist handler, and orthanc.RegisterWorklistCallback() registered one "
     "already (the worklist callback Worklist); remove one of them"),
    "two-moves": ("""
from orthanc_py import move_scp

@move_scp
def first(request):
    return []

@move_scp
def second(request):
    return []
""", "@move_scp: Orthanc takes one C-MOVE handler, and @move_scp registered one already (the @move_scp handler "
     "first); remove one of them"),
}


@pytest.mark.parametrize("case", list(MIXED))
def test_a_second_handler_for_an_scp_stops_the_script(make_orthanc: Start, case: str) -> None:
    script, message = MIXED[case]
    with pytest.raises(OrthancStartError) as refused:
        make_orthanc(script)
    assert f"RuntimeError: {message}" in str(refused.value)


def test_find_and_worklist_handlers_are_separate_scps(make_orthanc: Start, tmp_path: Path) -> None:
    # One of each SCP, from both APIs: a worklist C-FIND goes to the worklist handler only.
    server = make_orthanc("""
import orthanc
from orthanc_py import worklist_scp

def Find(answers, query, issuerAet, calledAet):
    answers.FindAddAnswer(orthanc.CreateDicom('{"PatientName": "From^Find"}', None, orthanc.CreateDicomFlags.NONE))

orthanc.RegisterFindCallback(Find)

@worklist_scp
def scheduled(query):
    yield {"PatientName": "From^Worklist"}
""", config={"DicomModalities": MODALITIES})
    _result, found = findscu(server, tmp_path / "find", "-P", "QueryRetrieveLevel=PATIENT", "PatientName")
    _result, scheduled = findscu(server, tmp_path / "worklist", "-W", "PatientName")
    assert [str(answer.PatientName) for answer in found] == ["From^Find"]
    assert [str(answer.PatientName) for answer in scheduled] == ["From^Worklist"]
