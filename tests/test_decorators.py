# SPDX-License-Identifier: GPL-3.0-or-later
"""The Flask-like API (``from orthanc_py import route, ...``) against a real Orthanc."""

from __future__ import annotations

import concurrent.futures
import json
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from orthanc_py.server import OrthancServer

from .dicom import make_dicom

APP = '''
import json
import threading
from orthanc_py import (route, add_route, on_change, on_stored_instance, on_startup, on_shutdown,
                        ChangeType, Request, Response, abort, rest, RestError)
import orthanc

@route("/hello")
def hello(request):
    return "Hello!"

@route("/greet/<name>")
def greet(request, name):
    return f"Hello {name}!"

@route("/frames/<int:n>")
def frame(request, n):
    return {"n": n, "type": type(n).__name__}

@route("/files/<path:rest>")
def files(request, rest):
    return {"rest": rest}

@route("/jobs/<uuid:job>")
def job(request, job):
    return {"job": str(job), "version": job.version}

@route("/items", methods=["GET"])
def list_items(request):
    return {"args": request.args, "method": request.method}

@route("/items", methods=["POST", "PUT"])
def add_item(request):
    item = request.json()
    return {"got": item, "content_type": request.headers.get("Content-Type"), "method": request.method}, 201

@route("/bytes")
def some_bytes(request):
    return bytes(range(256))

@route("/nothing")
def nothing(request):
    return None

@route("/custom")
def custom(request):
    return Response("<b>hi</b>", status=202, headers={"X-Custom": "yes"}, content_type="text/html")

@route("/triple")
def triple(request):
    return "gone", 404, {"X-Reason": "test"}

@route("/abort/<int:status>")
def aborting(request, status):
    abort(status, "no access for you")

@route("/boom")
def boom(request):
    raise RuntimeError("internal detail 5678")

@route("/weird")
def weird(request):
    return 3.14

@route("/study-count")
def study_count(request):
    return {"count": len(rest.get_json("/studies"))}

@route("/missing-study")
def missing_study(request):
    try:
        rest.get("/studies/nope")
    except RestError as error:
        return {"status": error.status}

@route("/uncaught-missing")
def uncaught_missing(request):
    return rest.get("/studies/no-such-study")

@route("/body-echo", methods=["POST"])
def body_echo(request):
    return request.body

def listed(request):
    return "listed"

add_route("/listed", listed)

# Mixing both APIs in one script
def OnLegacy(output, uri, **request):
    output.AnswerBuffer("legacy", "text/plain")

orthanc.RegisterRestCallback("/legacy", OnLegacy)

EVENTS = []
ALL_EVENTS = []

@on_change(ChangeType.NEW_STUDY, ChangeType.STABLE_STUDY)
def study_events(change):
    EVENTS.append([change.change_type.name, change.resource_type.name, change.resource_id])

@on_change
def every_event(change):
    ALL_EVENTS.append(change.change_type.name)

@on_change(ChangeType.NEW_INSTANCE)
def failing(change):
    raise ValueError("handler failure 42")

@route("/events")
def events(request):
    return {"studies": EVENTS, "all": ALL_EVENTS}

STORED = {}

@on_stored_instance
def stored(instance):
    STORED[instance.id] = {
        "size": instance.size,
        "data": len(instance.data),
        "origin": instance.origin.name,
        "remote_aet": instance.remote_aet,
        "transfer_syntax": instance.transfer_syntax,
        "metadata": instance.metadata("TransferSyntax"),
        "patient": instance.simplified_json["PatientID"],
        "json_patient": instance.json["0010,0020"]["Value"],
    }

@route("/stored/<instance_id>")
def stored_info(request, instance_id):
    if instance_id not in STORED:
        abort(404, "not stored")
    return STORED[instance_id]

LIFECYCLE = []

@on_startup
def started():
    LIFECYCLE.append("started")
    LIFECYCLE.append(rest.get_json("/system")["Name"])

@on_shutdown
def stopping():
    print("shutdown handler ran")

@route("/lifecycle")
def lifecycle(request):
    return LIFECYCLE

@route("/late")
def late(request):
    try:
        route("/too-late")(lambda request: "x")
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("app")
    script = Path(workdir) / "app.py"
    script.write_text(textwrap.dedent(APP))
    server = OrthancServer(str(workdir / "orthanc"), script=str(script), config={"StableAge": 1})
    server.start()
    yield server
    assert server.stop() == 0
    assert "shutdown handler ran" in server.log


def test_plain_rule_and_string_parameters(app):
    hello = app.get("/hello")
    assert (hello.status, hello.text) == (200, "Hello!")
    assert hello.headers["content-type"] == "text/plain; charset=utf-8"
    assert app.get("/greet/J%C3%B6rg").text == "Hello Jörg!"


def test_converters_give_python_values(app):
    assert app.get("/frames/42").json() == {"n": 42, "type": "int"}
    assert app.get("/frames/abc").status == 404
    assert app.get("/files/a/b/c.dcm").json() == {"rest": "a/b/c.dcm"}
    value = uuid.uuid4()
    assert app.get(f"/jobs/{value}").json() == {"job": str(value), "version": 4}
    assert app.get("/jobs/not-a-uuid").status == 404


def test_methods_share_a_rule_and_others_get_405_with_allow(app):
    assert app.get("/items?name=J%C3%B6rg&x=1").json() == {"args": {"name": "Jörg", "x": "1"}, "method": "GET"}
    created = app.post("/items", json.dumps({"a": 1}), headers={"Content-Type": "application/json"})
    assert created.status == 201
    assert created.json() == {"got": {"a": 1}, "content_type": "application/json", "method": "POST"}
    assert app.request("PUT", "/items", "[1]").json()["method"] == "PUT"
    refused = app.request("DELETE", "/items")
    assert refused.status == 405
    assert refused.headers["allow"] == "GET,POST,PUT"


def test_return_types_set_the_content_type(app):
    binary = app.get("/bytes")
    assert binary.body == bytes(range(256))
    assert binary.headers["content-type"] == "application/octet-stream"
    assert app.get("/frames/1").headers["content-type"] == "application/json"
    empty = app.get("/nothing")
    assert (empty.status, empty.body) == (204, b"")
    custom = app.get("/custom")
    assert (custom.status, custom.text) == (202, "<b>hi</b>")
    assert custom.headers["content-type"] == "text/html"
    assert custom.headers["x-custom"] == "yes"
    triple = app.get("/triple")
    assert (triple.status, triple.text, triple.headers["x-reason"]) == (404, "gone", "test")


def test_abort_answers_a_small_json_error(app):
    for status in (400, 403, 404, 409):
        answer = app.get(f"/abort/{status}")
        assert answer.status == status
        assert answer.json() == {"status": status, "message": "no access for you"}


def test_malformed_json_is_a_400(app):
    answer = app.post("/items", "{not json")
    assert answer.status == 400
    assert "the body is not valid JSON" in answer.json()["message"]
    empty = app.post("/items", b"")
    assert (empty.status, empty.json()["message"]) == (400, "the body is empty: JSON expected")


def test_exceptions_and_unsupported_results_are_500_without_details(app):
    boom = app.get("/boom")
    assert boom.status == 500
    assert "internal detail" not in boom.text and "Traceback" not in boom.text
    assert "RuntimeError: internal detail 5678" in app.log
    weird = app.get("/weird")
    assert weird.status == 500
    assert "Response body must be str, bytes, dict, list, an iterator of chunks or None, not float" in app.log
    assert app.get("/hello").status == 200


def test_rest_client_and_its_errors(app):
    assert app.get("/study-count").json() == {"count": len(app.get_json("/studies"))}
    assert app.get("/missing-study").json() == {"status": 404}
    # Not caught by the handler: the client gets the status, not the internal URI.
    uncaught = app.get("/uncaught-missing")
    assert uncaught.status == 404
    assert uncaught.json() == {"status": 404, "message": "Not Found"}
    assert "no-such-study" not in uncaught.text


def test_binary_bodies_reach_the_handler_intact(app):
    payload = bytes(range(256)) * 10
    assert app.post("/body-echo", payload).body == payload


def test_add_route_and_the_official_api_in_one_script(app):
    assert app.get("/listed").text == "listed"
    assert app.get("/legacy").text == "legacy"


def test_registering_after_start_is_refused(app):
    late = app.get("/late").json()
    assert late["error"] == "SetupError"
    assert "must be called while the script loads" in late["message"]


def test_startup_runs_once_orthanc_serves(app):
    assert app.get("/lifecycle").json() == ["started", "orthanc-py"]


def test_change_handlers_filter_and_keep_order(app):
    study = f"1.2.3.4.{time.time_ns()}"
    first = app.post("/instances", make_dicom(patient_id="EV-1", study_uid=study)).json()
    app.post("/instances", make_dicom(patient_id="EV-1", study_uid=study))
    study_id = first["ParentStudy"]

    def seen():
        events = app.get_json("/events")["studies"]
        return events if ["STABLE_STUDY", "STUDY", study_id] in events else None

    events = app.wait_until(seen, timeout=30, what="STABLE_STUDY event")
    mine = [e for e in events if e[2] == study_id]
    assert mine == [["NEW_STUDY", "STUDY", study_id], ["STABLE_STUDY", "STUDY", study_id]]
    every = app.get_json("/events")["all"]
    assert every[0] == "ORTHANC_STARTED"
    assert every.index("NEW_STUDY") < every.index("STABLE_STUDY")
    assert "ValueError: handler failure 42" in app.log  # logged, and the other handlers still ran


def test_stored_instance_fields_match_the_upload(app):
    dicom = make_dicom(patient_id="STORED-7")
    instance_id = app.post("/instances", dicom).json()["ID"]
    info = app.get_json(f"/stored/{instance_id}")
    assert info == {
        "size": len(dicom),
        "data": len(dicom),
        "origin": "REST_API",
        "remote_aet": "",
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "metadata": "1.2.840.10008.1.2.1",
        "patient": "STORED-7",
        "json_patient": "STORED-7",
    }


OFFLOAD = '''
import math, os, time
from orthanc_py import route

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        math.sqrt(12345.678)

@route("/cpu", offload=True)
def cpu(request):
    started = time.monotonic()
    burn(float(request.args.get("s", "1")))
    return {"pid": os.getpid(), "took": time.monotonic() - started}

@route("/pid")
def pid(request):
    return {"pid": os.getpid()}

def square_in_worker(x):
    return {"square": x * x, "pid": os.getpid()}

@route("/mixed/<int:x>")
def mixed(request, x):
    from orthanc_py import rest, run_in_worker
    name = rest.get_json("/system")["Name"]
    return {"name": name, **run_in_worker(square_in_worker, x)}
'''


def test_offloaded_routes_run_in_worker_processes_in_parallel(make_orthanc):
    server = make_orthanc(OFFLOAD, config={"Python": {"OffloadWorkers": 2}})
    main_pid = server.get_json("/pid")["pid"]
    single = server.get_json("/cpu?s=0.1")
    assert single["pid"] != main_pid
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda _: server.get_json("/cpu?s=1"), range(2)))
    assert len({answer["pid"] for answer in both}) == 2, "two workers served the two calls"
    mixed = server.get_json("/mixed/7")
    assert (mixed["name"], mixed["square"]) == ("orthanc-py", 49) and mixed["pid"] != main_pid
    assert server.stop() == 0


def test_an_offloaded_handler_that_cannot_be_pickled_fails_at_load(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import route

        def make():
            @route("/nested", offload=True)
            def nested(request):
                return "never"
        make()
        """,
        start=False,
    )
    from orthanc_py.server import OrthancStartError

    with pytest.raises(OrthancStartError):
        server.start()
    assert server.wait_exit() > 0
    assert "offload=True needs a handler that worker processes can import by name" in server.log
    assert "make.<locals>.nested cannot be pickled" in server.log


@pytest.mark.parametrize(
    "source, message",
    [
        ('route("/a", methods=["PATCH"])(lambda r: 1)', "method 'PATCH' is not one Orthanc hands to plugins"),
        ('route("no-slash")(lambda r: 1)', "must be a string starting with '/'"),
        ('route("/a")(lambda r: 1); route("/a")(lambda r: 2)', "GET is already handled by <lambda>"),
        ('route("/a", methods="GET")(lambda r: 1)', "methods must be a list such as ['GET', 'POST']"),
    ],
)
def test_route_mistakes_stop_the_start_with_the_fix(make_orthanc, source, message):
    server = make_orthanc(f"from orthanc_py import route\n{source}\n", start=False)
    from orthanc_py.server import OrthancStartError

    with pytest.raises(OrthancStartError):
        server.start()
    assert message in server.log


def test_http_filter_builds_a_token_check(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import http_filter, route

        SEEN = []

        @http_filter
        def token_for_secure_paths(request):
            SEEN.append((request.method, request.path, request.ip))
            if request.path.startswith("/secure/"):
                return request.headers.get("Authorization") == "Bearer s3cret"
            return True

        @http_filter
        def no_deletes_of_patients(request):
            return not (request.method == "DELETE" and request.path.startswith("/patients/"))

        @http_filter
        def broken_for_one_path(request):
            if request.path == "/system" and request.args.get("break") == "yes please":
                return "yes"
            return True

        @route("/secure/data")
        def data(request):
            return {"secret": 42}

        @route("/seen")
        def seen(request):
            return SEEN[-3:]
        """
    )
    assert server.get("/secure/data").status == 403
    assert server.get("/secure/data", headers={"Authorization": "Bearer wrong"}).status == 403
    allowed = server.get("/secure/data", headers={"Authorization": "Bearer s3cret"})
    assert (allowed.status, allowed.json()) == (200, {"secret": 42})
    assert server.get("/system").status == 200, "other paths, Orthanc's own included, go through"
    assert server.request("DELETE", "/patients/whatever").status == 403
    assert server.get("/seen").json()[-1] == ["GET", "/seen", "127.0.0.1"]
    broken = server.get("/system?break=yes%20please")
    assert broken.status == 500, "a filter that answers neither True nor False refuses"
    assert "returned str, not True or False" in server.log


def test_on_received_instance_keeps_changes_or_drops(make_orthanc):
    server = make_orthanc(
        """
        import io
        import pydicom
        from orthanc_py import on_received_instance, InstanceOrigin

        @on_received_instance
        def drop_test_patients(instance):
            if b"DROP-ME" in instance.data:
                return False

        @on_received_instance
        def rename(instance):
            dataset = pydicom.dcmread(io.BytesIO(instance.data))
            if dataset.PatientID == "MODIFY-ME":
                dataset.PatientName = "Renamed^By^Script"
                out = io.BytesIO()
                dataset.save_as(out)
                return out.getvalue()
            return None

        @on_received_instance
        def check_origin(instance):
            assert instance.origin == InstanceOrigin.REST_API
        """
    )
    dropped = server.post("/instances", make_dicom(patient_id="DROP-ME"))
    assert dropped.json()["Status"] == "FilteredOut"
    kept = server.post("/instances", make_dicom(patient_id="KEEP-ME")).json()
    assert server.get_json(f"/instances/{kept['ID']}/simplified-tags")["PatientID"] == "KEEP-ME"
    changed = server.post("/instances", make_dicom(patient_id="MODIFY-ME")).json()
    assert server.get_json(f"/instances/{changed['ID']}/simplified-tags")["PatientName"] == "Renamed^By^Script"
    patients = {p["MainDicomTags"]["PatientID"] for p in server.get_json("/patients?expand")}
    assert patients == {"KEEP-ME", "MODIFY-ME"}


def test_on_received_instance_that_fails_refuses_the_instance(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import on_received_instance

        @on_received_instance
        def deidentify(instance):
            if b"RAISE" in instance.data:
                raise RuntimeError("de-identification failed")
            if b"TEXT" in instance.data:
                return "done"
            return None
        """
    )
    for patient in ("RAISE", "TEXT"):
        assert server.post("/instances", make_dicom(patient_id=patient)).status == 500
    assert server.get_json("/instances") == [], "the originals a failed handler saw are not stored"
    assert "RuntimeError: de-identification failed" in server.log
    assert "deidentify returned str" in server.log
    assert server.post("/instances", make_dicom(patient_id="FINE")).status == 200
    assert len(server.get_json("/instances")) == 1


def test_offload_accepts_any_executor(make_orthanc):
    server = make_orthanc(
        """
        import concurrent.futures, threading
        from orthanc_py import route

        POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mine")

        @route("/where", offload=POOL)
        def where(request):
            return {"thread": threading.current_thread().name}
        """
    )
    assert server.get_json("/where")["thread"].startswith("mine")


def test_rest_request_writes_metadata_only_over_the_revision_it_read(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import RestError, rest, route

        @route("/notes/<instance>", methods=["GET", "PUT"])
        def note(request, instance):
            uri = f"/instances/{instance}/metadata/note"
            if request.method == "GET":
                answer = rest.request("GET", uri)
                return {"status": answer.status, "etag": answer.headers.get("etag"), "note": answer.body.decode()}
            # A compare-and-set: the note is written over the revision the client read, or not at all.
            revision = request.headers.get("if-match")
            answer = rest.request("PUT", uri, request.body, headers={"If-Match": revision} if revision else None)
            return {"status": answer.status}

        @route("/misuse")
        def misuse(request):
            found = {}
            try:
                rest.request("POST", "/tools/find", "not JSON")
            except RestError as error:
                found["bad body"] = error.status
            try:
                rest.request("PATCH", "/system")
            except ValueError as error:
                found["bad method"] = str(error)
            return found
        """,
        # Orthanc checks If-Match only with CheckRevisions.
        config={"CheckRevisions": True, "UserMetadata": {"note": 1025}},
    )
    instance = server.upload(make_dicom(patient_id="NOTES"))["ID"]

    def read() -> dict:
        return server.get_json(f"/notes/{instance}")

    def write(note: str, revision: str | None = None) -> int:
        headers = {"If-Match": revision} if revision else None
        return server.request("PUT", f"/notes/{instance}", note, headers=headers).json()["status"]

    assert read()["status"] == 404, "no note yet"
    assert write("first") == 200
    first = read()
    assert (first["status"], first["note"]) == (200, "first") and first["etag"]
    assert write("second", first["etag"]) == 200
    assert write("stale", first["etag"]) == 409, "written since that revision was read"
    assert write("blind") == 409, "with CheckRevisions, an existing note is replaced only over its revision"
    second = read()
    assert second["note"] == "second" and second["etag"] != first["etag"]
    assert write("third", second["etag"]) == 200
    assert server.get(f"/instances/{instance}/metadata/note").text == "third"

    assert server.get_json("/notes/no-such-instance")["status"] == 404
    assert server.request("PUT", "/notes/no-such-instance", "x").json()["status"] == 404
    misuse = server.get_json("/misuse")
    assert misuse["bad body"] == 400
    assert "GET, POST, PUT, DELETE" in misuse["bad method"] and "'PATCH'" in misuse["bad method"]
