# SPDX-License-Identifier: GPL-3.0-or-later
"""A client that does not read its answer holds up no other Python route.

Small answers are handed to Orthanc with the GIL kept (a copy into the
socket's buffer); larger ones may wait for the client, so the GIL is released
for them. Here a client asks for a large answer and never reads it: Orthanc's
thread then waits on the socket, and other routes, in both APIs, must go on
answering meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from orthanc_py import _capi
from orthanc_py.server import OrthancServer

BIG = 64 * 1024 * 1024  # far more than the socket buffers of both ends hold

SCRIPT = f"""
import orthanc
from orthanc_py import Response, route

@route("/big")
def big(request):
    return Response(b"x" * {BIG}, headers={{"Content-Type": "application/octet-stream"}})

def big_module(output, uri, **request):
    output.AnswerBuffer(b"y" * {BIG}, "application/octet-stream")

orthanc.RegisterRestCallback("/big-module", big_module)

@route("/small/<int:size>")
def small(request, size):
    return "s" * size

def hello(output, uri, **request):
    output.AnswerBuffer("hello", "text/plain")

orthanc.RegisterRestCallback("/hello-module", hello)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("answer-gil")
    script = workdir / "script.py"
    script.write_text(SCRIPT)
    orthanc = OrthancServer(str(workdir), script=str(script)).start()
    yield orthanc
    orthanc.stop()


def stalled_client(server: OrthancServer, path: str) -> socket.socket:
    """Sends ``GET path`` and reads nothing back (the receive buffer kept small)."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.http_port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return client


@pytest.mark.parametrize("path", ["/big", "/big-module"])
def test_a_client_that_does_not_read_a_large_answer_blocks_no_other_route(server: OrthancServer, path: str) -> None:
    client = stalled_client(server, path)
    try:
        time.sleep(1.0)  # the handler has run; Orthanc's thread now waits for the client to read
        for other in ("/small/10", "/hello-module", f"/small/{_capi.HOLD_GIL_ANSWER_SIZE}"):
            started = time.monotonic()
            answer = server.get(other, timeout=10)
            assert answer.status == 200, (other, answer)
            assert time.monotonic() - started < 5, f"{other} waited for the stalled client of {path}"
        # The stalled answer is whole once the client reads it.
        client.settimeout(30)
        received = 0
        while received < BIG:
            chunk = client.recv(1 << 20)
            assert chunk, f"the connection closed after {received} bytes"
            received += len(chunk)
        assert received >= BIG
    finally:
        client.close()


def test_answers_on_both_sides_of_the_size_threshold_are_whole(server: OrthancServer) -> None:
    for size in (0, 1, _capi.HOLD_GIL_ANSWER_SIZE, _capi.HOLD_GIL_ANSWER_SIZE + 1, 1 << 20):
        answer = server.get(f"/small/{size}")
        assert answer.status == 200
        assert answer.body == b"s" * size
