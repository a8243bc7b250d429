# SPDX-License-Identifier: GPL-3.0-or-later
"""What a route's answer looks like on the wire, as a Flask user expects it.

Read with ``http.client``, which follows no redirect and shows every header
line as sent (so a header sent twice is seen twice).
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orthanc_py import Response
from orthanc_py.server import OrthancServer

SCRIPT = """
from orthanc_py import Response, route

@route("/redirect/<int:status>")
def redirect(request, status):
    return Response("", status, {"Location": "/elsewhere?from=x", "Set-Cookie": "session=abc; Path=/"})

@route("/redirect-tuple")
def redirect_tuple(request):
    return "see there", 303, {"Location": "/there"}

@route("/created", methods=["POST"])
def created(request):
    return Response({"ID": "42"}, 201, {"Location": "/things/42"})

@route("/typed/<int:status>")
def typed(request, status):
    return Response("a,b\\n1,2\\n", status, {"content-type": "text/csv", "X-Kind": "table"})

@route("/unauthorized")
def unauthorized(request):
    return Response({"error": "token expired"}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})

@route("/status/<int:status>")
def status(request, status):
    return Response("", status)

@route("/no-content/<int:status>")
def no_content(request, status):
    return Response("ignored", status, {"ETag": '"v1"'})

@route("/echo")
def echo(request):
    # A script that puts client input into a header: the injection case.
    return Response("echoed", headers={"X-Echo": request.args["v"]})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    workdir = tmp_path_factory.mktemp("answers")
    script = workdir / "script.py"
    script.write_text(SCRIPT)
    orthanc = OrthancServer(str(workdir), script=str(script)).start()
    yield orthanc
    orthanc.stop()


Exchange = tuple[int, list[tuple[str, str]], bytes]


def fetch(server: OrthancServer, path: str, method: str = "GET") -> Exchange:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, answer.getheaders(), answer.read()
    finally:
        connection.close()


def header_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


@pytest.mark.parametrize("status", [302, 303, 307])
def test_a_redirect_keeps_its_status_location_and_other_headers(server, status):
    code, headers, _ = fetch(server, f"/redirect/{status}")
    assert code == status
    assert header_values(headers, "Location") == ["/elsewhere?from=x"]
    assert header_values(headers, "Set-Cookie") == ["session=abc; Path=/"]


def test_a_redirect_returned_as_a_tuple_keeps_its_body(server):
    code, headers, body = fetch(server, "/redirect-tuple")
    assert (code, header_values(headers, "Location"), body) == (303, ["/there"], b"see there")
    assert header_values(headers, "Content-Type") == ["text/plain; charset=utf-8"]


def test_a_301_goes_through_orthancs_redirect_and_the_dropped_headers_are_logged(server):
    code, headers, _ = fetch(server, "/redirect/301")
    assert (code, header_values(headers, "Location")) == (301, ["/elsewhere?from=x"])
    server.wait_for_log(r"orthanc_py: Orthanc sends a 301 with its Location header only; dropped: Set-Cookie")


def test_a_status_orthanc_cannot_send_is_a_500_with_the_reason_in_the_log(server):
    code, _headers, _ = fetch(server, "/redirect/308")
    assert code == 500
    server.wait_for_log(r"ValueError: Orthanc 1\.\S+ cannot send the HTTP status 308; choose another")
    assert fetch(server, "/status/429")[0] == 500
    server.wait_for_log(r"cannot send the HTTP status 429")


def test_a_201_keeps_its_location_and_body(server):
    code, headers, body = fetch(server, "/created", "POST")
    assert code == 201
    assert header_values(headers, "Location") == ["/things/42"]
    assert header_values(headers, "Content-Type") == ["application/json"]
    assert body == b'{"ID": "42"}'


@pytest.mark.parametrize("status", [200, 202, 404])
def test_a_lowercase_content_type_is_sent_once(server, status):
    code, headers, body = fetch(server, f"/typed/{status}")
    assert code == status
    assert header_values(headers, "Content-Type") == ["text/csv"]
    assert header_values(headers, "X-Kind") == ["table"]
    assert body == b"a,b\n1,2\n"


def test_a_401_keeps_the_routes_challenge_and_body(server):
    code, headers, body = fetch(server, "/unauthorized")
    assert code == 401
    assert header_values(headers, "WWW-Authenticate") == ['Bearer error="invalid_token"']
    assert body == b'{"error": "token expired"}'


@pytest.mark.parametrize("status", [204, 304])
def test_a_status_without_body_sends_none_and_the_connection_stays_usable(server, status):
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request("GET", f"/no-content/{status}")
        answer = connection.getresponse()
        assert (answer.status, answer.read(), answer.getheader("ETag")) == (status, b"", '"v1"')
        connection.request("GET", "/redirect-tuple")  # the same connection, kept alive
        assert connection.getresponse().read() == b"see there"
    finally:
        connection.close()


def test_client_input_cannot_inject_headers(server):
    injected = urllib.parse.quote("x\r\nSet-Cookie: admin=1")
    code, headers, body = fetch(server, f"/echo?v={injected}")
    assert code == 500
    assert header_values(headers, "Set-Cookie") == []
    assert header_values(headers, "X-Echo") == []
    server.wait_for_log(r"ValueError: the value of the response header 'X-Echo' holds CR, LF or NUL")
    code, headers, body = fetch(server, "/echo?v=plain")
    assert (code, header_values(headers, "X-Echo"), body) == (200, ["plain"], b"echoed")


# --- Response alone ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"X-Echo": "a\r\nSet-Cookie: x=1"}, "'X-Echo'"),
        ({"X-Echo": "a\nb"}, "'X-Echo'"),
        ({"X-Echo": "a\rb"}, "'X-Echo'"),
        ({"X-Echo": "a\0b"}, "'X-Echo'"),
        ({"X-Echo\r\nSet-Cookie": "x"}, "'X-Echo\\r\\nSet-Cookie'"),
        ({"X-Echo: y": "x"}, "'X-Echo: y'"),
        ({"": "x"}, "''"),
        ({"content-type": "text/html\r\nX-Evil: 1"}, "'content-type'"),
    ],
)
def test_response_refuses_header_injection_naming_the_header(headers, named):
    with pytest.raises(ValueError, match="header (name )?" + re.escape(named)):
        Response("x", headers=headers)


@given(st.text())
def test_a_header_value_is_kept_exactly_unless_it_could_end_the_header_line(value):
    try:
        response = Response("x", headers={"X-Value": value})
    except ValueError as error:
        assert any(c in value for c in "\r\n\0")
        assert "'X-Value'" in str(error)
    else:
        assert response.headers == {"X-Value": value}


def test_response_refuses_a_content_type_with_line_breaks():
    with pytest.raises(ValueError, match="'Content-Type'"):
        Response("x", content_type="text/plain\nX-Evil: 1")


def test_response_matches_content_type_without_regard_to_case():
    response = Response("x", headers={"CONTENT-TYPE": "text/csv", "X-A": "1"})
    assert (response.content_type, response.headers) == ("text/csv", {"X-A": "1"})
    assert Response("x", headers={"content-type": "text/csv"}, content_type="text/html").content_type == "text/html"


def test_response_takes_headers_as_pairs_and_integers_as_text():
    assert Response("x", headers=[("X-Count", 3)]).headers == {"X-Count": "3"}
    with pytest.raises(TypeError, match="value of the response header 'X-A' must be str"):
        Response("x", headers={"X-A": b"bytes"})


@pytest.mark.parametrize("status", [100, 101, 199, 600, True])
def test_response_refuses_statuses_that_cannot_end_a_request(status):
    with pytest.raises(ValueError, match="between 200 and 599"):
        Response("x", status)
