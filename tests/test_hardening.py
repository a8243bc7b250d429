# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile input and misbehaving scripts: Orthanc keeps serving, answers every request, lets no one in."""

from __future__ import annotations

import base64
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthanc_py.server import OrthancServer

FUZZ_SCRIPT = '''
import json
import orthanc
from orthanc_py import route

def Echo(output, uri, **request):
    seen = {"uri": uri, "method": request["method"], "groups": list(request["groups"]),
            "get": request.get("get"), "headers": request["headers"], "body": len(request.get("body", b""))}
    output.AnswerBuffer(json.dumps(seen), "application/json")

orthanc.RegisterRestCallback("/legacy(/.*)?", Echo)

@route("/modern/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
def modern(request, rest):
    return {"rest": rest, "args": request.args, "headers": dict(request.headers), "body": len(request.body),
            "json": request.json() if request.headers.get("content-type") == "application/json" else None}
'''


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    (workdir / "fuzz.py").write_text(FUZZ_SCRIPT)
    server = OrthancServer(str(workdir / "orthanc"), script=str(workdir / "fuzz.py"))
    server.start()
    yield server
    assert server.stop() == 0, "Orthanc survived the fuzzing and stops cleanly"


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends bytes as they are and returns what comes back until the server closes or answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


# Bytes allowed inside a request target or a header value: anything but blanks, CR and LF.
target_bytes = st.binary(min_size=0, max_size=60).map(
    lambda b: bytes(c for c in b if c not in b" \t\r\n")
)
header_value = st.binary(max_size=80).map(lambda b: bytes(c for c in b if c not in b"\r\n"))
header_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).map(str.encode)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE"]),
    prefix=st.sampled_from([b"/legacy/", b"/modern/", b"/modern/x", b"/legacy", b"/"]),
    path=target_bytes,
    query=target_bytes,
    headers=st.lists(st.tuples(header_name, header_value), max_size=6),
    body=st.binary(max_size=2000),
    json_type=st.booleans(),
)
def test_arbitrary_bytes_in_uri_headers_query_and_body_are_answered(
    fuzz_server, method, prefix, path, query, headers, body, json_type
):
    target = prefix + path + (b"?" + query if query else b"")
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             b"Content-Length: " + str(len(body)).encode()]
    lines += [name + b": " + value for name, value in headers if name.lower() not in (b"content-length", b"host",
                                                                                  b"connection", b"transfer-encoding")]
    if json_type:
        lines.append(b"Content-Type: application/json")
    answer = raw_request(fuzz_server.http_port, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), f"no HTTP answer to {target!r}: {answer[:200]!r}"
    status = int(answer[9:12])
    assert status < 500 or b"Exception" not in answer
    assert b"Traceback" not in answer


def test_orthanc_still_serves_after_the_fuzzing(fuzz_server):
    assert fuzz_server.get("/system").status == 200
    assert fuzz_server.get("/modern/still/alive").json()["rest"] == "still/alive"
    assert "Segmentation" not in fuzz_server.log


def test_non_utf8_uris_reach_both_apis_without_harm(fuzz_server):
    for target in (b"/legacy/\xff\xfe%ff%fe", b"/modern/\xc3\x28?x=\xff", b"/modern/%C3%28?%ff=%fe"):
        answer = raw_request(
            fuzz_server.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), target


MISBEHAVING = '''
import sys
import time
from orthanc_py import route, rest, on_change

@route("/block")
def block(request):
    time.sleep(float(request.args.get("s", "3600")))
    return "woke up"

@route("/fine")
def fine(request):
    return "fine"

@route("/recurse")
def recurse(request):
    def down(n):
        return down(n + 1)
    return down(0)

@route("/reenter/<int:n>")
def reenter(request, n):
    if n == 0:
        return "bottom"
    return rest.get(f"/reenter/{n - 1}", plugins=True).decode()

@route("/forever")
def forever(request):
    return rest.get("/forever", plugins=True).decode()

@route("/other-route")
def other_route(request):
    return rest.get("/fine", plugins=True).decode() + " via REST"

@on_change
def always_fails(change):
    raise RuntimeError("every change fails")
'''


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("misbehaving")
    (workdir / "bad.py").write_text(textwrap.dedent(MISBEHAVING))
    server = OrthancServer(str(workdir / "orthanc"), script=str(workdir / "bad.py"))
    server.start()
    yield server
    server.stop()


def test_a_handler_that_blocks_does_not_stop_other_routes(misbehaving):
    # Orthanc waits for the handlers in progress when it stops: the "endless"
    # handler here sleeps 8 s, so that the module's Orthanc can stop after it.
    def wait_in_vain() -> None:
        with pytest.raises(OSError):  # times out: the handler is still asleep
            misbehaving.get("/block?s=8", timeout=3)

    blocked = threading.Thread(target=wait_in_vain, daemon=True)
    blocked.start()
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(OSError):  # the client gives up: the handler does not answer in time
        misbehaving.get("/block?s=8", timeout=2)
    assert time.monotonic() - started < 10
    for _ in range(20):
        assert misbehaving.get("/fine").text == "fine"
    assert misbehaving.get("/system").status == 200


def test_deep_recursion_is_a_500_and_a_log_line(misbehaving):
    answer = misbehaving.get("/recurse")
    assert answer.status == 500
    assert "RecursionError" in misbehaving.log
    assert misbehaving.get("/fine").text == "fine"


def test_reentrant_rest_calls_work_and_runaway_ones_are_refused(misbehaving):
    assert misbehaving.get("/other-route").text == "fine via REST"
    assert misbehaving.get("/reenter/5").text == "bottom"
    runaway = misbehaving.get("/forever")
    assert runaway.status == 500
    assert "callbacks already run nested in one another on this thread" in misbehaving.log
    assert misbehaving.get("/fine").text == "fine"


def test_a_change_handler_failing_on_every_event_leaves_orthanc_serving(misbehaving):
    from .dicom import make_dicom

    for n in range(3):
        assert misbehaving.post("/instances", make_dicom(patient_id=f"FAIL-{n}")).status == 200
    misbehaving.wait_until(
        lambda: misbehaving.log.count("RuntimeError: every change fails") >= 4, what="logged failures"
    )
    assert misbehaving.get("/fine").text == "fine"


def test_routes_do_not_bypass_orthancs_authentication(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import route, rest

        @route("/private")
        def private(request):
            return {"studies": len(rest.get_json("/studies"))}
        """,
        config={"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "s3cret"}},
    )
    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert server.get("/private").status == 401
    assert server.get("/private", headers=basic("alice", "wrong")).status == 401
    allowed = server.get("/private", headers=basic("alice", "s3cret"))
    assert (allowed.status, allowed.json()) == (200, {"studies": 0})


def test_the_dev_server_configuration_listens_for_this_machine_only(tmp_path: Path):
    from orthanc_py.server import build_configuration

    config = build_configuration("script.py", str(tmp_path), 8042, 4242, plugin="/x/libOrthancPy.so")
    assert config["RemoteAccessAllowed"] is False
    # Orthanc's own default then holds: no authentication on loopback only.
    assert "AuthenticationEnabled" not in config
