# SPDX-License-Identifier: GPL-3.0-or-later
"""``orthanc.RegisterChunkedRestCallback`` and ``orthanc.RegisterWebDavCollection``, in a real Orthanc.

Uploads are sent with ``Transfer-Encoding: chunked`` by ``http.client``
(a generator body), and the WebDAV collection is driven with the requests a
WebDAV client sends (PROPFIND, GET, PUT, MKCOL, DELETE); the tests check
the status and the XML such a client sees. What a callback received is read
back through a REST route of the script.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orthanc_py import _compat
from orthanc_py.server import OrthancServer

# A REST route that answers the script's RECORDED dict as JSON.
RECORDER = """
import datetime
import hashlib
import json
import orthanc

RECORDED = {}

def record(key, value):
    RECORDED.setdefault(key, []).append(value)

def Recorded(output, uri, **request):
    output.AnswerBuffer(json.dumps(RECORDED), "application/json")

orthanc.RegisterRestCallback("/recorded", Recorded)
"""


def start(make_orthanc: Callable[..., OrthancServer], script: str, **kwargs: Any) -> OrthancServer:
    return make_orthanc(RECORDER + script, **kwargs)


def recorded(server: OrthancServer) -> Any:
    return server.get_json("/recorded")


def send(server: OrthancServer, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; a generator ``body`` goes out with ``Transfer-Encoding: chunked``."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


# --- chunked REST callbacks ---------------------------------------------------------------------

CHUNKED = """
class Reader:
    def __init__(self, uri, request):
        self.uri = uri
        self.request = request
        self.sizes = []
        self.digest = hashlib.sha256()

    def AddChunk(self, data):
        self.sizes.append(len(data))
        self.digest.update(data)

    def Execute(self, output):
        output.AnswerBuffer(json.dumps({
            "sizes": self.sizes, "total": sum(self.sizes), "sha256": self.digest.hexdigest(),
            "uri": self.uri, "method": self.request["method"], "groups": list(self.request["groups"]),
            "get": self.request["get"], "contentType": self.request["headers"].get("content-type"),
            "keys": sorted(self.request),
        }), "application/json")

    def Finalize(self):
        record("finalized", [self.uri, sum(self.sizes)])

def Get(output, uri, **request):
    output.AnswerBuffer(json.dumps({"uri": uri, "method": request["method"], "groups": list(request["groups"]),
                                    "get": request["get"], "keys": sorted(request)}), "application/json")

def Delete(output, uri, **request):
    record("deleted", [uri, request["method"]])
    output.SendHttpStatusCode(204)

orthanc.RegisterChunkedRestCallback("/chunked/(.*)", Get, lambda uri, **request: Reader(uri, request), Delete)

class FailingReader(Reader):
    def AddChunk(self, data):
        raise ValueError("AddChunk failed on purpose")

class SilentReader(Reader):
    def Execute(self, output):
        pass

def Factory(uri, **request):
    if uri.endswith("/add-chunk"):
        return FailingReader(uri, request)
    if uri.endswith("/silent"):
        return SilentReader(uri, request)
    if uri.endswith("/raise"):
        raise RuntimeError("factory failed on purpose")
    return "not a reader"

def Unanswered(output, uri, **request):
    pass

orthanc.RegisterChunkedRestCallback("/broken/(.*)", getHandler=Unanswered, putFactory=Factory)

try:
    orthanc.RegisterChunkedRestCallback("/nothing", getHandler="not callable")
except TypeError as error:
    RECORDED["typeError"] = str(error)
"""


def pieces(count: int, size: int) -> Iterator[bytes]:
    for index in range(count):
        yield bytes([index + 1]) * size
        time.sleep(0.01)


def test_a_chunked_upload_reaches_the_reader_chunk_by_chunk(make_orthanc):
    server = start(make_orthanc, CHUNKED)
    count, size = 5, 500_000
    expected = hashlib.sha256(b"".join(pieces(count, size))).hexdigest()
    status, _headers, body = send(server, "POST", "/chunked/big?x=1", pieces(count, size),
                                 {"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"})
    assert status == 200, body
    answer = json.loads(body)
    assert len(answer["sizes"]) >= 2, "a 2.5 MB chunked body comes in several chunks (Orthanc's pieces: 1 MiB)"
    assert answer["total"] == count * size
    assert answer["sha256"] == expected, "the chunks arrive whole and in order"
    assert answer["uri"] == "/chunked/big"
    assert answer["method"] == "POST"
    assert answer["groups"] == ["big"]
    assert answer["contentType"] == "application/octet-stream"
    assert answer["keys"] == ["get", "groups", "headers", "method"], "no body: it streams into the reader"
    # A small body sent with Content-Length: one chunk.
    status, _, body = send(server, "POST", "/chunked/small", b"abc" * 10)
    assert status == 200
    assert json.loads(body)["sizes"] == [30]
    assert server.wait_until(lambda: len(recorded(server).get("finalized", [])) == 2, what="Finalize() calls")
    assert sorted(recorded(server)["finalized"]) == [["/chunked/big", count * size], ["/chunked/small", 30]]


def test_a_chunked_route_answers_get_and_delete_and_405_without_a_handler(make_orthanc):
    server = start(make_orthanc, CHUNKED)
    status, _, body = send(server, "GET", "/chunked/item?a=1&b=two")
    assert status == 200
    assert json.loads(body) == {"uri": "/chunked/item", "method": "GET", "groups": ["item"],
                                "get": {"a": "1", "b": "two"}, "keys": ["get", "groups", "headers", "method"]}
    status, _, _ = send(server, "DELETE", "/chunked/item")
    assert status == 204
    assert recorded(server)["deleted"] == [["/chunked/item", "DELETE"]]
    status, headers, _ = send(server, "PUT", "/chunked/item", b"data")
    assert status == 405, "no PUT factory"
    assert headers["allow"] == "GET,POST,DELETE"
    status, headers, _ = send(server, "POST", "/broken/x", b"data")
    assert status == 405
    assert headers["allow"] == "GET,PUT"
    assert "must be callable" in recorded(server)["typeError"]


def test_failures_of_a_chunked_route_answer_500_and_are_logged(make_orthanc):
    server = start(make_orthanc, CHUNKED)
    chunked = {"Transfer-Encoding": "chunked"}
    status, _, _ = send(server, "PUT", "/broken/add-chunk", pieces(2, 1000), chunked)
    assert status == 500
    server.wait_for_log("AddChunk failed on purpose")
    assert server.wait_until(lambda: recorded(server).get("finalized"), what="Finalize() after a failure") == [
        ["/broken/add-chunk", 0]
    ]
    status, _, _ = send(server, "PUT", "/broken/silent", b"data")
    assert status == 500
    server.wait_for_log(r"returned without answering PUT /broken/silent")
    status, _, _ = send(server, "PUT", "/broken/raise", b"data")
    assert status == 500
    server.wait_for_log("factory failed on purpose")
    status, _, _ = send(server, "PUT", "/broken/str", b"data")
    assert status == 500
    server.wait_for_log(r"returned str, which has no AddChunk\(\) method")
    status, _, _ = send(server, "GET", "/broken/get")
    assert status == 500
    server.wait_for_log(r"returned without answering GET /broken/get")
    assert send(server, "GET", "/chunked/still-serving")[0] == 200


def test_registration_arguments_are_checked_outside_orthanc():
    with pytest.raises(TypeError, match="pathRegularExpression"):
        _compat.RegisterChunkedRestCallback(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="postFactory"):
        _compat.RegisterChunkedRestCallback("/x", postFactory=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start with '/'"):
        _compat.RegisterWebDavCollection("dav", bool, list, bytes, None, None, None)
    with pytest.raises(TypeError, match="listFolder"):
        _compat.RegisterWebDavCollection("/dav", bool, None, bytes, None, None, None)  # type: ignore[arg-type]
    # Outside Orthanc (a worker process re-running the script) registering does nothing.
    assert _compat.RegisterChunkedRestCallback("/x", getHandler=print) is None
    assert _compat.RegisterWebDavCollection("/dav", bool, list, bytes, None, None, None) is None


# --- WebDAV collections ---------------------------------------------------------------------------

WEBDAV = """
STAMP = datetime.datetime(2022, 3, 14, 15, 30, tzinfo=datetime.timezone.utc)
FILES = {("a.txt",): b"hello", ("sub", "b.json"): b"{}", ("sub", "c.bin"): b"0123456789"}
FOLDERS = {(), ("sub",)}

def IsFolder(path):
    record("isExistingFolder", path)
    return tuple(path) in FOLDERS

def List(path):
    record("listFolder", path)
    if tuple(path) not in FOLDERS:
        return None
    depth = len(path)
    files = []
    for key, content in sorted(FILES.items()):
        if len(key) == depth + 1 and list(key[:depth]) == path:
            if key[-1] == "c.bin":
                files.append((key[-1], len(content)))  # no MIME type, no date: Orthanc guesses, now
            else:
                files.append((key[-1], len(content), "text/plain" if key[-1].endswith(".txt") else None, STAMP))
    folders = sorted(f[-1] for f in FOLDERS if len(f) == depth + 1 and list(f[:depth]) == path)
    folders = [(name, "20210102T030405") if name == "sub" else name for name in folders]
    return files, folders

def Retrieve(path):
    record("retrieveFile", path)
    content = FILES.get(tuple(path))
    if content is None:
        return None
    if path[-1] == "c.bin":
        return content
    return content, "text/plain", STAMP

def Store(path, content):
    record("storeFile", [path, content.decode()])
    FILES[tuple(path)] = content
    return True

def CreateFolder(path):
    record("createFolder", path)
    FOLDERS.add(tuple(path))
    return True

def DeleteItem(path):
    record("deleteItem", path)
    FILES.pop(tuple(path), None)
    FOLDERS.discard(tuple(path))
    return True

orthanc.RegisterWebDavCollection("/dav", IsFolder, List, Retrieve, Store, CreateFolder, DeleteItem)

def Refuse(path):
    return False

def Fail(path):
    raise ValueError("deleteItem failed on purpose")

def BadList(path):
    return "not a listing"

orthanc.RegisterWebDavCollection("/read-only", lambda path: path == [], BadList, lambda path: None, None,
                                 Refuse, Fail)
"""

DAV = "{DAV:}"


def propfind(server: OrthancServer, path: str, depth: str = "1") -> dict[str, dict[str, Any]]:
    """What a WebDAV client reads from PROPFIND: each entry's properties, by href."""
    status, headers, body = send(server, "PROPFIND", path, headers={"Depth": depth})
    assert status == 207, body
    # Orthanc's own answer: 1.13 labels its multistatus XML text/plain.
    assert headers["content-type"].startswith(("application/xml", "text/plain"))
    entries = {}
    for response in ET.fromstring(body).findall(f"{DAV}response"):
        href = response.findtext(f"{DAV}href")
        prop = response.find(f"{DAV}propstat/{DAV}prop")
        assert href is not None and prop is not None
        assert response.findtext(f"{DAV}propstat/{DAV}status") == "HTTP/1.1 200 OK"
        entries[href] = {
            "name": prop.findtext(f"{DAV}displayname"),
            "folder": prop.find(f"{DAV}resourcetype/{DAV}collection") is not None,
            "size": prop.findtext(f"{DAV}getcontentlength"),
            "type": prop.findtext(f"{DAV}getcontenttype"),
            "modified": prop.findtext(f"{DAV}getlastmodified"),
        }
    return entries


def test_a_webdav_client_browses_reads_and_writes_the_collection(make_orthanc):
    server = start(make_orthanc, WEBDAV)
    root = propfind(server, "/dav/")
    assert sorted(root) == ["/dav/", "/dav/a.txt", "/dav/sub"]
    assert root["/dav/"]["folder"] is True
    assert root["/dav/a.txt"] == {"name": "a.txt", "folder": False, "size": "5", "type": "text/plain",
                                  "modified": "2022-03-14T15:30:00Z"}
    assert root["/dav/sub"] == {"name": "sub", "folder": True, "size": None, "type": None,
                                "modified": "2021-01-02T03:04:05Z"}
    sub = propfind(server, "/dav/sub")
    assert sorted(sub) == ["/dav/sub/", "/dav/sub/b.json", "/dav/sub/c.bin"]
    assert sub["/dav/sub/b.json"]["type"] == "application/json", "no MIME type: Orthanc guesses from the name"
    assert sub["/dav/sub/c.bin"]["size"] == "10"
    assert sub["/dav/sub/c.bin"]["modified"], "no date: now"

    status, headers, body = send(server, "GET", "/dav/a.txt")
    assert (status, body, headers["content-type"]) == (200, b"hello", "text/plain")
    assert headers["last-modified"] == "2022-03-14T15:30:00Z"
    status, _, body = send(server, "GET", "/dav/sub/c.bin")
    assert (status, body) == (200, b"0123456789")
    assert send(server, "GET", "/dav/missing.txt")[0] == 404
    assert send(server, "PROPFIND", "/dav/missing", headers={"Depth": "1"})[0] == 404

    assert send(server, "PUT", "/dav/sub/new.txt", b"new content")[0] == 201
    assert send(server, "GET", "/dav/sub/new.txt")[2] == b"new content"
    assert send(server, "MKCOL", "/dav/made")[0] == 201
    assert send(server, "DELETE", "/dav/a.txt")[0] == 204
    root = propfind(server, "/dav/")
    assert sorted(root) == ["/dav/", "/dav/made", "/dav/sub"]
    assert root["/dav/made"]["folder"] is True

    calls = recorded(server)
    assert calls["storeFile"] == [[["sub", "new.txt"], "new content"]]
    assert calls["createFolder"] == [["made"]]
    assert calls["deleteItem"] == [["a.txt"]]
    assert ["sub"] in calls["listFolder"]
    assert ["a.txt"] in calls["retrieveFile"]


def test_a_webdav_collection_that_refuses_or_fails(make_orthanc):
    server = start(make_orthanc, WEBDAV)
    assert send(server, "PUT", "/read-only/file.txt", b"data")[0] == 403, "storeFile=None: read-only"
    assert send(server, "MKCOL", "/read-only/folder")[0] == 403, "createFolder returned False"
    assert send(server, "DELETE", "/read-only/file.txt")[0] == 500
    server.wait_for_log("deleteItem failed on purpose")
    assert send(server, "PROPFIND", "/read-only/", headers={"Depth": "1"})[0] == 500
    server.wait_for_log(r"returned str, not None or \(files, folders\)")
    assert send(server, "GET", "/read-only/file.txt")[0] == 404
    assert propfind(server, "/dav/sub")["/dav/sub/"]["folder"], "the other collection still serves"
