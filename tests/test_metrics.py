# SPDX-License-Identifier: GPL-3.0-or-later
"""orthanc_py's own metrics, read from ``/tools/metrics-prometheus`` as Prometheus reads them.

Each test drives a real Orthanc (requests from several threads at once,
uploads, offloaded calls, claims) and checks every figure against what it
sent: counting is lock-free on the routes' path, so exact counts under
concurrent requests are what shows that no increment is lost.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from orthanc_py import _metrics
from orthanc_py.cluster_server import OrthancCluster
from orthanc_py.server import OrthancServer

from .dicom import make_study
from .test_runtime import start_fails
from .test_scp_decorators import MODALITIES, findscu, move_responses, movescu, output

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: (-?\d+))?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Metrics:
    """Prometheus' text format: each sample by its name and labels (label values unescaped)."""
    samples: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        assert match, f"not a line of Prometheus' text format: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        pairs = frozenset(
            (key, re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw))
            for key, raw in _LABEL.findall(labels)
        )
        key = (name, pairs)
        assert key not in samples, f"{line!r} twice"
        samples[key] = float(value)
    return samples


def scrape(server: OrthancServer) -> Metrics:
    answer = server.get("/tools/metrics-prometheus")
    assert answer.status == 200, answer
    return parse(answer.text)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in metrics, f"{name}{labels} is not published: {sorted(k for k in metrics if k[0] == name)}"
    return metrics[key]


def wait_for(server: OrthancServer, condition: Callable[[Metrics], bool], what: str, timeout: float = 30.0) -> Metrics:
    """Scrapes until ``condition(metrics)`` holds; the metrics that made it hold."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(server)
        if condition(metrics):
            return metrics
        if time.monotonic() > deadline:
            mine = "\n".join(f"{k}: {v}" for k, v in sorted(metrics.items()) if k[0].startswith("orthanc_py_"))
            raise AssertionError(f"{what}: not seen in {timeout:g} s; last figures:\n{mine}")
        time.sleep(0.1)


def send_all(server: OrthancServer, paths: list[str], threads: int = 8) -> list[int]:
    """GETs every path, from ``threads`` keep-alive connections at once; their statuses."""
    lock = threading.Lock()
    todo = iter(list(enumerate(paths)))
    statuses = [0] * len(paths)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        try:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                index, path = item
                connection.request("GET", path)
                answer = connection.getresponse()
                answer.read()
                statuses[index] = answer.status
                if answer.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(client) for _ in range(threads)]:
            future.result()
    return statuses


def test_label_values_are_escaped_as_the_text_format_wants() -> None:
    text = 'a "rule"\\ with\na newline\0'
    written = _metrics.label_value(text)
    assert written == '"a \\"rule\\"\\\\ with\\na newline?"'
    [(_, labels)] = parse(f"m{{route={written}}} 1")
    assert dict(labels)["route"] == text.replace("\0", "?")


# --- routes ------------------------------------------------------------------------------------------

ROUTES = """
import orthanc
from orthanc_py import abort, route

@route("/ok")
def ok(request):
    return "ok"

@route("/maybe/<int:n>")
def maybe(request, n):
    if n % 3 == 0:
        raise RuntimeError("a route that raises, on purpose")
    if n % 3 == 1:
        return "busy", 503
    return "fine"

@route("/missing")
def missing(request):
    abort(404, "not here")

@route(r"/esc/(\\d+)")
def escaped(request):
    return "a raw regular expression: its backslash is escaped in the label"

def Official(output, uri, **request):
    if uri.endswith("fail"):
        output.SendHttpStatusCode(500)
    elif uri.endswith("raise"):
        raise RuntimeError("an official callback that raises, on purpose")
    elif uri.endswith("late"):
        output.AnswerBuffer("answered", "text/plain")
        raise RuntimeError("an official callback that raises after its answer, on purpose")
    else:
        output.AnswerBuffer("official", "text/plain")

orthanc.RegisterRestCallback("/official/(.*)", Official)

def Mine():
    orthanc.SetMetricsValue("script_own_metric", 7, orthanc.MetricsType.DEFAULT)

orthanc.RegisterRefreshMetricsCallback(Mine)
"""


def test_each_route_counts_requests_errors_and_time_exactly_under_concurrent_load(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(ROUTES)
    before = scrape(server)
    assert value(before, "orthanc_py_route_requests_total", route="/ok") == 0, "published before any request"
    paths = (["/ok"] * 2000 + [f"/maybe/{n}" for n in range(300)] + ["/missing"] * 50
             + ["/official/a"] * 100 + ["/official/fail"] * 30 + ["/official/raise"] * 20 + ["/official/late"] * 10)
    statuses = send_all(server, paths)
    assert statuses.count(200) == 2000 + 100 + 100 + 10, "the routes answered as written"
    assert statuses.count(503) == 100 and statuses.count(404) == 50 and statuses.count(500) == 100 + 50
    assert server.get("/esc/42").status == 200

    metrics = scrape(server)
    expected = {"/ok": (2000, 0), "/maybe/<int:n>": (300, 200), "/missing": (50, 0),
                "/official/(.*)": (160, 60), "/esc/(\\d+)": (1, 0)}
    for route, (requests, errors) in expected.items():
        assert value(metrics, "orthanc_py_route_requests_total", route=route) == requests, route
        assert value(metrics, "orthanc_py_route_errors_total", route=route) == errors, route
        assert value(metrics, "orthanc_py_route_duration_seconds_count", route=route) == requests, route
        buckets = sorted(
            (float(dict(labels)["le"]), count) for (name, labels), count in metrics.items()
            if name == "orthanc_py_route_duration_seconds_bucket" and dict(labels)["route"] == route
        )
        assert len(buckets) == 17 and buckets[-1] == (float("inf"), requests), (route, buckets)
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"cumulative buckets: {buckets}"
        total = value(metrics, "orthanc_py_route_duration_seconds_sum", route=route)
        assert 0 < total < requests * 0.5, (route, total)
    # Beside the script's own refresh-metrics callback, which still runs.
    assert value(metrics, "script_own_metric") == 7

    # Orthanc restarting in the process: the script runs again, its figures start afresh.
    started = server.log.count("Orthanc has started")
    assert server.post("/tools/reset").status == 200
    server.wait_until(lambda: server.log.count("Orthanc has started") > started, timeout=60, what="the restart")
    server.wait_until(lambda: server.get("/ok").status == 200, timeout=30, what="the routes after the restart")
    again = scrape(server)
    assert value(again, "orthanc_py_route_requests_total", route="/ok") == 1
    assert value(again, "orthanc_py_route_requests_total", route="/maybe/<int:n>") == 0
    assert value(again, "script_own_metric") == 7


def test_metrics_off_leave_the_routes_answering_and_publish_no_figure_of_orthanc_py(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(ROUTES, config={"Python": {"Metrics": False}})
    statuses = send_all(server, ["/ok"] * 200 + [f"/maybe/{n}" for n in range(30)] + ["/official/a", "/official/raise"])
    assert statuses.count(200) == 200 + 10 + 1 and statuses.count(503) == 10 and statuses.count(500) == 10 + 1
    assert server.get("/ok").text == "ok"
    page = server.get("/tools/metrics-prometheus")
    assert page.status == 200
    assert "orthanc_py_" not in page.text, [line for line in page.text.splitlines() if "orthanc_py_" in line]
    metrics = parse(page.text)
    assert value(metrics, "script_own_metric") == 7, "the script's own refresh-metrics callback still runs"
    assert any(name.startswith("orthanc_") for name, _ in metrics), "Orthanc's own metrics are still there"


def test_a_metrics_option_that_is_not_a_boolean_stops_orthanc_with_an_error_naming_it(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(ROUTES, config={"Python": {"Metrics": "no"}}, start=False)
    start_fails(server)
    assert 'orthanc_py: bad configuration: "Python.Metrics" must be true or false, not "no"' in server.log


# --- handlers and the change queue -----------------------------------------------------------------

HANDLERS = """
import threading
import orthanc
from orthanc_py import ChangeType, http_filter, instance_filter, on_change, on_stored_instance, route

gate = threading.Event()

@on_stored_instance
def count(instance):
    pass

@on_stored_instance
def broken(instance):
    raise ValueError("a stored-instance handler that raises, on purpose")

@on_change(ChangeType.NEW_INSTANCE)
def held(change):
    gate.wait(120)

def Everything(change_type, level, resource_id):
    if change_type == orthanc.ChangeType.NEW_SERIES:
        raise RuntimeError("an on-change callback that raises, on purpose")

orthanc.RegisterOnChangeCallback(Everything)

@instance_filter
def accept(instance):
    return True

@http_filter
def refuse(request):
    if request.path == "/filtered":
        raise RuntimeError("a filter that raises, on purpose")
    return True

@route("/release")
def release(request):
    gate.set()
    return "released"
"""


def test_handlers_count_deliveries_and_failures_and_the_change_queue_its_backlog(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    # No STABLE_* change while the test runs: each figure is then known exactly.
    server = make_orthanc(HANDLERS, config={"StableAge": 600})
    idle = scrape(server)
    assert value(idle, "orthanc_py_change_backlog") == 0 and value(idle, "orthanc_py_change_oldest_age_seconds") == 0
    _, files = make_study(5, rows=2, cols=2)
    for dicom in files:
        server.upload(dicom)
    for _ in range(3):
        assert server.get("/filtered").status == 500
    time.sleep(1.0)  # the first NEW_INSTANCE holds the queue: its events wait

    waiting = scrape(server)
    for name, kind, deliveries, failures in (("count", "stored_instance", 5, 0), ("broken", "stored_instance", 5, 5),
                                             ("accept", "instance_filter", 5, 0)):
        assert value(waiting, "orthanc_py_handler_deliveries_total", kind=kind, handler=name) == deliveries, name
        assert value(waiting, "orthanc_py_handler_failures_total", kind=kind, handler=name) == failures, name
    assert value(waiting, "orthanc_py_handler_failures_total", kind="http_filter", handler="refuse") == 3
    assert value(waiting, "orthanc_py_handler_deliveries_total", kind="http_filter", handler="refuse") >= 5 + 3
    backlog = value(waiting, "orthanc_py_change_backlog")
    assert backlog >= 5, "the 5 NEW_INSTANCE changes, the first being delivered, at least"
    assert 1.0 <= value(waiting, "orthanc_py_change_oldest_age_seconds") < 60
    assert value(waiting, "orthanc_py_handler_deliveries_total", kind="change", handler="held") == 1
    delivered = value(waiting, "orthanc_py_changes_delivered_total")

    assert server.get("/release").text == "released"
    drained = wait_for(server, lambda m: value(m, "orthanc_py_change_backlog") == 0, "the queue delivered")
    assert value(drained, "orthanc_py_change_oldest_age_seconds") == 0
    assert value(drained, "orthanc_py_changes_delivered_total") == delivered + backlog
    # held asked for NEW_INSTANCE only; the orthanc module's callback gets every change.
    assert value(drained, "orthanc_py_handler_deliveries_total", kind="change", handler="held") == 5
    assert value(drained, "orthanc_py_handler_failures_total", kind="change", handler="held") == 0
    assert (value(drained, "orthanc_py_handler_deliveries_total", kind="change", handler="Everything")
            == value(drained, "orthanc_py_changes_delivered_total"))
    assert value(drained, "orthanc_py_handler_failures_total", kind="change", handler="Everything") == 1
    assert value(drained, "orthanc_py_handler_retries_total", kind="change", handler="Everything") == 0


# --- DICOM SCPs --------------------------------------------------------------------------------------

SCPS = """
import orthanc
from orthanc_py import find_scp

@find_scp
def patients(query):
    if query.tags.get("PatientID") == "RAISE":
        raise ValueError("a C-FIND handler that raises, on purpose")
    return [{"PatientID": "P1", "PatientName": "Doe^Jane"}]

def Create(**request):
    if request["PatientID"] == "REFUSE":
        raise ValueError("a C-MOVE create callback that raises, on purpose")
    return request["PatientID"]

def Size(driver):
    if driver == "UNCOUNTED":
        raise ValueError("a C-MOVE count that raises, on purpose")
    return 2

def Apply(driver):
    if driver == "BROKEN":
        raise ValueError("a C-MOVE sub-operation that raises, on purpose")

def Free(driver):
    if driver == "BROKEN":
        raise ValueError("a C-MOVE free callback that raises too, on purpose")

orthanc.RegisterMoveCallback2(Create, Size, Apply, Free)
"""


def test_scp_handlers_count_their_requests_and_those_that_failed(make_orthanc: Callable[..., OrthancServer],
                                                                 tmp_path: Path) -> None:
    server = make_orthanc(SCPS, config={"DicomModalities": MODALITIES})
    idle = scrape(server)
    assert value(idle, "orthanc_py_handler_deliveries_total", kind="find_scp", handler="patients") == 0
    assert value(idle, "orthanc_py_handler_failures_total", kind="find_scp", handler="patients") == 0
    assert ("orthanc_py_handler_retries_total", frozenset({("kind", "find_scp"), ("handler", "patients")})) \
        not in idle, "retries are the change handlers' only"

    for number in range(3):
        answered, answers = findscu(server, tmp_path / f"answered-{number}", "-P", "QueryRetrieveLevel=PATIENT",
                                    "PatientID", "PatientName")
        assert answered.returncode == 0, output(answered)
        assert [answer.PatientID for answer in answers] == ["P1"]
    raised, answers = findscu(server, tmp_path / "raised", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=RAISE")
    assert answers == [] and "Failed" in output(raised), output(raised)

    # C-MOVE through the orthanc module: a request counts one delivery, and one failure whichever of its
    # callbacks fail (BROKEN fails its first sub-operation, then its free callback).
    expected = {"OK": "Final Move Response (Success)",
                "BROKEN": "Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)",
                "UNCOUNTED": "Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)",
                "REFUSE": "Final Move Response (Failed: UnableToProcess)"}
    for patient, final in expected.items():
        moved = movescu(server, "TARGET", "QueryRetrieveLevel=PATIENT", f"PatientID={patient}")
        assert move_responses(moved)[-1:] == [final], output(moved)
    server.wait_for_log("a C-MOVE free callback that raises too, on purpose")

    metrics = scrape(server)
    assert value(metrics, "orthanc_py_handler_deliveries_total", kind="find_scp", handler="patients") == 4
    assert value(metrics, "orthanc_py_handler_failures_total", kind="find_scp", handler="patients") == 1
    assert value(metrics, "orthanc_py_handler_deliveries_total", kind="move_scp", handler="Create") == 4
    assert value(metrics, "orthanc_py_handler_failures_total", kind="move_scp", handler="Create") == 3


# --- the offload pool --------------------------------------------------------------------------------

OFFLOAD = """
import os
import time
from orthanc_py import route

@route("/hold", offload=True)
def hold(request):
    # In a worker process: waits for the test to create the file.
    deadline = time.monotonic() + 60
    while not os.path.exists(request.args["file"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "done"
"""


def test_the_offload_pool_shows_its_busy_and_waiting_calls(make_orthanc: Callable[..., OrthancServer],
                                                          tmp_path: Path) -> None:
    server = make_orthanc(OFFLOAD, config={"Python": {"OffloadWorkers": 2}})
    released = tmp_path / "released"
    warm = tmp_path / "warm"
    warm.touch()
    assert server.get(f"/hold?file={warm}", timeout=60).text == "done"  # starts the pool
    started = scrape(server)
    assert value(started, "orthanc_py_offload_workers") == 2
    assert value(started, "orthanc_py_offload_calls_total") == 1

    with concurrent.futures.ThreadPoolExecutor(5) as clients:
        answers = [clients.submit(server.get, f"/hold?file={released}", timeout=90) for _ in range(5)]
        held = wait_for(server, lambda m: value(m, "orthanc_py_offload_busy") + value(m, "orthanc_py_offload_waiting")
                        == 5, "five calls in the pool")
        assert value(held, "orthanc_py_offload_busy") == 2 and value(held, "orthanc_py_offload_waiting") == 3
        released.touch()
        assert [answer.result().text for answer in answers] == ["done"] * 5
    done = scrape(server)
    assert value(done, "orthanc_py_offload_busy") == 0 and value(done, "orthanc_py_offload_waiting") == 0
    assert value(done, "orthanc_py_offload_calls_total") == 6
    assert value(done, "orthanc_py_offload_crashes_total") == 0
    assert value(done, "orthanc_py_offload_external_in_flight") == 0


# --- claims ------------------------------------------------------------------------------------------

CLAIMS = """
from orthanc_py import ChangeType, cluster, on_change, route

@route("/claim/<study>/<key>")
def claim(request, study, key):
    return cluster.claim(f"/studies/{study}", key, 60).outcome.value

@route("/plant/<study>/<key>/<int:until>")
def plant(request, study, key, until):
    # The claim another node would write, lease until `until` (epoch seconds).
    resource = f"/studies/{study}"
    claims, etag = cluster._read(resource)
    claims[key] = {"node": "elsewhere@other-host:1", "until": until, "done": False}
    return "planted" if cluster._write(resource, claims, etag) else "refused"

@route("/stale/<study>")
def stale(request, study):
    # Two writes after one read: the second is Orthanc's 409, another node's write winning.
    resource = f"/studies/{study}"
    claims, etag = cluster._read(resource)
    cluster._write(resource, {**claims, "x": 1}, etag)
    return "refused" if not cluster._write(resource, {**claims, "x": 2}, etag) else "written"

@on_change(ChangeType.NEW_STUDY, once_per_cluster=True, lease=0.3)
def flaky(change):
    raise RuntimeError("a once_per_cluster handler that raises, on purpose")
"""

CLAIM_CONFIG = {"CheckRevisions": True, "UserMetadata": {"orthanc_py_claim": 4242}}


def test_claims_won_lost_and_taken_over_and_the_retries_of_a_failing_handler(
        make_orthanc: Callable[..., OrthancServer]) -> None:
    server = make_orthanc(CLAIMS, config=CLAIM_CONFIG)
    study = server.upload(make_study(1, rows=2, cols=2)[1][0])["ParentStudy"]
    # flaky fails three times, two of them retries (RETRIES = 3), each after winning its claim.
    failed = wait_for(server, lambda m: value(m, "orthanc_py_handler_failures_total", kind="change",
                                              handler="flaky") == 3, "flaky's three attempts")
    assert value(failed, "orthanc_py_handler_retries_total", kind="change", handler="flaky") == 2
    assert value(failed, "orthanc_py_handler_deliveries_total", kind="change", handler="flaky") == 1
    assert value(failed, "orthanc_py_cluster_claims_won_total") == 3

    assert server.get(f"/claim/{study}/mine").text == "won"
    assert server.get(f"/plant/{study}/theirs/{int(time.time()) + 600}").text == "planted"
    assert server.get(f"/claim/{study}/theirs").text == "held"
    assert server.get(f"/plant/{study}/dead/{int(time.time()) - 5}").text == "planted"
    assert server.get(f"/claim/{study}/dead").text == "won"
    assert server.get(f"/stale/{study}").text == "refused"

    metrics = scrape(server)
    assert value(metrics, "orthanc_py_cluster_claims_won_total") == 3 + 2
    assert value(metrics, "orthanc_py_cluster_claims_lost_total") == 1
    assert value(metrics, "orthanc_py_cluster_claims_taken_over_total") == 1
    assert value(metrics, "orthanc_py_cluster_claim_conflicts_total") == 1
    assert "takes over dead" in server.log


RACE = """
from orthanc_py import cluster, route

@route("/race/<study>/<key>")
def race(request, study, key):
    return cluster.claim(f"/studies/{study}", key, 60).outcome.value
"""


@pytest.fixture
def two_nodes(orthanc_cluster_factory: Callable[..., OrthancCluster]) -> Iterator[OrthancCluster]:
    yield orthanc_cluster_factory(RACE, nodes=2, balancer=False)


def test_two_nodes_racing_for_claims_count_one_won_and_one_lost_each_time(two_nodes: OrthancCluster) -> None:
    first, second = two_nodes.nodes
    study = first.upload(make_study(1, rows=2, cols=2)[1][0])["ParentStudy"]
    keys = [f"race-{number}" for number in range(10)]
    barrier = threading.Barrier(2)

    def race(node: OrthancServer) -> list[str]:
        outcomes = []
        for key in keys:
            barrier.wait(timeout=30)
            outcomes.append(node.get(f"/race/{study}/{key}").text)
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(race, (first, second)))
    assert all(sorted(pair) == ["held", "won"] for pair in zip(*results)), results
    figures = [scrape(node) for node in (first, second)]
    for node, metrics in zip((first, second), figures):
        won = results[(first, second).index(node)].count("won")
        assert value(metrics, "orthanc_py_cluster_claims_won_total") == won
        assert value(metrics, "orthanc_py_cluster_claims_lost_total") == len(keys) - won
        assert value(metrics, "orthanc_py_cluster_claims_taken_over_total") == 0
    assert sum(value(m, "orthanc_py_cluster_claims_won_total") for m in figures) == len(keys)
