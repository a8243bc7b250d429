# SPDX-License-Identifier: GPL-3.0-or-later
"""A client that does not read its answers holds up no other Python callback.

Orthanc writes a route's answer to the socket during ``AnswerBuffer``; when
the client does not read, that write waits (up to Orthanc's HTTP timeout,
30 s by default). The loader sends the answer once the callback has returned,
without the GIL, so meanwhile every other route, in both APIs, goes on answering. Two clients are tried: one asking for
one large answer, and one sending many requests for small answers without
reading any (HTTP pipelining), which fills the socket buffers after a while.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

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

def small_module(output, uri, **request):
    output.AnswerBuffer("m" * 16000, "text/plain")

orthanc.RegisterRestCallback("/small-module", small_module)

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


def stalled_client(server: OrthancServer, path: str, requests: int = 1) -> socket.socket:
    """Sends ``requests`` times ``GET path`` on one connection (from a thread) and reads nothing back."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.http_port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    def send() -> None:
        # Blocks once Orthanc stops reading (it waits on its answers); the
        # connection's close at the end of the test ends it.
        try:
            for _ in range(requests):
                client.sendall(request)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    return client


def assert_others_answer(server: OrthancServer, stalled: str) -> None:
    for other in ("/small/10", "/hello-module", "/small/16000"):
        started = time.monotonic()
        answer = server.get(other, timeout=10)
        assert answer.status == 200, (other, answer)
        assert time.monotonic() - started < 5, f"{other} waited for the stalled client of {stalled}"


@pytest.mark.parametrize("path", ["/big", "/big-module"])
def test_a_client_that_does_not_read_a_large_answer_blocks_no_other_route(server: OrthancServer, path: str) -> None:
    client = stalled_client(server, path)
    try:
        time.sleep(1.0)  # the handler has run; Orthanc's thread now waits for the client to read
        assert_others_answer(server, path)
        # The stalled answer is whole once the client reads it.
        client.settimeout(30)
        received = 0
        while received < BIG:
            chunk = client.recv(1 << 20)
            assert chunk, f"the connection closed after {received} bytes"
            received += len(chunk)
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/small/16000", "/small-module"])
def test_a_client_that_pipelines_requests_without_reading_blocks_no_other_route(server: OrthancServer,
                                                                                 path: str) -> None:
    # 3,000 answers of 16 kB: 48 MB, far more than the socket buffers hold.
    client = stalled_client(server, path, requests=3000)
    try:
        time.sleep(3.0)  # the buffers are full: Orthanc's thread waits inside AnswerBuffer
        assert_others_answer(server, path)
    finally:
        client.close()


def test_answers_of_every_size_are_whole(server: OrthancServer) -> None:
    # Up to 64 KiB the loader copies the answer and sends it without the GIL;
    # above, it sends it from the Python object: both sides of that line.
    for size in (0, 1, 16384, 65535, 65536, 65537, 1 << 20):
        answer = server.get(f"/small/{size}")
        assert answer.status == 200
        assert answer.body == b"s" * size
