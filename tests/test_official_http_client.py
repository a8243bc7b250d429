# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTTP client of the ``orthanc`` module, with chunked transfers.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

import hashlib
import json

from .official import (
    start,
)

# --- chunked HTTP client ------------------------------------------------------------------------------

CHUNKED_CLIENT = """
import hashlib

PORT = json.loads(orthanc.GetConfiguration())["HttpPort"]

def Echo(output, uri, **request):
    body = request.get("body", b"")
    answer = {"method": request["method"], "size": len(body), "sha256": hashlib.sha256(body).hexdigest(),
              "header": request["headers"].get("x-test")}
    output.AnswerBuffer(json.dumps(answer) * 100, "application/json")

def Chunks():
    for i in range(50):
        yield bytes([i]) * 1000

def Call(output, uri, **request):
    url = f"http://127.0.0.1:{PORT}/echo"
    body, headers, status = orthanc.ChunkedHttpClient(orthanc.HttpMethod.POST, url, {"X-Test": "yes"}, Chunks())
    pieces = []
    streamed = orthanc.ChunkedHttpClient(orthanc.HttpMethod.GET, url, None, None, None, None, 10,
                                         None, None, None, False, answerChunk=pieces.append)
    def broken():
        yield b"x"
        raise ValueError("body iterator failed")
    try:
        orthanc.ChunkedHttpClient(orthanc.HttpMethod.POST, url, None, broken())
    except ValueError as error:
        raised = str(error)
    answer = {"status": status, "body": body.decode(), "content-type": headers.get("Content-Type"),
              "streamed": [streamed[0].decode(), streamed[2], b"".join(pieces).decode()], "raised": raised}
    output.AnswerBuffer(json.dumps(answer), "application/json")

orthanc.RegisterRestCallback("/echo", Echo)
orthanc.RegisterRestCallback("/call", Call)
"""


def test_chunked_http_client_streams_the_body_and_the_answer(make_orthanc):

    server = start(make_orthanc, None, CHUNKED_CLIENT)
    answer = server.get("/call")
    assert answer.status == 200, answer.text
    result = answer.json()
    assert result["status"] == 200
    assert result["content-type"].startswith("application/json")
    expected = b"".join(bytes([i]) * 1000 for i in range(50))
    echo = json.loads(result["body"][: len(result["body"]) // 100])
    assert echo == {"method": "POST", "size": len(expected), "sha256": hashlib.sha256(expected).hexdigest(),
                    "header": "yes"}
    body, status, pieces = result["streamed"]
    assert body == "" and status == 200
    assert json.loads(pieces[: len(pieces) // 100])["method"] == "GET"
    assert result["raised"] == "body iterator failed"
