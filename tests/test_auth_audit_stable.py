# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP authentication, audit logs and stable status: the services of Orthanc 1.12.9.

On an Orthanc that has them, each is driven as a user would: requests with
and without a token, a browser sent to a login page, routes reading who was
let in, audit logs emitted by one handler and recorded by others, a study
declared stable before its ``StableAge``. On an older Orthanc, each
declaration fails at load with an error naming the version needed.
"""

from __future__ import annotations

import http.client
import re

import pytest

from orthanc_py.server import find_orthanc, orthanc_version

from .dicom import make_dicom
from .official import OFFICIAL, start


def release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(map(int, numbers.groups())) if numbers else (99, 0, 0)  # "mainline"


VERSION = orthanc_version(find_orthanc())
HAS_1_12_9 = release(VERSION) >= (1, 12, 9)
TOO_OLD = "needs Orthanc 1.12.9 or newer; this Orthanc is " + VERSION

DECORATORS = """
import json
from orthanc_py import (HTTPError, ResourceType, abort, emit_audit_log, http_auth, mark_stable, on_audit_log,
                        on_change, ChangeType, route)

ERRORS = {}
LOGS = []
STABLE = []
TOKENS = {"alice-token": {"user": "alice", "admin": False}, "root-token": {"user": "root", "admin": True}}

try:
    @http_auth
    def check_token(request):
        if request.path.startswith("/public/"):
            return "anonymous"
        if request.path == "/old-page":
            raise HTTPError(307, headers={"Location": "/public/login"})
        if request.path == "/broken":
            raise RuntimeError("the token service is down")
        user = TOKENS.get(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if user is None:
            return None
        if request.path.startswith("/tools/") and not user["admin"]:
            abort(403)
        return user
except Exception as error:
    ERRORS["http_auth"] = f"{type(error).__name__}: {error}"

try:
    @on_audit_log
    def record(log):
        LOGS.append({"source": log.source_plugin, "user": log.user_id, "type": log.resource_type.name,
                     "id": log.resource_id, "action": log.action, "data": log.json()})

    @on_audit_log
    def failing(log):
        raise ValueError("the audit database is full")
except Exception as error:
    ERRORS["on_audit_log"] = f"{type(error).__name__}: {error}"

@on_change(ChangeType.STABLE_STUDY)
def stable(change):
    STABLE.append(change.resource_id)

@route("/public/whoami")
@route("/private/whoami")
def whoami(request):
    return {"auth": request.auth}

@route("/public/state")
def state(request):
    return {"errors": ERRORS, "logs": LOGS, "stable": STABLE}

@route("/public/audit", methods=["POST"])
def audit(request):
    body = request.json()
    emit_audit_log("forwarded", body["study"], user_id="alice", data={"to": "PACS"})
    return "emitted"

@route("/public/stabilise/<study>", methods=["POST"])
def stabilise(request, study):
    try:
        return {"changed": mark_stable(study)}
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
"""


@pytest.fixture(scope="module")
def ours(orthanc_factory_module):
    return orthanc_factory_module(DECORATORS, config={"StableAge": 3600})


@pytest.fixture(scope="module")
def orthanc_factory_module(tmp_path_factory):
    from orthanc_py.server import OrthancServer

    servers = []

    def make(script: str, config: dict | None = None) -> OrthancServer:
        workdir = tmp_path_factory.mktemp("security")
        (workdir / "script.py").write_text(script)
        server = OrthancServer(str(workdir), script=str(workdir / "script.py"), config=config or {})
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop(timeout=60)


ROOT = {"Authorization": "Bearer root-token"}


def upload(server, patient_id: str) -> str:
    """Uploads an instance as the administrator; returns its study's ID."""
    answer = server.post("/instances", make_dicom(patient_id=patient_id), headers=ROOT)
    assert answer.status == 200, answer.text
    return answer.json()["ParentStudy"]


def raw(server, path: str, token: str | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    return connection.getresponse()


def test_the_declarations_fail_at_load_on_an_orthanc_without_them(ours):
    errors = ours.get_json("/public/state")["errors"]
    if HAS_1_12_9:
        assert errors == {}
        return
    # OrthancException's text is its (code, description) pair, as in the official plugin.
    assert errors["http_auth"] == f"SdkVersionError: (26, 'RegisterHttpAuthentication() {TOO_OLD}')"
    assert errors["on_audit_log"] == f"SdkVersionError: (26, 'RegisterAuditLogHandler() {TOO_OLD}')"


def test_http_auth_lets_in_refuses_and_redirects(ours):
    if not HAS_1_12_9:
        assert ours.get("/private/whoami").status == 200, "no authentication on this Orthanc"
        return
    assert ours.get("/private/whoami").status == 401
    assert ours.get("/system").status == 401, "Orthanc's own routes are authenticated too"
    alice = {"Authorization": "Bearer alice-token"}
    assert ours.get("/private/whoami", headers=alice).json() == {"auth": {"user": "alice", "admin": False}}
    assert ours.get("/system", headers=alice).status == 200
    assert ours.get("/tools/now", headers=alice).status == 403
    assert ours.get("/tools/now", headers={"Authorization": "Bearer root-token"}).status == 200
    assert ours.get("/public/whoami").json() == {"auth": "anonymous"}
    redirect = raw(ours, "/old-page")
    assert redirect.status == 307
    assert redirect.getheader("Location").endswith("/public/login")


def test_a_broken_authentication_handler_refuses_and_says_why(ours):
    if not HAS_1_12_9:
        assert ours.get("/broken").status == 404
        return
    assert ours.get("/broken", headers={"Authorization": "Bearer root-token"}).status == 403
    ours.wait_for_log("the token service is down")
    assert "the HTTP authentication check_token" in ours.log


def test_audit_logs_reach_every_handler(ours):
    study = upload(ours, "AUDIT")
    answer = ours.post("/public/audit", f'{{"study": "{study}"}}')
    if not HAS_1_12_9:
        assert answer.status == 500
        ours.wait_for_log(r"EmitAuditLog\(\) " + re.escape(TOO_OLD))
        return
    assert answer.text == "emitted"
    logs = ours.get_json("/public/state")["logs"]
    assert logs == [{"source": "orthanc_py", "user": "alice", "type": "STUDY", "id": study, "action": "forwarded",
                     "data": {"to": "PACS"}}]
    ours.wait_for_log("the audit database is full")


def test_mark_stable_sends_the_stable_change_at_once(ours):
    study = upload(ours, "STABLE")
    answer = ours.post_json(f"/public/stabilise/{study}")
    if not HAS_1_12_9:
        assert answer == {"error": f"SdkVersionError: (26, 'SetStableStatus() {TOO_OLD}')"}
        return
    assert answer == {"changed": True}
    ours.wait_until(lambda: study in ours.get_json("/public/state")["stable"], what="STABLE_STUDY")
    assert ours.get(f"/studies/{study}", headers=ROOT).json()["IsStable"] is True  # StableAge is an hour
    assert ours.post_json(f"/public/stabilise/{study}") == {"changed": False}


OFFICIAL_STABLE = """
import json

def Stabilise(output, uri, **request):
    study = request["groups"][0]
    try:
        result = orthanc.SetStableStatus(study, orthanc.StableStatus.STABLE)
        answer = {"result": list(result), "enum": [orthanc.StableStatus.STABLE, orthanc.StableStatus.UNSTABLE]}
    except Exception as error:
        answer = {"error": type(error).__name__}
    output.AnswerBuffer(json.dumps(answer), "application/json")

orthanc.RegisterRestCallback("/stabilise/(.*)", Stabilise)
"""


@pytest.mark.parametrize("plugin", [None, OFFICIAL], ids=["ours", "official"])
def test_the_orthanc_modules_set_stable_status(make_orthanc, plugin):
    server = start(make_orthanc, plugin, OFFICIAL_STABLE, config={"StableAge": 3600})
    study = server.upload(make_dicom(patient_id="OFFICIAL"))["ParentStudy"]
    answer = server.get_json(f"/stabilise/{study}")
    if HAS_1_12_9:
        assert answer == {"result": [0, 1], "enum": [0, 1]}
        assert server.get_json(f"/studies/{study}")["IsStable"] is True
        assert server.get_json(f"/stabilise/{study}")["result"] == [0, 0]
    elif plugin is None:
        assert answer == {"error": "SdkVersionError"}
    else:  # the official plugin before 7.1 has no SetStableStatus
        assert answer == {"error": "AttributeError"}
