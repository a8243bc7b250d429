# SPDX-License-Identifier: GPL-3.0-or-later
"""Streamed answers: a ``@route`` that returns an iterator, and ``RestOutput.StartStreamAnswer()``.

On an Orthanc that streams (1.12.6 and later), each chunk reaches the client
as the handler yields it, in an answer without a length that ends when Orthanc
closes the connection; on an older one the same
route answers once, with every chunk in one body, and the log says why once.
The clients here are plain sockets (``http.client``), as a user's would be.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from orthanc_py.server import OrthancServer, find_orthanc, orthanc_version

from .official import OFFICIAL, start


def release(version: str) -> tuple[int, ...]:
    numbers = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(map(int, numbers.groups())) if numbers else (99, 0, 0)  # "mainline"


STREAMS = release(orthanc_version(find_orthanc())) >= (1, 12, 6)

SCRIPT = """
import threading
from orthanc_py import Response, route

GATE = threading.Event()
CLOSED = []

@route("/stream/lines")
def lines(request):
    for n in range(5):
        yield f"line {n}\\n"

@route("/stream/gated")
def gated(request):
    try:
        yield b"before the gate\\n"
        GATE.wait(30)
        yield b"after the gate\\n"
    finally:
        CLOSED.append("gated")

@route("/stream/open-gate", methods=["POST"])
def open_gate(request):
    GATE.set()
    return "opened"

@route("/stream/closed")
def closed(request):
    return {"closed": CLOSED}

@route("/stream/big")
def big(request):
    try:
        for n in range(64):
            yield bytes([65 + n % 26]) * (1 << 20)
    finally:
        CLOSED.append("big")

@route("/stream/typed")
def typed(request):
    return Response((part for part in ("a,b\\n", "1,2\\n")), headers={"X-Rows": "2"}, content_type="text/csv")

@route("/stream/failing")
def failing(request):
    yield b"first\\n"
    raise RuntimeError("the data source went away")

@route("/stream/wrong-chunk")
def wrong_chunk(request):
    yield 42

@route("/ping")
def ping(request):
    return "pong"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the tests of the script: each uses its own routes."""
    workdir = tmp_path_factory.mktemp("streaming")
    (workdir / "script.py").write_text(SCRIPT)
    server = OrthancServer(str(workdir), script=str(workdir / "script.py"))
    server.start()
    yield server
    server.stop(timeout=60)


def raw_get(server, path: str) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    connection.request("GET", path)
    return connection.getresponse()


def test_a_generator_route_answers_every_chunk(server):
    answer = raw_get(server, "/stream/lines")
    assert answer.status == 200
    assert answer.read() == b"".join(f"line {n}\n".encode() for n in range(5))
    if STREAMS:
        # Orthanc sends a stream without a length: it ends when the connection closes.
        assert answer.getheader("Content-Length") is None, answer.getheaders()
        assert answer.getheader("Connection") == "close", answer.getheaders()
    else:
        assert answer.getheader("Content-Length") == str(len(b"line 0\n") * 5)
        server.wait_for_log(r"cannot stream answers \(Orthanc 1\.12\.6 can\)")
        assert server.log.count("cannot stream answers") == 1


def test_the_client_reads_a_chunk_before_the_handler_yields_the_next(server):
    answer = raw_get(server, "/stream/gated") if STREAMS else None
    if not STREAMS:
        # Buffered: the answer waits for the whole generator, so the gate is opened first.
        assert server.post("/stream/open-gate").text == "opened"
        assert server.get("/stream/gated").body == b"before the gate\nafter the gate\n"
        return
    assert answer.readline() == b"before the gate\n"  # the handler is still waiting at the gate
    assert server.post("/stream/open-gate").text == "opened"
    assert answer.readline() == b"after the gate\n"
    assert answer.read() == b""
    assert "gated" in server.get_json("/stream/closed")["closed"]


def test_other_requests_are_served_while_a_client_reads_slowly(server):
    """64 MiB to a client that reads nothing: the route waits in Orthanc's send, without the GIL."""
    if not STREAMS:
        assert server.get("/stream/big").body[:3] == b"AAA"
        assert server.get("/ping").text == "pong"
        return
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /stream/big HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)  # the handler has filled the socket's buffers and waits in SendStreamChunk
    answers = []
    pinger = threading.Thread(target=lambda: answers.append(server.get("/ping", timeout=20).text))
    pinger.start()
    pinger.join(25)
    assert answers == ["pong"], "a Python route answered while another waited on a slow client"
    sock.close()  # the client goes away: the generator is closed, Orthanc goes on
    server.wait_until(lambda: "big" in server.get_json("/stream/closed")["closed"], what="the generator closed")
    assert server.get("/ping").text == "pong"


def test_a_response_object_streams_with_its_headers(server):
    answer = raw_get(server, "/stream/typed")
    assert answer.status == 200
    assert answer.getheader("Content-Type") == "text/csv"
    assert answer.getheader("X-Rows") == "2"
    assert answer.read() == b"a,b\n1,2\n"


def test_a_generator_that_raises_is_logged_and_orthanc_keeps_serving(server):
    answer = raw_get(server, "/stream/failing")
    if STREAMS:
        # Once the first chunk is sent, the status cannot change: the stream stops short.
        assert answer.status == 200
        assert answer.read() == b"first\n"
    else:
        assert answer.status == 500
    server.wait_for_log("the data source went away")
    assert "route /stream/failing" in server.log
    assert server.get("/ping").text == "pong"


def test_a_chunk_of_the_wrong_type_names_the_fix(server):
    answer = raw_get(server, "/stream/wrong-chunk")
    answer.read()
    server.wait_for_log(r"a streamed answer's chunks must be bytes or str, not int")
    assert server.get("/ping").text == "pong"


OFFICIAL_SCRIPT = """
def Streamed(output, uri, **request):
    try:
        output.StartStreamAnswer("text/plain")
        output.SendStreamChunk(b"one,")
        output.SendStreamChunk(b"two")
    except Exception as error:
        output.AnswerBuffer(type(error).__name__ + ": " + str(error), "text/plain")

orthanc.RegisterRestCallback("/official/stream", Streamed)
"""


@pytest.mark.parametrize("plugin", [None, OFFICIAL], ids=["ours", "official"])
def test_the_orthanc_modules_stream_functions(make_orthanc, plugin):
    server = start(make_orthanc, plugin, OFFICIAL_SCRIPT)
    answer = raw_get(server, "/official/stream")
    body = answer.read()
    if STREAMS:
        assert (answer.status, body) == (200, b"one,two")
        assert answer.getheader("Content-Length") is None, answer.getheaders()
    elif plugin is None:
        # The official plugin has no such methods before 5.0 (AttributeError on Debian 12).
        # OrthancException's text is its (code, description) pair, as in the official plugin.
        assert body.decode().startswith("SdkVersionError: (26, 'StartStreamAnswer() needs Orthanc 1.12.6 or newer")
    else:
        assert body.startswith(b"AttributeError")
