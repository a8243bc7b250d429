# SPDX-License-Identifier: GPL-3.0-or-later
"""Key-value stores and queues in Orthanc's database: the ``orthanc`` module, ``orthanc_py.kv``, ``orthanc_py.queue``.

Orthanc has them from 1.12.8 (reservations from 1.12.10): each test runs on
every row and asserts what the row's Orthanc offers, the behaviour where it
has them and the error that names the version needed where it has not. The
``orthanc`` module's functions run side by side with the official plugin;
the official 7.1 has them, the older ones do not. Scripts are driven over
HTTP, as a user drives theirs.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest

from orthanc_py import kv, queue
from orthanc_py._capi import NotInOrthancError
from orthanc_py.server import OrthancServer, find_orthanc, orthanc_version

from .conftest import EXAMPLES
from .dicom import make_study
from .fixtures_dicom import StoreScp

UNKNOWN_PLUGIN_SERVICE, NOT_IMPLEMENTED, UNKNOWN_RESOURCE = 26, 2, 17
PARAMETER_OUT_OF_RANGE, BAD_SEQUENCE_OF_CALLS, DATABASE_NOT_INITIALIZED = 3, 6, 2038
STORES_SINCE, RESERVATIONS_SINCE = (1, 12, 8), (1, 12, 10)
ANY_TEXT = "<any text>"  # the official plugin's TypeError texts for bad arguments are its own

FUNCTIONS = ("StoreKeyValue", "GetKeyValue", "DeleteKeyValue", "CreateKeysValuesIterator", "EnqueueValue",
             "DequeueValue", "GetQueueSize", "ReserveQueueValue", "AcknowledgeQueueValue")


@functools.cache
def orthanc_release() -> tuple[str, tuple[int, ...]]:
    """The version of the Orthanc the tests run, as text and as numbers."""
    text = orthanc_version(find_orthanc())
    return text, tuple(int(part) for part in text.split(".")[:3])


def has_stores() -> bool:
    return orthanc_release()[1] >= STORES_SINCE


def has_reservations() -> bool:
    return orthanc_release()[1] >= RESERVATIONS_SINCE


def too_old(user: str, what: str, since: tuple[int, int, int] = STORES_SINCE) -> str:
    """The error orthanc_py.kv and orthanc_py.queue give on an Orthanc without them."""
    need = ".".join(map(str, since))
    return (f"{user} needs Orthanc {need} or newer, which keeps {what} in its database; "
            f"this Orthanc is {orthanc_release()[0]}")


# --- the orthanc module, under orthanc_py and under the official plugin ---------------------------

MODULE_SCRIPT = r'''
import json
import time

import orthanc

FUNCTIONS = __FUNCTIONS__


def shape(value):
    """A value as JSON that both plugins' answers can be compared by."""
    if isinstance(value, (bytes, bytearray)):
        return ["bytes", bytes(value).decode("latin-1")]
    if isinstance(value, tuple):
        return ["tuple"] + [shape(item) for item in value]
    if value is None or isinstance(value, (bool, int, str)):
        return [type(value).__name__, value]
    return [type(value).__name__]


def outcome(call):
    try:
        return shape(call())
    except TypeError as error:
        # The official plugin reports bad arguments, and Orthanc's refusals of some calls, as TypeError.
        return ["TypeError", str(error.args[-1])]
    except orthanc.OrthancException as error:
        return ["OrthancException", error.args[0], error.args[1]]


def Versions(output, uri, **request):
    # One call of each function: what an Orthanc without them says.
    answers = {}
    for name in FUNCTIONS:
        if not hasattr(orthanc, name):
            answers[name] = ["absent"]
            continue
        function = getattr(orthanc, name)
        arguments = {"StoreKeyValue": ("v", "k", b"v"), "GetKeyValue": ("v", "never stored"),
                     "DeleteKeyValue": ("v", "k"), "CreateKeysValuesIterator": ("v",), "EnqueueValue": ("v", b"v"),
                     "GetQueueSize": ("v",), "DequeueValue": ("v", 0), "ReserveQueueValue": ("v", 0, 60),
                     "AcknowledgeQueueValue": ("v", 1)}[name]
        answers[name] = outcome(lambda: function(*arguments))
    answers["QueueOrigin"] = [orthanc.QueueOrigin.FRONT, orthanc.QueueOrigin.BACK] \
        if hasattr(orthanc, "QueueOrigin") else ["absent"]
    output.AnswerBuffer(json.dumps(answers), "application/json")


def Stores(output, uri, **request):
    r = {}
    r["get missing"] = outcome(lambda: orthanc.GetKeyValue("s", "k"))
    r["store str"] = outcome(lambda: orthanc.StoreKeyValue("s", "k", "hello"))
    r["get str"] = outcome(lambda: orthanc.GetKeyValue("s", "k"))
    r["store bytes"] = outcome(lambda: orthanc.StoreKeyValue("s", "b", b"\x00\xff"))
    r["get bytes"] = outcome(lambda: orthanc.GetKeyValue("s", "b"))
    r["store bytearray"] = outcome(lambda: orthanc.StoreKeyValue("s", "c", bytearray(b"ba")))
    r["store memoryview"] = outcome(lambda: orthanc.StoreKeyValue("s", "d", memoryview(b"mv")))
    r["get memoryview"] = outcome(lambda: orthanc.GetKeyValue("s", "d"))
    r["store empty value"] = outcome(lambda: orthanc.StoreKeyValue("s", "e", b""))
    r["store int"] = outcome(lambda: orthanc.StoreKeyValue("s", "e", 5))
    r["store in an empty store name"] = outcome(lambda: orthanc.StoreKeyValue("", "k", b"v"))
    r["get from an empty store name"] = outcome(lambda: orthanc.GetKeyValue("", "k"))
    r["get with one argument"] = outcome(lambda: orthanc.GetKeyValue("s"))
    r["delete"] = outcome(lambda: orthanc.DeleteKeyValue("s", "d"))
    r["get deleted"] = outcome(lambda: orthanc.GetKeyValue("s", "d"))
    r["delete missing"] = outcome(lambda: orthanc.DeleteKeyValue("s", "nope"))

    iterator = orthanc.CreateKeysValuesIterator("s")
    r["iterator"] = type(iterator).__name__
    r["key before next"] = outcome(lambda: iterator.GetKey())
    r["value before next"] = outcome(lambda: iterator.GetValue())
    walked = []
    while True:
        step = outcome(lambda: iterator.Next())
        walked.append(["next", step])
        if step != ["bool", True]:
            break
        walked.append([outcome(lambda: iterator.GetKey()), outcome(lambda: iterator.GetValue())])
    r["walk"] = walked
    r["next after the end"] = outcome(lambda: iterator.Next())
    r["key after the end"] = outcome(lambda: iterator.GetKey())
    empty = orthanc.CreateKeysValuesIterator("never used")
    r["next in an empty store"] = outcome(lambda: empty.Next())

    r["enqueue str"] = outcome(lambda: orthanc.EnqueueValue("q", "one"))
    r["enqueue bytes"] = outcome(lambda: orthanc.EnqueueValue("q", b"two"))
    r["enqueue bytearray"] = outcome(lambda: orthanc.EnqueueValue("q", bytearray(b"three")))
    r["enqueue empty value"] = outcome(lambda: orthanc.EnqueueValue("q", b""))
    r["enqueue in an empty queue name"] = outcome(lambda: orthanc.EnqueueValue("", b"x"))
    r["size"] = outcome(lambda: orthanc.GetQueueSize("q"))
    r["size of a queue never used"] = outcome(lambda: orthanc.GetQueueSize("never used"))
    r["size of an empty queue name"] = outcome(lambda: orthanc.GetQueueSize(""))
    r["dequeue front"] = outcome(lambda: orthanc.DequeueValue("q", orthanc.QueueOrigin.FRONT))
    r["dequeue back"] = outcome(lambda: orthanc.DequeueValue("q", orthanc.QueueOrigin.BACK))
    r["dequeue front again"] = outcome(lambda: orthanc.DequeueValue("q", 0))
    r["dequeue empty"] = outcome(lambda: orthanc.DequeueValue("q", 0))
    r["dequeue origin 2"] = outcome(lambda: orthanc.DequeueValue("q", 2))
    r["dequeue origin str"] = outcome(lambda: orthanc.DequeueValue("q", "0"))
    r["dequeue one argument"] = outcome(lambda: orthanc.DequeueValue("q"))
    r["QueueOrigin"] = [orthanc.QueueOrigin.FRONT, orthanc.QueueOrigin.BACK, isinstance(orthanc.QueueOrigin, type)]
    output.AnswerBuffer(json.dumps(r), "application/json")


def Reservations(output, uri, **request):
    r = {}
    ids = []

    def reserve(queue, origin, timeout):
        value, value_id = orthanc.ReserveQueueValue(queue, origin, timeout)
        ids.append(value_id)
        return value, type(value_id).__name__

    orthanc.EnqueueValue("r", b"r1")
    orthanc.EnqueueValue("r", b"r2")
    r["reserve front"] = outcome(lambda: reserve("r", orthanc.QueueOrigin.FRONT, 60))
    r["reserve back"] = outcome(lambda: reserve("r", orthanc.QueueOrigin.BACK, 60))
    r["reserve when all are reserved"] = outcome(lambda: orthanc.ReserveQueueValue("r", 0, 60))
    r["size counts the reserved"] = outcome(lambda: orthanc.GetQueueSize("r"))
    r["dequeue skips the reserved"] = outcome(lambda: orthanc.DequeueValue("r", 0))
    r["acknowledge"] = outcome(lambda: orthanc.AcknowledgeQueueValue("r", ids[0]))
    r["acknowledge twice"] = outcome(lambda: orthanc.AcknowledgeQueueValue("r", ids[0]))
    r["size after acknowledging"] = outcome(lambda: orthanc.GetQueueSize("r"))
    r["reserve for 0 s"] = outcome(lambda: orthanc.ReserveQueueValue("r", 0, 0))
    r["reserve with two arguments"] = outcome(lambda: orthanc.ReserveQueueValue("r", 0))
    r["reserve a float timeout"] = outcome(lambda: orthanc.ReserveQueueValue("r", 0, 2.5))
    r["acknowledge a str id"] = outcome(lambda: orthanc.AcknowledgeQueueValue("r", "1"))

    # A reservation that runs out: the value comes back, with its id.
    orthanc.EnqueueValue("x", b"x1")
    first = orthanc.ReserveQueueValue("x", 0, 1)
    time.sleep(1.6)
    again = orthanc.ReserveQueueValue("x", 0, 60)
    r["back after its timeout, same id"] = [again[0].decode(), again[1] == first[1]]
    r["acknowledge the value handed out again"] = outcome(lambda: orthanc.AcknowledgeQueueValue("x", again[1]))
    # Acknowledging after the timeout ran out is refused, even when no one reserved it since.
    orthanc.EnqueueValue("y", b"y1")
    late = orthanc.ReserveQueueValue("y", 0, 1)
    time.sleep(1.6)
    r["acknowledge after the timeout"] = outcome(lambda: orthanc.AcknowledgeQueueValue("y", late[1]))
    r["still there"] = outcome(lambda: orthanc.GetQueueSize("y"))
    output.AnswerBuffer(json.dumps(r), "application/json")


orthanc.RegisterRestCallback("/versions", Versions)
orthanc.RegisterRestCallback("/stores", Stores)
orthanc.RegisterRestCallback("/reservations", Reservations)
'''.replace("__FUNCTIONS__", repr(FUNCTIONS))

# What the official plugin 7.1 gives, measured on Orthanc 1.13.0; orthanc_py must give the same.
STORES_EXPECTED = {
    "get missing": ["NoneType", None],
    "store str": ["NoneType", None],
    "get str": ["bytes", "hello"],
    "store bytes": ["NoneType", None],
    "get bytes": ["bytes", "\x00\xff"],
    "store bytearray": ["NoneType", None],
    "store memoryview": ["NoneType", None],
    "get memoryview": ["bytes", "mv"],
    "store empty value": ["OrthancException", PARAMETER_OUT_OF_RANGE, "Parameter out of range"],
    "store int": ["TypeError", ANY_TEXT],
    "store in an empty store name": ["OrthancException", PARAMETER_OUT_OF_RANGE, "Parameter out of range"],
    "get from an empty store name": ["TypeError", "Parameter out of range"],
    "get with one argument": ["TypeError", ANY_TEXT],
    "delete": ["NoneType", None],
    "get deleted": ["NoneType", None],
    "delete missing": ["NoneType", None],
    "iterator": "KeysValuesIterator",
    "key before next": ["NoneType", None],
    "value before next": ["OrthancException", BAD_SEQUENCE_OF_CALLS, "Bad sequence of calls"],
    # In the lexicographical order of the keys.
    "walk": [["next", ["bool", True]], [["str", "b"], ["bytes", "\x00\xff"]],
             ["next", ["bool", True]], [["str", "c"], ["bytes", "ba"]],
             ["next", ["bool", True]], [["str", "k"], ["bytes", "hello"]],
             ["next", ["bool", False]]],
    "next after the end": ["TypeError", "Bad sequence of calls"],
    "key after the end": ["NoneType", None],
    "next in an empty store": ["bool", False],
    "enqueue str": ["NoneType", None],
    "enqueue bytes": ["NoneType", None],
    "enqueue bytearray": ["NoneType", None],
    "enqueue empty value": ["OrthancException", PARAMETER_OUT_OF_RANGE, "Parameter out of range"],
    "enqueue in an empty queue name": ["OrthancException", PARAMETER_OUT_OF_RANGE, "Parameter out of range"],
    "size": ["int", 3],
    "size of a queue never used": ["int", 0],
    "size of an empty queue name": ["TypeError", "Parameter out of range"],
    "dequeue front": ["bytes", "one"],
    "dequeue back": ["bytes", "three"],
    "dequeue front again": ["bytes", "two"],
    "dequeue empty": ["NoneType", None],
    "dequeue origin 2": ["TypeError", "Parameter out of range"],
    "dequeue origin str": ["TypeError", ANY_TEXT],
    "dequeue one argument": ["TypeError", ANY_TEXT],
    "QueueOrigin": [0, 1, True],
}

RESERVATIONS_EXPECTED = {
    "reserve front": ["tuple", ["bytes", "r1"], ["str", "int"]],
    "reserve back": ["tuple", ["bytes", "r2"], ["str", "int"]],
    "reserve when all are reserved": ["tuple", ["NoneType", None], ["NoneType", None]],
    "size counts the reserved": ["int", 2],
    "dequeue skips the reserved": ["NoneType", None],
    "acknowledge": ["NoneType", None],
    "acknowledge twice": ["OrthancException", UNKNOWN_RESOURCE, "Unknown resource"],
    "size after acknowledging": ["int", 1],
    "reserve for 0 s": ["TypeError", "Parameter out of range"],
    "reserve with two arguments": ["TypeError", ANY_TEXT],
    "reserve a float timeout": ["TypeError", ANY_TEXT],
    "acknowledge a str id": ["TypeError", ANY_TEXT],
    "back after its timeout, same id": ["x1", True],
    "acknowledge the value handed out again": ["NoneType", None],
    "acknowledge after the timeout": ["OrthancException", UNKNOWN_RESOURCE, "Unknown resource"],
    "still there": ["int", 1],
}


def assert_outcomes(answers: dict[str, Any], expected: dict[str, Any]) -> None:
    """``answers`` match ``expected``, a ``TypeError`` of :data:`ANY_TEXT` matching any text."""
    differences = []
    for name, wanted in expected.items():
        got = answers.get(name)
        ok = (isinstance(got, list) and got[:1] == ["TypeError"]) if wanted == ["TypeError", ANY_TEXT] \
            else got == wanted
        if not ok:
            differences.append(f"{name}: {got!r}, expected {wanted!r}")
    assert differences == [], "\n".join(differences)


def test_the_orthanc_module_keeps_values_and_queues_as_the_official_plugin_does(
        make_orthanc: Callable[..., OrthancServer], plugin: str | None) -> None:
    server = make_orthanc(MODULE_SCRIPT, plugin=plugin)
    versions = server.get_json("/versions")
    if plugin is not None and not has_stores():
        # The official plugins of Orthanc 1.12.7 and older (4.0, 5.0) have none of them.
        assert versions == {name: ["absent"] for name in (*FUNCTIONS, "QueueOrigin")}
        return
    assert versions["QueueOrigin"] == [0, 1]
    if not has_stores():
        running = orthanc_release()[0]
        for name in FUNCTIONS:
            since = RESERVATIONS_SINCE if name in ("ReserveQueueValue", "AcknowledgeQueueValue") else STORES_SINCE
            need = ".".join(map(str, since))
            assert versions[name] == ["OrthancException", UNKNOWN_PLUGIN_SERVICE,
                                      f"{name}() needs Orthanc {need} or newer; this Orthanc is {running}"], name
        return
    assert versions["GetKeyValue"] == ["NoneType", None]
    assert_outcomes(server.get_json("/stores"), STORES_EXPECTED)
    if has_reservations():
        assert_outcomes(server.get_json("/reservations"), RESERVATIONS_EXPECTED)
    # What the module's values are made of stays in Orthanc's database: a restart keeps it.
    assert server.stop() == 0
    server.start()
    assert server.get_json("/versions")["GetKeyValue"] == ["NoneType", None]
    assert server.get_json("/stores")["get missing"] == ["bytes", "hello"]  # "k" of store "s" is still there


# --- orthanc_py.kv and orthanc_py.queue, driven over HTTP ---------------------------------------

API_SCRIPT = r'''
import functools
import time

from orthanc_py import _capi, kv, queue, route
from orthanc_py.kv import StoreUnavailableError
from orthanc_py.queue import LeaseExpiredError, QueueOrigin

store = kv.Store("tests.kv")
jobs = queue.Queue("tests.jobs")


def answers(handler):
    """Errors as the statuses a client sees."""
    @functools.wraps(handler)
    def wrapper(request, **params):
        try:
            return handler(request, **params)
        except StoreUnavailableError as error:
            return {"unavailable": str(error), "code": error.code}, 503
        except LeaseExpiredError as error:
            return {"expired": str(error), "code": error.code}, 409
        except KeyError as error:
            return {"missing": error.args[0]}, 404
    return wrapper


@route("/kv/<path:key>", methods=("GET", "PUT", "DELETE"))
@answers
def item(request, key):
    if request.method == "PUT":
        store[key] = request.body
        return None
    if request.method == "DELETE":
        del store[key]
        return None
    return store[key]


@route("/kv")
@answers
def listing(request):
    # Values as latin-1 text: any bytes, one character each.
    return {"keys": list(store), "len": len(store), "items": [[k, v.decode("latin-1")] for k, v in store.items()],
            "values": [v.decode("latin-1") for v in store.values()], "contains": "a" in store,
            "get": store.get("nope", "default")}


@route("/kv-mapping", methods=("POST",))
@answers
def mapping(request):
    r = {}
    store[""] = b"the empty key"  # a key like the others
    r["empty key"] = store.pop("").decode()
    r["setdefault new"] = store.setdefault("sd", b"first").decode()
    r["setdefault kept"] = store.setdefault("sd", b"second").decode()
    store.update({"u1": b"1", "u2": bytearray(b"2")})
    r["pop"] = store.pop("u1").decode()
    r["pop missing"] = store.pop("u1", b"gone").decode()
    store.discard("never there")
    r["as a dict"] = {key: value.decode() for key, value in dict(store).items()}
    store.clear()
    r["after clear"] = len(store)
    return r


@route("/jobs", methods=("POST",))
@answers
def put(request):
    jobs.put(request.body)


@route("/jobs/next")
@answers
def take(request):
    origin = QueueOrigin.BACK if request.args.get("origin") == "back" else QueueOrigin.FRONT
    value = jobs.get(timeout=float(request.args.get("timeout", 0)), origin=origin)
    return {"value": None if value is None else value.decode()}


@route("/jobs/size")
@answers
def size(request):
    return {"size": len(jobs)}


@route("/jobs/work", methods=("POST",))
@answers
def work(request):
    """Handles one job under a reservation: fails when asked, or takes longer than its lease."""
    options = request.json() if request.body else {}
    reservation = jobs.reserve(lease=options.get("lease", 60), timeout=options.get("timeout", 0))
    if reservation is None:
        return {"value": None}
    seen = {"value": reservation.value.decode(), "id": reservation.id, "lease": reservation.lease}
    try:
        with reservation:
            if options.get("fail"):
                raise RuntimeError("the handler failed")
            time.sleep(options.get("work", 0))
    except RuntimeError:
        seen["failed"] = True
    seen["acknowledged"] = reservation.acknowledged
    return seen


@route("/jobs/reserve-on-1.12.9", methods=("POST",))
@answers
def reserve_on_an_older_orthanc(request):
    real, _capi.release = _capi.release, (1, 12, 9)
    try:
        jobs.reserve(lease=5)
    finally:
        _capi.release = real
'''


def test_a_kv_store_is_a_mapping_of_str_to_bytes_kept_across_restarts(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(API_SCRIPT)
    if not has_stores():
        answer = server.request("PUT", "/kv/a", b"1")
        assert answer.status == 503
        assert answer.json() == {"unavailable": too_old("orthanc_py.kv", "key-value stores"),
                                 "code": UNKNOWN_PLUGIN_SERVICE}
        assert server.get("/kv").json()["unavailable"] == too_old("orthanc_py.kv", "key-value stores")
        return
    assert server.get("/kv/a").status == 404
    assert server.get_json("/kv") == {"keys": [], "len": 0, "items": [], "values": [], "contains": False,
                                      "get": "default"}
    for key, value in [("b", b"\x00\xffbinary"), ("a", b"1"), ("dir/é", "ü".encode())]:
        assert server.request("PUT", f"/kv/{urllib.parse.quote(key)}", value).status == 204
    assert server.get("/kv/a").body == b"1"
    assert server.get("/kv/b").body == b"\x00\xffbinary"
    assert server.request("PUT", "/kv/a", b"2").status == 204  # replaced
    listing = server.get_json("/kv")
    # The keys in lexicographical order.
    assert listing["keys"] == ["a", "b", "dir/é"]
    assert listing["len"] == 3 and listing["contains"] is True
    utf8 = "ü".encode().decode("latin-1")
    assert listing["items"] == [["a", "2"], ["b", "\x00\xffbinary"], ["dir/é", utf8]]
    assert listing["values"] == ["2", "\x00\xffbinary", utf8]
    assert server.request("DELETE", "/kv/b").status == 204
    assert server.request("DELETE", "/kv/b").json() == {"missing": "b"}

    # Orthanc keeps the store in its database: a restart on the same storage finds it.
    assert server.stop() == 0
    server.start()
    assert server.get("/kv/a").body == b"2"
    assert server.get_json("/kv")["keys"] == ["a", "dir/é"]
    assert server.post_json("/kv-mapping") == {
        "empty key": "the empty key", "setdefault new": "first", "setdefault kept": "first", "pop": "1",
        "pop missing": "gone", "as a dict": {"a": "2", "dir/é": "ü", "sd": "first", "u2": "2"}, "after clear": 0}
    assert server.get_json("/kv")["keys"] == []


def test_a_queue_gives_its_values_in_order_and_waits_for_one(make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(API_SCRIPT)
    if not has_stores():
        answer = server.post("/jobs", b"job")
        assert answer.status == 503
        assert answer.json()["unavailable"] == too_old("orthanc_py.queue", "queues")
        assert server.get("/jobs/size").json()["unavailable"] == too_old("orthanc_py.queue", "queues")
        return
    for job in (b"one", b"two", b"three", b"four"):
        assert server.post("/jobs", job).status == 204
    assert server.get_json("/jobs/size") == {"size": 4}
    assert server.get_json("/jobs/next") == {"value": "one"}
    assert server.get_json("/jobs/next?origin=back") == {"value": "four"}
    assert server.get_json("/jobs/size") == {"size": 2}
    assert server.stop() == 0  # what was queued survives a restart
    server.start()
    assert server.get_json("/jobs/next") == {"value": "two"}
    assert server.get_json("/jobs/next") == {"value": "three"}
    started = time.monotonic()
    assert server.get_json("/jobs/next") == {"value": None}  # empty: at once by default
    assert time.monotonic() - started < 2

    # get(timeout=...) waits for a value another request puts.
    threading.Timer(0.8, lambda: server.post("/jobs", b"late")).start()
    started = time.monotonic()
    assert server.get_json("/jobs/next?timeout=10") == {"value": "late"}
    assert 0.7 < time.monotonic() - started < 5
    started = time.monotonic()
    assert server.get_json("/jobs/next?timeout=0.5") == {"value": None}
    assert 0.45 < time.monotonic() - started < 3


def test_a_reservation_is_acknowledged_or_comes_back_once_its_lease_runs_out(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(API_SCRIPT)
    # An Orthanc older than 1.12.10 names the version that reservations need (here made to look like 1.12.9).
    answer = server.post("/jobs/reserve-on-1.12.9")
    assert answer.status == 503
    assert answer.json()["unavailable"] == too_old("Queue.reserve()", "reservations of queue values",
                                                   RESERVATIONS_SINCE)
    if not has_reservations():
        answer = server.post("/jobs/work")
        assert answer.status == 503
        assert answer.json() == {"code": UNKNOWN_PLUGIN_SERVICE, "unavailable": too_old(
            "Queue.reserve()", "reservations of queue values", RESERVATIONS_SINCE)}
        return
    assert server.get_json("/jobs/size") == {"size": 0}
    assert server.post_json("/jobs/work") == {"value": None}
    server.post("/jobs", b"job-1")
    server.post("/jobs", b"job-2")

    # A handler that fails leaves its value reserved: no one else gets it until its lease runs out.
    failed = server.post_json("/jobs/work", {"lease": 1, "fail": True})
    assert failed["value"] == "job-1" and failed["failed"] is True and failed["acknowledged"] is False
    assert failed["lease"] == 1
    assert server.get_json("/jobs/size") == {"size": 2}  # reserved values count
    assert server.get_json("/jobs/next") == {"value": "job-2"}  # get() skips the reserved one
    assert server.get_json("/jobs/next") == {"value": None}
    time.sleep(1.6)
    # Then it comes back, with its id: at least once.
    again = server.post_json("/jobs/work", {"lease": 30})
    assert again == {"value": "job-1", "id": failed["id"], "lease": 30, "acknowledged": True}
    assert server.get_json("/jobs/size") == {"size": 0}

    # A handler slower than its lease: acknowledging fails, and the value is handed out again.
    server.post("/jobs", b"job-3")
    slow = server.post("/jobs/work", json.dumps({"lease": 1, "work": 1.6}))
    assert slow.status == 409, slow
    assert "was acknowledged after its lease of 1 s ran out" in slow.json()["expired"]
    assert slow.json()["code"] == UNKNOWN_RESOURCE
    rounded = server.post_json("/jobs/work", {"lease": 0.2})
    assert rounded["value"] == "job-3" and rounded["lease"] == 1  # Orthanc counts in whole seconds: rounded up

    # reserve(timeout=...) waits for a value, as get() does.
    threading.Timer(0.8, lambda: server.post("/jobs", b"job-4")).start()
    assert server.post_json("/jobs/work", {"timeout": 10})["value"] == "job-4"


def test_bad_arguments_name_the_argument_and_the_fix() -> None:
    # Checked before Orthanc is asked anything: the same on every Orthanc, and outside Orthanc.
    with pytest.raises(TypeError, match="the name of a key-value store must be str, not int"):
        kv.Store(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the name of a queue cannot be empty"):
        queue.Queue("")
    store, jobs = kv.Store("s"), queue.Queue("q")
    assert repr(store) == "orthanc_py.kv.Store('s')" and store.name == "s"
    with pytest.raises(TypeError, match=r"takes bytes, not str: store text.encode\(\) and decode\(\) what you read"):
        store["k"] = "text"  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"keys of a store are str, not bytes: decode it \(key.decode\(\)\)"):
        store[b"k"] = b"v"  # type: ignore[index]
    with pytest.raises(ValueError, match="Orthanc does not keep empty values"):
        store["k"] = b""
    with pytest.raises(ValueError, match="cannot hold a NUL"):
        store["a\0b"]
    with pytest.raises(TypeError, match=r"takes bytes .* not int"):
        jobs.put(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'lease' must be more than 0 and at most 4294967295 seconds, not 0"):
        jobs.reserve(lease=0)
    with pytest.raises(ValueError, match="'lease' must be a finite number of seconds, 0 or more, not inf"):
        jobs.reserve(lease=float("inf"))
    with pytest.raises(TypeError, match="'lease' must be a number of seconds, not str"):
        jobs.reserve(lease="60")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'origin' must be QueueOrigin\.FRONT or QueueOrigin\.BACK, not 2"):
        jobs.get(origin=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'timeout' must be a finite number of seconds, 0 or more, not nan"):
        jobs.get(timeout=float("nan"))
    # A well-formed call outside Orthanc (a worker process, a plain python) says where it runs.
    with pytest.raises(NotInOrthancError, match="needs the Orthanc server"):
        store["k"]
    with pytest.raises(NotInOrthancError, match="needs the Orthanc server"):
        len(jobs)


def test_a_store_used_while_the_script_loads_says_where_to_use_it(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc("""
from orthanc_py import kv

kv.Store("tests.load")["started"] = b"1"
""", start=False)
    server.start(wait=False)
    server.wait_for_log("failed while loading", timeout=60)
    assert server.wait_exit(60) != 0
    if has_stores():
        assert ("StoreUnavailableError: orthanc_py.kv cannot be used while the script loads: Orthanc opens its "
                "database after starting its plugins. Use it from a route, an event handler or @on_startup"
                in server.log), server.log
    else:
        assert f"StoreUnavailableError: {too_old('orthanc_py.kv', 'key-value stores')}" in server.log, server.log


# --- the example of the documentation ----------------------------------------------------------

EXAMPLE = EXAMPLES / "stores" / "export_queue.py"


def test_the_export_queue_example_sends_each_stable_study_once(make_orthanc: Callable[..., OrthancServer],
                                                                storescp: StoreScp) -> None:
    server = make_orthanc(EXAMPLE, config={"StableAge": 1, "DicomModalities": {"export": storescp.modality()}})
    _uid, files = make_study(2, patient_id="EXPORT-1", rows=2, cols=2)
    study = server.upload(files[0])["ParentStudy"]
    server.upload(files[1])
    if not has_stores():
        server.wait_for_log("orthanc_py.queue needs Orthanc 1.12.8 or newer", timeout=30)
        assert server.get("/exports").status == 500
        return
    storescp.wait_for_files(2, timeout=60)
    server.wait_until(lambda: server.get_json("/exports")["sent"], 30, "the study recorded as sent")
    status = server.get_json("/exports")
    assert status["pending"] == 0 and list(status["sent"]) == [study]
    # The record of what was sent is in Orthanc's database: a second delivery is not sent again.
    assert server.stop() == 0
    server.start()
    assert list(server.get_json("/exports")["sent"]) == [study]


# --- two nodes sharing PostgreSQL ------------------------------------------------------------

CLUSTER_SCRIPT = r'''
from orthanc_py import kv, queue, route
from orthanc_py.kv import StoreUnavailableError

shared = kv.Store("tests.cluster")
work = queue.Queue("tests.cluster")


@route("/put/<key>", methods=("POST",))
def put(request, key):
    try:
        shared[key] = request.body
        work.put(request.body)
    except StoreUnavailableError as error:
        return {"unavailable": str(error), "code": error.code}, 503


@route("/read/<key>")
def read(request, key):
    return {"value": shared.get(key, b"").decode(), "taken": (work.get() or b"").decode()}
'''


def test_two_nodes_on_one_postgresql_share_stores_and_queues_when_its_plugin_has_them(
        orthanc_cluster_factory: Callable[..., Any]) -> None:
    cluster = orthanc_cluster_factory(CLUSTER_SCRIPT, nodes=2, balancer=False)
    first, second = cluster.nodes
    system = first.get_json("/system")
    plugin = first.get_json("/plugins/postgresql-index")["Version"]
    # Orthanc says what its database back-end has; the PostgreSQL plugin has both from its 8.0.
    capabilities = system.get("Capabilities", {})
    expected = has_stores() and tuple(int(part) for part in plugin.split(".")[:2]) >= (8, 0)
    assert capabilities.get("HasKeyValueStores", False) is expected, (plugin, capabilities)
    answer = first.post("/put/k", b"from node 1")
    if not has_stores():
        assert answer.status == 503
        assert answer.json() == {"unavailable": too_old("orthanc_py.kv", "key-value stores"),
                                 "code": UNKNOWN_PLUGIN_SERVICE}
        return
    if not expected:
        # Orthanc 1.13 on a PostgreSQL plugin without them (Debian's 5.0): the error says so, and what has them.
        assert answer.status == 503, answer
        assert answer.json() == {"code": NOT_IMPLEMENTED, "unavailable": (
            f"orthanc_py.kv: the database back-end of this Orthanc ({system['DatabaseBackendPlugin']}) has no "
            "key-value stores (GET /system: Capabilities.HasKeyValueStores is false). Orthanc's own SQLite index "
            "has them; the PostgreSQL plugin has them from version 8.0 on")}
        assert "does not support key-value stores" in first.log
        return
    assert answer.status == 204, answer
    assert second.get_json("/read/k") == {"value": "from node 1", "taken": "from node 1"}
    assert first.get_json("/read/k") == {"value": "from node 1", "taken": ""}  # taken once, across the nodes

