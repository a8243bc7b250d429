# SPDX-License-Identifier: GPL-3.0-or-later
"""Python on Orthanc's small thread stacks: no client input and no script recursion ends Orthanc.

Orthanc's HTTP threads have 100 KiB stacks; Python assumes megabytes. The
loader runs every callback of such a thread on a stack of its own (see
"Python on a stack of its own" in loader/loader.c), so that deep recursion,
a script's own or a client's nested JSON, raises RecursionError as it would
in ``python script.py``. Each test drives a real Orthanc the way a client or
a script would, and ends with Orthanc alive and every upload accounted for.
(The official plugin 4.0 ends with SIGSEGV on the JSON bombs and the
recursion here: its crashes are documented in the README, not tested.)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthanc_py import _capi
from orthanc_py.server import OrthancServer

from .dicom import make_dicom
from .official import dcmtk, needs_dcmtk, wait_for_job

# Records where each kind of callback ran (the loader's stack()) and what deep
# recursion did there: "RecursionError" for a script's own recursion, and for
# json.loads of 100,000 nested lists.
DEEP = '''
import json
import os
import threading

import _orthanc_py_loader
import orthanc
from orthanc_py import ChangeType, on_change, on_stored_instance, route

SEEN = {}
BOMB = "[" * 100_000 + "]" * 100_000

def down(k):
    return down(k + 1)

def go_deep(kind):
    found = {"stack": _orthanc_py_loader.stack()}
    try:
        down(0)
    except RecursionError as error:
        found["recursion"] = type(error).__name__
    try:
        json.loads(BOMB)
    except RecursionError as error:
        found["json"] = type(error).__name__
    SEEN[kind] = found

@route("/seen")
def seen(request):
    return SEEN

@route("/json", methods=["POST"])
def echo_json(request):
    return request.json()

def OfficialJson(output, uri, **request):
    try:
        parsed = json.loads(request["body"])
    except RecursionError:
        output.SendHttpStatus(413, "RecursionError", len("RecursionError"))
        return
    output.AnswerBuffer(json.dumps(parsed), "application/json")

orthanc.RegisterRestCallback("/official-json", OfficialJson)

@route("/deep/route")
def deep_route(request):
    go_deep("route")
    return "deep enough"

@route("/recurse")
def recurse(request):
    return down(0)

def OfficialRecurse(output, uri, **request):
    down(0)

orthanc.RegisterRestCallback("/official-recurse", OfficialRecurse)

def Filter(uri, **request):
    if uri == "/deep/filter":
        go_deep("filter")
    if uri == "/recurse-in-filter":
        down(0)
    return True

orthanc.RegisterIncomingHttpRequestFilter(Filter)

@on_stored_instance
def deep_stored(instance):
    if instance.simplified_json["PatientID"] == "DEEP":
        go_deep("stored instance")

@on_change(ChangeType.NEW_INSTANCE)
def deep_change(change):
    go_deep("change")

def Find(answers, query, issuerAet, calledAet):
    go_deep("C-FIND")

orthanc.RegisterFindCallback(Find)

def DeepStep():
    go_deep("job")
    return orthanc.JobStepStatus.SUCCESS

def SubmitDeepJob(output, uri, **request):
    job = orthanc.CreateJob("DeepJob", DeepStep)
    output.AnswerBuffer(json.dumps({"ID": job.SubmitJob(0)}), "application/json")

orthanc.RegisterRestCallback("/deep/job", SubmitDeepJob)
'''

SCU = {"DicomModalities": {"scu": ["FINDSCU", "127.0.0.1", 104]}}


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("deep")
    (workdir / "deep.py").write_text(DEEP)
    server = OrthancServer(str(workdir / "orthanc"), script=str(workdir / "deep.py"), config=SCU)
    server.start()
    yield server
    assert "Segmentation" not in server.log
    assert server.stop() == 0, "Orthanc stops cleanly after all of it"


def nested(shape: str, depth: int) -> str:
    """JSON text nested ``depth`` levels deep, in the spacing json.dumps() uses."""
    opening, closing = {"list": ("[", "]"), "dict": ('{"a": ', "}"), "mixed": ('[{"a": ', "}]")}[shape]
    return opening * depth + "0" + closing * depth


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(["list", "dict", "mixed"]),
       depth=st.one_of(st.integers(1, 300), st.integers(300, 100_000), st.integers(100_000, 300_000)))
def test_nested_json_from_any_client_is_an_answer_never_a_crash(deep: OrthancServer, shape: str, depth: int):
    body = nested(shape, depth)
    ours = deep.post("/json", body, headers={"Content-Type": "application/json"})
    official = deep.post("/official-json", body)
    if depth <= 300:
        assert (ours.status, official.status) == (200, 200)
        assert ours.body.decode() == official.body.decode() == body
    elif depth >= 100_000:  # past the depth any CPython parses on an 8 MiB stack
        assert ours.status == 400, "too deep is a client error, not a 500"
        assert "nested too deeply" in ours.text
        assert official.status == 413, "the official-style route caught RecursionError"
    else:
        # Where each CPython stops differs (3.11: 1000 levels; 3.14: as deep as
        # the stack allows), and json.dumps() may fail on a depth that
        # json.loads() took: the handler's answer then fails (500).
        assert ours.status in (200, 400, 500) and official.status in (200, 413, 500)
    assert deep.get("/system").status == 200


def test_recursion_in_a_route_or_a_filter_is_a_recursion_error(deep: OrthancServer):
    assert deep.get("/recurse").status == 500
    assert deep.get("/official-recurse").status == 500
    refused = deep.get("/recurse-in-filter")
    assert refused.status in (403, 500), "a filter that fails never lets a request through"
    assert deep.log.count("RecursionError: maximum recursion depth exceeded") >= 3
    assert deep.get("/system").status == 200


@needs_dcmtk
def test_every_kind_of_callback_recurses_as_deep_as_python_allows(deep: OrthancServer, tmp_path: Path):
    assert deep.get("/deep/route").text == "deep enough"
    assert deep.get("/deep/filter").status == 404  # the filter let it through; no such route
    assert deep.post("/instances", make_dicom(patient_id="DEEP")).status == 200
    find = dcmtk("findscu", "-aet", "FINDSCU", "-aec", "ORTHANC", "-P", "-k", "QueryRetrieveLevel=PATIENT",
                 "-k", "PatientID=X", "127.0.0.1", str(deep.dicom_port))
    assert find.returncode == 0, find.stderr
    job = wait_for_job(deep, deep.post("/deep/job").json()["ID"])
    assert job["State"] == "Success", job
    kinds = ["C-FIND", "change", "filter", "job", "route", "stored instance"]
    seen = deep.wait_until(lambda: (lambda s: s if sorted(s) == kinds else None)(deep.get_json("/seen")),
                           what="every kind of callback")
    for kind, found in seen.items():
        assert found["recursion"] == found["json"] == "RecursionError", kind
        stack = found["stack"]
        if stack["thread_stack"] < stack["python_stack"]:
            assert stack["on_python_stack"], f"{kind} ran on a {stack['thread_stack']}-byte stack"
        assert stack["free"] > 1_000_000, kind
    assert seen["route"]["stack"]["thread_stack"] == 100 * 1024, "Orthanc's HTTP threads, as measured"


# A stored-instance callback that uploads an instance, which calls it again:
# the upload at the nesting limit is refused before Orthanc stores anything.
CHAIN_OFFICIAL = """
import json
import orthanc

FOLDER = __file__.rsplit("/", 1)[0]
CALLED = []

def OnStored(instance, instance_id):
    depth = int(json.loads(instance.GetInstanceSimplifiedJson())["PatientID"].split("-")[1])
    CALLED.append(depth)
    with open(f"{FOLDER}/chain-{depth + 1}.dcm", "rb") as source:
        orthanc.RestApiPost("/instances", source.read())

def Called(output, uri, **request):
    output.AnswerBuffer(json.dumps(CALLED), "application/json")

orthanc.RegisterOnStoredInstanceCallback(OnStored)
orthanc.RegisterRestCallback("/called", Called)
"""

CHAIN_DECORATORS = """
from orthanc_py import on_stored_instance, rest, route

FOLDER = __file__.rsplit("/", 1)[0]
CALLED = []

@on_stored_instance
def upload_the_next(instance):
    depth = int(instance.simplified_json["PatientID"].split("-")[1])
    CALLED.append(depth)
    with open(f"{FOLDER}/chain-{depth + 1}.dcm", "rb") as source:
        rest.post("/instances", source.read())

@route("/called")
def called(request):
    return CALLED
"""


@pytest.mark.parametrize("script", [CHAIN_OFFICIAL, CHAIN_DECORATORS], ids=["orthanc-module", "decorators"])
def test_uploads_nested_through_stored_instance_callbacks_stop_at_the_limit(make_orthanc, script):
    server = make_orthanc(script, start=False)
    folder = Path(server.configuration["PythonScript"]).parent
    for depth in range(_capi.MAX_NESTING + 5):
        (folder / f"chain-{depth}.dcm").write_bytes(make_dicom(patient_id=f"CHAIN-{depth:02d}"))
    server.start()
    assert server.post("/instances", (folder / "chain-0.dcm").read_bytes()).status == 200
    stored = sorted(server.get_json(f"/instances/{i}/simplified-tags")["PatientID"]
                    for i in server.get_json("/instances"))
    assert stored == [f"CHAIN-{depth:02d}" for depth in range(_capi.MAX_NESTING)]
    assert server.get_json("/called") == list(range(_capi.MAX_NESTING)), "every stored instance had its callback"
    assert (f"RestApiPost /instances refused: {_capi.MAX_NESTING} callbacks already run nested"
            in server.log)
    assert server.get("/system").status == 200
    assert server.stop() == 0


def test_the_ucontext_stack_switch_holds_too(make_orthanc):
    # Processors other than x86-64 and ARM64 switch stacks through ucontext:
    # a loader built that way here runs the same bomb.
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    libdir = sysconfig.get_config_var("LIBDIR")
    repo = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(dir=sys.prefix, prefix="ucontext-loader-"))  # in the venv, as a loader must be
    try:
        loader = folder / "libOrthancPy.so"
        subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-DORTHANC_PY_UCONTEXT_STACKS", "-o", str(loader),
             str(repo / "loader" / "loader.c"), f"-I{sysconfig.get_paths()['include']}",
             f"-L{libdir}", f"-lpython{version}", f"-Wl,-rpath,{libdir}", "-ldl"],
            check=True,
        )
        server = make_orthanc(
            """
            import json
            import _orthanc_py_loader
            from orthanc_py import route

            @route("/json", methods=["POST"])
            def echo(request):
                return request.json()

            @route("/stack")
            def stack(request):
                return _orthanc_py_loader.stack()
            """,
            plugin=str(loader),
        )
        assert server.get_json("/stack")["on_python_stack"] is True
        bomb = server.post("/json", nested("list", 200_000), headers={"Content-Type": "application/json"})
        assert bomb.status == 400
        assert server.post("/json", nested("dict", 100)).text == nested("dict", 100)
        assert server.stop() == 0
    finally:
        shutil.rmtree(folder)


def test_a_client_that_leaves_during_its_answer_is_an_info_line(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import route

        @route("/big")
        def big(request):
            return b"x" * (5 << 20)
        """,
        verbose=True,
    )
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.http_port)) as client:
            client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(1024)  # the answer has begun
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    line = server.wait_for_log(r"(?m)^([IWE])\d{4} .*: the client closed the connection before its answer")
    assert line.group(1) == "I", line.group(0)
    assert "sending its answer" not in server.log
    assert "/big" in line.group(0), "the line names the route"
    assert server.get("/system").status == 200


def test_a_long_traceback_is_cut_short_in_the_log(make_orthanc):
    # json.dumps() of a deep answer fails with a note per level on CPython 3.14.
    server = make_orthanc(
        """
        from orthanc_py import route

        @route("/notes")
        def notes(request):
            error = ValueError("many notes")
            for n in range(10_000):
                error.add_note(f"note {n}")
            raise error
        """
    )
    assert server.get("/notes").status == 500
    assert "ValueError: many notes" in server.log
    assert "lines left out ...]" in server.log
    assert "note 9999" in server.log
    assert "note 5000" not in server.log
    assert server.log.count("\n") < 1000
