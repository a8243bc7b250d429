# SPDX-License-Identifier: GPL-3.0-or-later
"""The DICOM SCPs of the ``orthanc`` module: C-FIND, worklists, C-MOVE, storage commitment.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others check what the
official plugin does not have or does otherwise, in orthanc_py only. What a
callback received is read back through a REST route of the script.

The callbacks of Orthanc 1.12.10 (the ``2`` variants, ``RegisterMoveCallback3``)
get the DICOM connection, whose AE titles and address are checked as the
DCMTK peer sent them. On an older Orthanc their registration is refused
(orthanc_py: ``SdkVersionError``; an official plugin without them:
``AttributeError``) and the script falls back to the first variant, which the
test then checks.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from orthanc_py.server import OrthancServer

from .dicom import make_dicom
from .official import (
    dcmtk,
    needs_dcmtk,
    official_plugin_version,
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

SCU_MODALITIES = {"DicomModalities": {"scu": ["FINDSCU", "127.0.0.1", 104], "target": ["TARGET", "127.0.0.1", 105],
                                      "peer": ["PEERSCU", "127.0.0.1", 106]}}


def find_server(make_orthanc: Callable[..., OrthancServer], plugin: str | None, tmp_path: Path,
                script: str = FIND) -> OrthancServer:
    server = start(make_orthanc, plugin, script, start=False, config=SCU_MODALITIES)
    folder = Path(server.configuration["PythonScript"]).parent
    (folder / "alice.dcm").write_bytes(make_dicom(patient_id="ID-ALICE", patient_name="Alice"))
    (folder / "bob.dcm").write_bytes(make_dicom(patient_id="ID-BOB", patient_name="Bob"))
    return server.start()


def findscu(
    server: OrthancServer, folder: Path, model: str, *keys: str, aet: str = "FINDSCU", called: str = "ORTHANC"
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs ``findscu`` (``model`` is ``-P`` or ``-W``) as ``aet``, calling ``called``; returns its result and
    the answers' PatientName.

    The answers are read from the files ``findscu -X`` extracts, not from its log.
    """
    folder.mkdir()
    arguments = [argument for key in keys for argument in ("-k", key)]
    result = dcmtk("findscu", "-v", "-aet", aet, "-aec", called, model, "-X", "-od", str(folder),
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


# --- the SCP callbacks of Orthanc 1.12.10: the DICOM connection --------------------------------------

# Orthanc 1.12.10 gives the SCP callbacks the DICOM connection. On an older
# Orthanc, orthanc_py refuses their registration with SdkVersionError, and the
# official plugin before 7.0 does not have them (AttributeError): the scripts
# below then fall back to the first variant, as a portable script would.
CONNECTION_SDK = (1, 12, 10)


def release_of(server: OrthancServer) -> tuple[int, ...]:
    """The version of the running Orthanc as numbers: ``(1, 12, 7)``."""
    return tuple(int(part) for part in server.get_json("/system")["Version"].split(".")[:3])


def assert_refused(seen: dict[str, Any], plugin: str | None, server: OrthancServer, function: str,
                   since: str = "1.12.10") -> None:
    """The script's registration of ``function`` was refused, as orthanc_py or the official plugin refuse it."""
    kind, text = seen["refused"][function]
    if plugin is None:
        version = server.get_json("/system")["Version"]
        assert kind == "SdkVersionError"
        assert f"{function}() needs Orthanc {since} or newer; this Orthanc is {version}" in text
    else:
        assert kind == "AttributeError"
        assert function in text


CONNECTION = """
def connection_of(connection):
    return [type(connection).__name__, connection.GetConnectionRemoteAet(), connection.GetConnectionRemoteIp(),
            connection.GetConnectionCalledAet()]

def register(first, second, *callbacks, fallback=None):
    # The variant with the connection where this Orthanc has it, else the first one.
    try:
        getattr(orthanc, second)(*callbacks)
    except (AttributeError, orthanc.OrthancException) as error:
        RECORDED.setdefault("refused", {})[second] = [type(error).__name__, str(error)]
        getattr(orthanc, first)(*(fallback or callbacks))

KEPT = {}

def Kept(output, uri, **request):
    try:
        result = KEPT["connection"].GetConnectionRemoteAet()
    except Exception as error:
        result = error
    output.AnswerBuffer(json.dumps([type(result).__name__, str(result)]), "application/json")

orthanc.RegisterRestCallback("/kept", Kept)
"""

FIND2 = CONNECTION + """
import os

FOLDER = os.path.dirname(os.path.abspath(__file__))

def answer(answers, query):
    RECORDED["query"] = {query.GetFindQueryTagName(i): query.GetFindQueryValue(i)
                         for i in range(query.GetFindQuerySize())}
    if RECORDED["query"].get("PatientID") == "RAISE":
        raise ValueError("C-FIND callback failed")
    for name in ("alice.dcm", "bob.dcm"):
        with open(os.path.join(FOLDER, name), "rb") as source:
            answers.FindAddAnswer(source.read())

def Find2(answers, query, connection):
    RECORDED["find"] = [type(answers).__name__, type(query).__name__, *connection_of(connection)]
    KEPT["connection"] = connection
    answer(answers, query)

def Find(answers, query, issuerAet, calledAet):
    RECORDED["find"] = [type(answers).__name__, type(query).__name__, issuerAet, calledAet]
    answer(answers, query)

def Worklist2(answers, query, connection):
    RECORDED["worklist"] = [type(answers).__name__, type(query).__name__, *connection_of(connection)]
    worklist(answers, query)

def Worklist(answers, query, issuerAet, calledAet):
    RECORDED["worklist"] = [type(answers).__name__, type(query).__name__, issuerAet, calledAet]
    worklist(answers, query)

def worklist(answers, query):
    for name in ("alice.dcm", "bob.dcm"):
        with open(os.path.join(FOLDER, name), "rb") as source:
            item = source.read()
        if query.WorklistIsMatch(item):
            answers.WorklistAddAnswer(query, item)

register("RegisterFindCallback", "RegisterFindCallback2", Find2, fallback=[Find])
register("RegisterWorklistCallback", "RegisterWorklistCallback2", Worklist2, fallback=[Worklist])
"""


@needs_dcmtk
def test_find_callback2_gets_the_dicom_connection(make_orthanc, plugin, tmp_path):
    server = find_server(make_orthanc, plugin, tmp_path, FIND2)
    result, names = findscu(server, tmp_path / "find", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=ID-*",
                            "PatientName", aet="PEERSCU", called="ANYCALLED")
    assert result.returncode == 0, result.stderr
    assert sorted(names) == ["Alice", "Bob"]
    seen = recorded(server)
    assert seen["query"]["PatientID"] == "ID-*"
    if release_of(server) >= CONNECTION_SDK:
        # The AE titles are the ones the peer sent: its own, and the one it called (not Orthanc's).
        assert "refused" not in seen
        assert seen["find"] == ["FindAnswers", "FindQuery", "DicomConnection", "PEERSCU", "127.0.0.1", "ANYCALLED"]
        if plugin is None:
            # A connection kept past its callback refuses to be read (the official plugin reads freed
            # memory: an empty text, or Orthanc crashes).
            kept = server.get_json("/kept")
            assert kept[0] == "ExpiredError"
            assert "DicomConnection was lent by Orthanc to a callback that has returned" in kept[1]
    else:
        assert_refused(seen, plugin, server, "RegisterFindCallback2")
        assert seen["find"] == ["FindAnswers", "FindQuery", "PEERSCU", "ANYCALLED"]

    failed, names = findscu(server, tmp_path / "failed", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=RAISE",
                            "PatientName", aet="PEERSCU")
    assert names == []
    assert "Failed" in failed.stderr + failed.stdout
    assert "C-FIND callback failed" in server.log


@needs_dcmtk
def test_worklist_callback2_gets_the_dicom_connection(make_orthanc, plugin, tmp_path):
    server = find_server(make_orthanc, plugin, tmp_path, FIND2)
    result, names = findscu(server, tmp_path / "worklist", "-W", "PatientName=Alice", "PatientID",
                            aet="PEERSCU", called="WLCALLED")
    assert result.returncode == 0, result.stderr
    assert names == ["Alice"], "WorklistIsMatch() keeps Bob out"
    seen = recorded(server)
    if release_of(server) >= CONNECTION_SDK:
        assert "refused" not in seen
        assert seen["worklist"] == ["WorklistAnswers", "WorklistQuery", "DicomConnection", "PEERSCU", "127.0.0.1",
                                    "WLCALLED"]
    else:
        assert_refused(seen, plugin, server, "RegisterWorklistCallback2")
        assert seen["worklist"] == ["WorklistAnswers", "WorklistQuery", "PEERSCU", "WLCALLED"]


# --- C-MOVE through a driver: RegisterMoveCallback2 and RegisterMoveCallback3 ------------------------------

DRIVER = """
class Driver:
    def __init__(self, request):
        self.request = request
        self.applied = 0

def Size(driver):
    RECORDED.setdefault("size", []).append(type(driver).__name__)
    return {"TWO": 2, "NOTHING": 0}.get(driver.request["PatientID"], 3)

def Apply(driver):
    driver.applied += 1
    RECORDED.setdefault("apply", []).append([driver.request["PatientID"], driver.applied])
    if driver.request["PatientID"] == "TWO":
        raise ValueError("C-MOVE sub-operation failed")
    return "ignored"

def Free(driver):
    RECORDED.setdefault("free", []).append([driver.request["PatientID"], driver.applied])

def values(request):
    return {key: [type(value).__name__, value] for key, value in request.items()}
"""

MOVE2 = DRIVER + """
def Create(**request):
    RECORDED.setdefault("create", []).append(values(request))
    if request["PatientID"] == "REFUSE":
        raise ValueError("C-MOVE create failed")
    return Driver(request)

try:
    orthanc.RegisterMoveCallback2(Create, Size, Apply, Free)
except AttributeError as error:  # the official plugin 4.0
    RECORDED["refused"] = [type(error).__name__, str(error)]
"""


def movescu(server: OrthancServer, *keys: str, aet: str = "FINDSCU",
            called: str = "ORTHANC") -> subprocess.CompletedProcess[str]:
    arguments = [argument for key in keys for argument in ("-k", key)]
    return dcmtk("movescu", "-v", "-aet", aet, "-aec", called, "-aem", "TARGET", "-S", *arguments,
                 "127.0.0.1", str(server.dicom_port))


def move_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """What ``movescu -v`` printed of the responses: ``["Move Response 1 (Pending)", ..., "Final ... (Success)"]``."""
    lines = (result.stderr + result.stdout).splitlines()
    return [line.split("Received ", 1)[1] for line in lines if "Received " in line and "Move Response" in line]


@needs_dcmtk
def test_move_callback2_reports_each_sub_operation(make_orthanc, plugin):
    server = start(make_orthanc, plugin, MOVE2, config=SCU_MODALITIES)
    if "refused" in recorded(server):
        # The official plugin has RegisterMoveCallback2 from 4.2 on.
        assert plugin is not None and official_plugin_version() == "4.0"
        assert recorded(server)["refused"][0] == "AttributeError"
        return
    ok = movescu(server, "QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID=1.2.3", "AccessionNumber=ACC")
    assert move_responses(ok) == ["Move Response 1 (Pending)", "Move Response 2 (Pending)",
                                  "Final Move Response (Success)"], ok.stderr
    failing = movescu(server, "QueryRetrieveLevel=SERIES", "PatientID=TWO", "SeriesInstanceUID=4.5")
    # The first sub-operation fails: Orthanc stops the move and reports it.
    assert move_responses(failing) == ["Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)"]
    nothing = movescu(server, "QueryRetrieveLevel=STUDY", "PatientID=NOTHING")
    assert move_responses(nothing) == ["Final Move Response (Success)"]
    refused = movescu(server, "QueryRetrieveLevel=STUDY", "PatientID=REFUSE")
    assert move_responses(refused) == ["Final Move Response (Failed: UnableToProcess)"]
    assert "C-MOVE sub-operation failed" in server.log
    assert "C-MOVE create failed" in server.log

    seen = server.wait_until(lambda: (lambda s: s if len(s.get("free", [])) == 3 else None)(recorded(server)),
                             what="the three drivers freed")
    first = seen["create"][0]
    assert first == {
        "Level": ["str", "STUDY"], "PatientID": ["str", "P1"], "AccessionNumber": ["str", "ACC"],
        "StudyInstanceUID": ["str", "1.2.3"], "SeriesInstanceUID": ["str", ""], "SOPInstanceUID": ["str", ""],
        "OriginatorAET": ["str", "FINDSCU"], "SourceAET": ["str", "ORTHANC"], "TargetAET": ["str", "TARGET"],
        "OriginatorID": ["int", first["OriginatorID"][1]],
    }
    assert [create["PatientID"][1] for create in seen["create"]] == ["P1", "TWO", "NOTHING", "REFUSE"]
    assert seen["size"] == ["Driver"] * 3
    assert seen["apply"] == [["P1", 1], ["P1", 2], ["P1", 3], ["TWO", 1]]
    assert seen["free"] == [["P1", 3], ["TWO", 1], ["NOTHING", 0]]


MOVE2_FAILING_SIZE = DRIVER + """
def Create(**request):
    return Driver(request)

def BadSize(driver):
    if driver.request["PatientID"] == "RAISE":
        raise ValueError("C-MOVE size failed")
    return {"TEXT": "2", "NEGATIVE": -1}.get(driver.request["PatientID"], 1)

orthanc.RegisterMoveCallback2(Create, BadSize, Apply, Free)
"""


@needs_dcmtk
def test_move_callback2_whose_count_fails_fails_the_move(make_orthanc):
    # The official plugin leaves Orthanc's DICOM server unable to answer
    # after such a count; orthanc_py reports one failed sub-operation.
    server = start(make_orthanc, None, MOVE2_FAILING_SIZE, config=SCU_MODALITIES)
    for patient in ("RAISE", "TEXT", "NEGATIVE"):
        result = movescu(server, "QueryRetrieveLevel=STUDY", f"PatientID={patient}")
        assert move_responses(result) == ["Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)"]
    assert "C-MOVE size failed" in server.log
    assert "returned '2', not a number of sub-operations" in server.log
    assert "returned -1, not a number of sub-operations" in server.log
    ok = movescu(server, "QueryRetrieveLevel=STUDY", "PatientID=P1")
    assert move_responses(ok) == ["Final Move Response (Success)"]
    seen = recorded(server)
    assert seen["apply"] == [["P1", 1]], "a move whose count failed applies nothing of the script's"


MOVE3 = CONNECTION + DRIVER + """
def Create3(connection, **request):
    RECORDED.setdefault("create", []).append([connection_of(connection), values(request)])
    KEPT["connection"] = connection
    return Driver(request)

def Create(**request):
    RECORDED.setdefault("create", []).append([None, values(request)])
    return Driver(request)

try:
    register("RegisterMoveCallback2", "RegisterMoveCallback3", Create3, Size, Apply, Free,
             fallback=[Create, Size, Apply, Free])
except AttributeError as error:  # the official plugin 4.0 has neither
    RECORDED["fallback"] = [type(error).__name__, str(error)]
"""


@needs_dcmtk
def test_move_callback3_gets_the_dicom_connection(make_orthanc, plugin):
    server = start(make_orthanc, plugin, MOVE3, config=SCU_MODALITIES)
    seen = recorded(server)
    if "fallback" in seen:
        assert plugin is not None and official_plugin_version() == "4.0"
        assert seen["refused"]["RegisterMoveCallback3"][0] == "AttributeError"
        assert seen["fallback"] == ["AttributeError", "module 'orthanc' has no attribute 'RegisterMoveCallback2'"]
        return
    result = movescu(server, "QueryRetrieveLevel=SERIES", "PatientID=P1", "SeriesInstanceUID=4.5",
                     aet="PEERSCU", called="MOVECALLED")
    assert move_responses(result)[-1] == "Final Move Response (Success)", result.stderr
    seen = server.wait_until(lambda: (lambda s: s if s.get("free") else None)(recorded(server)), what="the free")
    (connection, request), = seen["create"]
    assert seen["apply"] == [["P1", 1], ["P1", 2], ["P1", 3]]
    assert seen["free"] == [["P1", 3]]
    identifiers = {
        "Level": ["str", "SERIES"], "PatientID": ["str", "P1"], "AccessionNumber": ["str", ""],
        "StudyInstanceUID": ["str", ""], "SeriesInstanceUID": ["str", "4.5"], "SOPInstanceUID": ["str", ""],
        "TargetAET": ["str", "TARGET"], "OriginatorID": ["int", request["OriginatorID"][1]],
    }
    if release_of(server) >= CONNECTION_SDK:
        assert "refused" not in seen
        # The AE titles are the connection's: not among the keywords.
        assert connection == ["DicomConnection", "PEERSCU", "127.0.0.1", "MOVECALLED"]
        assert request == identifiers
        if plugin is None:
            assert server.get_json("/kept")[0] == "ExpiredError"
    else:
        assert_refused(seen, plugin, server, "RegisterMoveCallback3")
        assert connection is None
        # SourceAET is the AE title the modality called.
        assert request == {**identifiers, "OriginatorAET": ["str", "PEERSCU"], "SourceAET": ["str", "MOVECALLED"]}


# --- one handler per SCP ---------------------------------------------------------------------------

ONE_HANDLER = """
def find(answers, query, issuerAet, calledAet): pass
def find2(answers, query, connection): pass
def move(**request): pass
def create(**request): return None
def create3(connection, **request): return None
def size(driver): return 0
def apply(driver): pass
def free(driver): pass
def factory(*arguments): return None
def lookup(sopClassUid, sopInstanceUid, handler): return 0

REGISTERED = []
for call in CALLS:
    try:
        eval(call)
        REGISTERED.append(call)
    except Exception as error:
        RECORDED.setdefault("errors", []).append([call, type(error).__name__, str(error)])
RECORDED["registered"] = REGISTERED
"""


@pytest.mark.parametrize(("first", "second", "what", "since"), [
    (("RegisterFindCallback", "find", "the C-FIND callback find"), "RegisterFindCallback2(find2)",
     "C-FIND handler", (1, 12, 10)),
    (("RegisterWorklistCallback", "find", "the worklist callback find"), "RegisterWorklistCallback2(find2)",
     "worklist handler", (1, 12, 10)),
    (("RegisterMoveCallback", "move", "the C-MOVE callback move"), "RegisterMoveCallback2(create, size, apply, free)",
     "C-MOVE handler", None),
    (("RegisterMoveCallback2", "create, size, apply, free", "the C-MOVE create callback create"),
     "RegisterMoveCallback3(create3, size, apply, free)", "C-MOVE handler", (1, 12, 10)),
    (("RegisterStorageCommitmentScpCallback", "factory, lookup", "the storage commitment factory factory"),
     "RegisterStorageCommitmentScpCallback2(factory, lookup)", "storage commitment SCP", (1, 12, 10)),
], ids=["c-find", "worklist", "c-move-1-2", "c-move-2-3", "storage-commitment"])
def test_one_variant_of_each_scp_is_taken(make_orthanc, first, second, what, since):
    first_name, arguments, first_where = first
    calls = [f"orthanc.{first_name}({arguments})", f"orthanc.{second}"]
    server = start(make_orthanc, None, f"CALLS = {calls!r}\n" + ONE_HANDLER)
    seen = recorded(server)
    assert seen["registered"] == calls[:1]
    ((call, kind, text),) = seen["errors"]
    assert call == calls[1]
    second_name = second.split("(")[0]
    if since is not None and release_of(server) < since:
        # Refused for the Orthanc first: nothing of it is registered.
        version = server.get_json("/system")["Version"]
        assert kind == "SdkVersionError"
        assert f"{second_name}() needs Orthanc {'.'.join(map(str, since))} or newer; this Orthanc is {version}" in text
    else:
        assert kind == "RuntimeError"
        assert text == (f"orthanc.{second_name}(): Orthanc takes one {what}, and orthanc.{first_name}() registered one "
                        f"already ({first_where}); remove one of them")


# --- storage commitment -------------------------------------------------------------------------------

STORAGE_COMMITMENT = """
import weakref

class Handler:
    def __init__(self, transactionUid):
        self.transaction = transactionUid

def dropped(transaction):
    RECORDED["dropped"] = transaction

def keep(jobId, transactionUid, sopClassUids, sopInstanceUids, last):
    RECORDED["factory"] = [jobId != "", transactionUid, sopClassUids, sopInstanceUids, last]
    handler = Handler(transactionUid)
    weakref.finalize(handler, dropped, transactionUid)
    return handler

def Factory(jobId, transactionUid, sopClassUids, sopInstanceUids, remoteAet, calledAet):
    return keep(jobId, transactionUid, sopClassUids, sopInstanceUids, [remoteAet, calledAet])

def Factory2(jobId, transactionUid, sopClassUids, sopInstanceUids, connection):
    return keep(jobId, transactionUid, sopClassUids, sopInstanceUids, connection_of(connection))

def Lookup(sopClassUid, sopInstanceUid, handler):
    RECORDED.setdefault("lookups", []).append([sopClassUid, sopInstanceUid, type(handler).__name__,
                                               handler.transaction])
    if sopInstanceUid == "1.2.3.4.2":
        return orthanc.StorageCommitmentFailureReason.NO_SUCH_OBJECT_INSTANCE
    if sopInstanceUid == "1.2.3.4.3" and VARIANT == "ours":
        raise ValueError("lookup failed")
    if sopInstanceUid == "1.2.3.4.4" and VARIANT == "ours":
        return "not a reason"
    return orthanc.StorageCommitmentFailureReason.SUCCESS

try:
    if VARIANT == "2":
        register("RegisterStorageCommitmentScpCallback", "RegisterStorageCommitmentScpCallback2", Factory2, Lookup,
                 fallback=[Factory, Lookup])
    else:
        orthanc.RegisterStorageCommitmentScpCallback(Factory, Lookup)
except AttributeError as error:  # the official plugin 4.0 has neither
    RECORDED["fallback"] = [type(error).__name__, str(error)]
"""

CT = "1.2.840.10008.5.1.4.1.1.2"
# The official plugin 4.0 has no storage commitment SCP.
NO_STORAGE_COMMITMENT = "module 'orthanc' has no attribute 'RegisterStorageCommitmentScpCallback'"


def storage_commitment(make_orthanc: Callable[..., OrthancServer], plugin: str | None, variant: str,
                       uids: list[str]) -> tuple[OrthancServer, dict[str, Any] | None, str | None]:
    """Asks an SCP running :data:`STORAGE_COMMITMENT` (its ``VARIANT``) to commit ``uids``, from another Orthanc.

    The SCU calls the SCP "SCPALIAS", which is not the SCP's own AE title.
    Returns the SCP, the SCU's report of the request and its transaction UID
    (``None`` when the script could register no SCP).
    """
    script = CONNECTION + f"VARIANT = {variant!r}\n" + STORAGE_COMMITMENT
    # No jobs history: Orthanc drops the SCP's job, and its handler, once it is done.
    scp = start(make_orthanc, plugin, script, start=False, config={"JobsHistorySize": 0})
    scu = make_orthanc(None, start=False)
    scp.configuration["DicomModalities"] = {"scu": ["SCU", "127.0.0.1", scu.dicom_port]}
    scp.configuration["DicomAet"] = "SCP"
    scu.configuration["DicomModalities"] = {"scp": ["SCPALIAS", "127.0.0.1", scp.dicom_port]}
    scu.configuration["DicomAet"] = "SCU"
    scp.start()
    if "fallback" in recorded(scp):
        return scp, None, None
    scu.start()
    request = {"DicomInstances": [[CT, uid] for uid in uids]}
    answer = scu.post("/modalities/scp/storage-commitment", json.dumps(request))
    assert answer.status == 200, answer.text
    transaction = answer.json()["ID"]

    def report() -> Any:
        status = scu.get_json(f"/storage-commitment/{transaction}")
        return status if status["Status"] != "Pending" else None

    return scp, scu.wait_until(report, what="the storage commitment report"), transaction


def check_storage_commitment_report(scp: OrthancServer, status: dict[str, Any], transaction: str,
                                    uids: list[str], failures: dict[str, int]) -> dict[str, Any]:
    assert status["Status"] == "Failure", status
    assert status["Success"] == [{"SOPClassUID": CT, "SOPInstanceUID": uid} for uid in uids if uid not in failures]
    # The SCU shows the DICOM Failure Reason (0008,1197) that Orthanc sent.
    assert {item["SOPInstanceUID"]: item["FailureReason"] for item in status["Failures"]} == failures
    seen = recorded(scp)
    assert seen["factory"][:4] == [True, transaction, [CT] * len(uids), uids]
    assert seen["lookups"] == [[CT, uid, "Handler", transaction] for uid in uids]
    scp.wait_until(lambda: "dropped" in recorded(scp), what="the handler dropped")
    assert recorded(scp)["dropped"] == transaction
    return seen


def test_storage_commitment_scp_answers_through_python(make_orthanc, plugin):
    uids = ["1.2.3.4.1", "1.2.3.4.2"]
    scp, status, transaction = storage_commitment(make_orthanc, plugin, "1", uids)
    if status is None:
        assert plugin is not None and official_plugin_version() == "4.0"
        assert recorded(scp)["fallback"] == ["AttributeError", NO_STORAGE_COMMITMENT]
        return
    seen = check_storage_commitment_report(scp, status, transaction, uids, {"1.2.3.4.2": 0x0112})
    assert seen["factory"][4] == ["SCU", "SCPALIAS"]


def test_storage_commitment_lookup_failures_are_processing_failures(make_orthanc):
    # The official plugin 7.1 reports an instance whose lookup raised as
    # stored, and fails the whole request for a value that is not a reason.
    uids = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3", "1.2.3.4.4"]
    scp, status, transaction = storage_commitment(make_orthanc, None, "ours", uids)
    check_storage_commitment_report(scp, status, transaction, uids,
                                    {"1.2.3.4.2": 0x0112, "1.2.3.4.3": 0x0110, "1.2.3.4.4": 0x0110})
    assert "lookup failed" in scp.log
    assert "returned 'not a reason', not an orthanc.StorageCommitmentFailureReason value" in scp.log


def test_storage_commitment_scp2_gets_the_dicom_connection(make_orthanc, plugin):
    uids = ["1.2.3.4.1", "1.2.3.4.2"]
    scp, status, transaction = storage_commitment(make_orthanc, plugin, "2", uids)
    if status is None:
        assert plugin is not None and official_plugin_version() == "4.0"
        assert recorded(scp)["fallback"] == ["AttributeError", NO_STORAGE_COMMITMENT]
        return
    seen = check_storage_commitment_report(scp, status, transaction, uids, {"1.2.3.4.2": 0x0112})
    if release_of(scp) >= CONNECTION_SDK:
        assert "refused" not in seen
        assert seen["factory"][4] == ["DicomConnection", "SCU", "127.0.0.1", "SCPALIAS"]
    else:
        assert_refused(seen, plugin, scp, "RegisterStorageCommitmentScpCallback2")
        assert seen["factory"][4] == ["SCU", "SCPALIAS"]
