# SPDX-License-Identifier: GPL-3.0-or-later
"""REST callbacks of the ``orthanc`` module, driven over HTTP against a real Orthanc."""

from __future__ import annotations

import textwrap
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthanc_py.cli import _version_tuple
from orthanc_py.server import OrthancServer, find_orthanc, orthanc_version

from .official import recorded, start

SCRIPT = """
import json
import orthanc

def Echo(output, uri, **request):
    answer = {
        "uri": uri,
        "keys": sorted(request),
        "method": request["method"],
        "groups": list(request["groups"]),
        "get": request.get("get"),
        "headers": request["headers"],
        "body": request["body"].hex() if "body" in request else None,
    }
    output.AnswerBuffer(json.dumps(answer), "application/json")

def Raw(output, uri, **request):
    output.AnswerBuffer(request["body"], "application/octet-stream")

def Boom(output, uri, **request):
    raise ValueError("secret detail 1234")

def Silent(output, uri, **request):
    pass

def OnlyPost(output, uri, **request):
    if request["method"] != "POST":
        output.SendMethodNotAllowed("POST")
    else:
        output.AnswerBuffer("posted", "text/plain")

def Status(output, uri, **request):
    output.SendHttpStatusCode(int(request["groups"][0]))

def Api(output, uri, **request):
    system = json.loads(orthanc.RestApiGet("/system"))
    output.AnswerBuffer(system["Name"], "text/plain")

def Refuse(output, uri, **request):
    message = "bad request: " + uri
    size = {"full": len(message), "prefix": 11, "too-long": len(message) + 1}[request["groups"][0]]
    try:
        output.SendHttpStatus(400, message, size)  # the official signature: text and its size
    except ValueError as error:
        output.AnswerBuffer(str(error), "text/plain")

KEPT = []

def OutputType(output, uri, **request):
    if KEPT:  # the output of the previous request, kept past its callback
        try:
            KEPT[0].AnswerBuffer("late", "text/plain")
            late = "answered"
        except Exception as error:
            late = f"{type(error).__name__}: {error}"
    else:
        late = None
    KEPT[:] = [output]
    answer = {"type": f"{type(output).__module__}.{type(output).__name__}",
              "isinstance": isinstance(output, orthanc.RestOutput), "late": late}
    output.AnswerBuffer(json.dumps(answer), "application/json")

orthanc.RegisterRestCallback("/echo(/.*)?", Echo)
orthanc.RegisterRestCallback("/output-type", OutputType)
orthanc.RegisterRestCallback("/refuse/(.*)", Refuse)
orthanc.RegisterRestCallback("/raw", Raw)
orthanc.RegisterRestCallback("/boom", Boom)
orthanc.RegisterRestCallback("/silent", Silent)
orthanc.RegisterRestCallback("/only-post", OnlyPost)
orthanc.RegisterRestCallback("/status/([0-9]+)", Status)
orthanc.RegisterRestCallback("/api-name", Api)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("rest")
    script = Path(workdir) / "rest_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    orthanc = OrthancServer(str(workdir / "orthanc"), script=str(script))
    orthanc.start()
    yield orthanc
    assert orthanc.stop() == 0


def test_the_request_has_the_official_keys(server):
    answer = server.get("/echo/a/b?x=1&y=two", headers={"X-Custom": "Value"})
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    echo = answer.json()
    assert echo["uri"] == "/echo/a/b"
    assert echo["keys"] == ["get", "groups", "headers", "method"]
    assert echo["method"] == "GET"
    assert echo["groups"] == ["/a/b"]
    assert echo["get"] == {"x": "1", "y": "two"}
    assert echo["headers"]["x-custom"] == "Value"
    assert echo["body"] is None


def test_post_and_put_carry_the_body(server):
    for method in ("POST", "PUT"):
        echo = server.request(method, "/echo?x=1", body=b"\x00\x01binary\xff").json()
        assert echo["method"] == method
        assert echo["keys"] == ["body", "groups", "headers", "method"]  # no "get", as with the official plugin
        assert bytes.fromhex(echo["body"]) == b"\x00\x01binary\xff"
    deleted = server.request("DELETE", "/echo").json()
    assert (deleted["method"], deleted["keys"]) == ("DELETE", ["groups", "headers", "method"])


def test_a_handler_that_raises_answers_500_without_the_exception_text(server):
    answer = server.get("/boom")
    assert answer.status == 500
    assert "secret detail" not in answer.text
    assert "Traceback" not in answer.text
    log = server.log
    assert "ValueError: secret detail 1234" in log
    assert 'rest_script.py", line' in log and "in Boom" in log
    assert server.get("/echo").status == 200, "Orthanc keeps serving"


def test_a_handler_that_answers_nothing_still_answers_http(server):
    answer = server.get("/silent")
    assert answer.status == 500
    assert "REST callback Silent for /silent returned without answering GET /silent" in server.log


def test_method_not_allowed_and_status_codes(server):
    refused = server.get("/only-post")
    assert refused.status == 405
    assert refused.headers["allow"] == "POST"
    assert server.post("/only-post", b"").text == "posted"
    assert server.get("/status/204").status == 204
    assert server.get("/status/403").status == 403


def test_the_output_is_an_orthanc_rest_output_that_expires_with_its_callback(server):
    first = server.get("/output-type").json()
    assert first == {"type": "orthanc.RestOutput", "isinstance": True, "late": None}
    second = server.get("/output-type").json()
    assert second["late"].startswith("ExpiredError: this orthanc.RestOutput was lent by Orthanc to a callback "
                                     "that has returned")


def test_send_http_status_takes_the_body_and_its_size_as_the_official_plugin_does(server):
    full = server.get("/refuse/full")
    assert (full.status, full.text) == (400, "bad request: /refuse/full")
    prefix = server.get("/refuse/prefix")
    assert (prefix.status, prefix.text) == (400, "bad request")
    # A size past the end of the text would make C read beyond it: refused, naming both.
    too_long = server.get("/refuse/too-long")
    assert too_long.status == 200
    assert too_long.text == ("SendHttpStatus() argument 'bodySize' is 30, but 'body' holds 29 bytes: "
                             "give len(body) (in UTF-8 bytes) or less")


def test_a_handler_may_call_the_rest_api(server):
    answer = server.get("/api-name")
    assert answer.status == 200
    assert answer.text == server.get_json("/system")["Name"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4096))
def test_any_body_comes_back_intact(server, body):
    answer = server.post("/raw", body)
    assert answer.status == 200
    assert answer.body == body


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
)


# Orthanc 1.13 decodes a query string before it splits it at "&" and "=", so a
# value holding them (sent as %26, %3D) comes apart there, whatever the plugin.
_SPLIT_AFTER_DECODING = _version_tuple(orthanc_version(find_orthanc())) >= (1, 13)
_query_value = _text.filter(lambda s: not set(s) & set("&=+%")) if _SPLIT_AFTER_DECODING else _text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8), _query_value,
                             max_size=5),
       # Surrounding blanks are not part of a header's value in HTTP; Orthanc's server trims them unevenly.
       header=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60).map(str.strip))
def test_query_strings_and_headers_come_back_intact(server, query, header):
    query_string = urllib.parse.urlencode(query)
    answer = server.get(f"/echo?{query_string}" if query else "/echo", headers={"X-Probe": header})
    assert answer.status == 200
    echo = answer.json()
    # Orthanc 1.10 hands plugins the GET arguments still percent-encoded, 1.13
    # decoded, to the official plugin as to us: the handler sees what Orthanc gives.
    sent = dict(pair.split("=", 1) for pair in query_string.split("&")) if query else {}
    if echo["get"] != query:
        assert echo["get"] == sent
        assert {k: urllib.parse.unquote_plus(v) for k, v in echo["get"].items()} == query
    assert echo["headers"].get("x-probe", "") == header


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segment=st.text(alphabet=st.characters(whitelist_categories=("L", "N", "Sm", "Sc", "Pd")), min_size=1, max_size=40)
)
def test_non_ascii_path_groups_come_back_intact(server, segment):
    # Letters of any script, digits, symbols: Orthanc's HTTP server normalises
    # dots, slashes and backslashes in paths before any plugin sees them.
    answer = server.get("/echo/" + urllib.parse.quote(segment, safe=""))
    assert answer.status == 200
    assert answer.json()["groups"] == ["/" + segment]


def test_registering_after_start_is_refused_with_the_reason(make_orthanc):
    server = make_orthanc(
        """
        import orthanc

        def Late(output, uri, **request):
            output.AnswerBuffer("late", "text/plain")

        def OnChange(change, level, resource):
            if change == orthanc.ChangeType.ORTHANC_STARTED:
                try:
                    orthanc.RegisterRestCallback("/late", Late)
                except Exception as error:
                    print("refused:", type(error).__name__, error)

        orthanc.RegisterOnChangeCallback(OnChange)
        """
    )
    line = server.wait_for_log(r"refused: .*$").group(0)
    assert "SetupError" in line and "must be called while the script loads" in line
    assert server.get("/late").status == 404


def test_wrong_argument_types_name_the_function_and_argument(make_orthanc):
    server = make_orthanc(
        """
        import orthanc
        for call in (lambda: orthanc.RegisterRestCallback(42, print),
                     lambda: orthanc.RestApiGet(42),
                     lambda: orthanc.RestApiPost("/tools/find", 3.5)):
            try:
                call()
            except TypeError as error:
                print("TypeError:", error)
        """
    )
    log = server.log
    assert "TypeError: RegisterRestCallback() argument 'pathRegularExpression' must be str, not int" in log
    assert "TypeError: RestApiGet() argument 'uri' must be str, not int" in log
    assert "TypeError: RestApiPost() argument 'body' must be bytes or str, not float" in log


def test_sdk_errors_raise_orthanc_exception_with_code_and_description(make_orthanc):
    server = make_orthanc(
        """
        import orthanc

        def Missing(output, uri, **request):
            try:
                orthanc.RestApiGet("/instances/no-such-instance")
            except orthanc.OrthancException as error:
                code, description = error.args
                output.AnswerBuffer(f"{code == orthanc.ErrorCode.UNKNOWN_RESOURCE} {description}", "text/plain")

        orthanc.RegisterRestCallback("/missing", Missing)
        """
    )
    assert server.get("/missing").text == "True Unknown resource"


# --- the order of the calls on an answer, side by side with the official plugin -------------------
# The loader sends a callback's answer after the callback has returned (one GIL
# take per request); what a client and the script see must stay what they are
# when each call goes to Orthanc at once, as in the official plugin.

ORDER = """
def AnswerThenHeader(output, uri, **request):
    output.AnswerBuffer("first", "text/plain")
    try:
        output.SetHttpHeader("X-Late", "yes")
        RECORDED["header"] = "accepted"
    except Exception as error:
        RECORDED["header"] = str(error)

def AnswerTwice(output, uri, **request):
    output.AnswerBuffer("first", "text/plain")
    try:
        output.AnswerBuffer("second", "text/plain")
        RECORDED["twice"] = "accepted"
    except Exception as error:
        RECORDED["twice"] = str(error)

def AnswerThenRaise(output, uri, **request):
    output.AnswerBuffer("answered before the error", "text/plain")
    raise ValueError("raised after answering")

def Inner(output, uri, **request):
    output.SetHttpHeader("X-Inner", "yes")
    output.AnswerBuffer("inner " + request["groups"][0], "text/plain")

def Outer(output, uri, **request):
    output.SetHttpHeader("X-Outer", "yes")
    inner = orthanc.RestApiGetAfterPlugins("/inner/" + request["groups"][0])
    output.AnswerBuffer(b"outer, " + inner, "text/plain")

orthanc.RegisterRestCallback("/answer-then-header", AnswerThenHeader)
orthanc.RegisterRestCallback("/answer-twice", AnswerTwice)
orthanc.RegisterRestCallback("/answer-then-raise", AnswerThenRaise)
orthanc.RegisterRestCallback("/inner/(.*)", Inner)
orthanc.RegisterRestCallback("/outer/(.*)", Outer)
"""


def test_calls_after_an_answer_see_it_sent_as_in_the_official_plugin(make_orthanc, plugin):
    server = start(make_orthanc, plugin, ORDER)
    late_header = server.get("/answer-then-header")
    assert (late_header.status, late_header.text) == (200, "first")
    assert "x-late" not in late_header.headers
    twice = server.get("/answer-twice")
    assert (twice.status, twice.text) == (200, "first")
    # The SDK's answer functions return nothing in C: the official plugin's
    # scripts never see Orthanc refuse them, and go on. The client has the
    # first answer while the handler still runs: wait for it to record.
    server.wait_until(lambda: len(recorded(server)) == 2, timeout=10, what="both handlers' records")
    assert recorded(server) == {"header": "accepted", "twice": "accepted"}
    if plugin is None:
        assert "RestOutput.SetHttpHeader() was refused by Orthanc: Bad sequence of calls" in server.log
        assert "RestOutput.AnswerBuffer() was refused by Orthanc: Bad sequence of calls" in server.log
    raised = server.get("/answer-then-raise")
    assert (raised.status, raised.text) == (200, "answered before the error")
    server.wait_until(lambda: "raised after answering" in server.log, timeout=10, what="the traceback in the log")
    assert server.get("/system").status == 200


def test_a_route_calling_another_route_gets_its_answer_and_gives_its_own(make_orthanc, plugin):
    server = start(make_orthanc, plugin, ORDER)
    for name in ("a", "b" * 5000):
        answer = server.get(f"/outer/{name}")
        assert (answer.status, answer.text) == (200, f"outer, inner {name}")
        assert answer.headers.get("x-outer") == "yes"
        assert "x-inner" not in answer.headers


MANY_ROUTES = 1010  # more than the loader's 1000 C entry points: the last ones share its overflow entry

MANY = f"""
def Numbered(output, uri, **request):
    output.AnswerBuffer("route " + request["groups"][0], "text/plain")

for number in range({MANY_ROUTES}):
    orthanc.RegisterRestCallback(f"/numbered/({{number}})", Numbered)
"""


def test_a_thousand_routes_and_more_all_answer(make_orthanc, plugin):
    server = start(make_orthanc, plugin, MANY)
    for number in (0, 1, 998, 999, 1000, 1001, MANY_ROUTES - 1):
        answer = server.get(f"/numbered/{number}")
        assert (answer.status, answer.text) == (200, f"route {number}")
    assert server.get(f"/numbered/{MANY_ROUTES}").status == 404
