# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc's in-process restart, the order of its stop, and what a script leaves running, against a real Orthanc."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.error
from pathlib import Path

import pytest

from orthanc_py import plugin_path
from orthanc_py.server import OrthancServer, OrthancStartError

from .checks import upload
from .dicom import make_dicom

OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))  # type: ignore[union-attr]


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (children, their children...)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # The command name may hold spaces: the fields after its closing parenthesis.
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_answers(server: OrthancServer, path: str, timeout: float) -> str:
    """Waits until ``path`` answers 200; returns its text."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = server.get(path)
            if answer.status == 200:
                return answer.text
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not answer within {timeout} s:\n{server.log[-3000:]}")
        time.sleep(0.1)


def get_in_background(server: OrthancServer, path: str) -> None:
    """Sends ``GET path`` from a thread, not waiting for (nor minding) the answer."""

    def get() -> None:
        # The server stops or is killed while the request waits: expected.
        with contextlib.suppress(Exception):
            server.request("GET", path, timeout=130)

    threading.Thread(target=get, daemon=True).start()


def reset(server: OrthancServer) -> None:
    """Asks for Orthanc's in-process restart and waits until the HTTP server of this run went away."""
    started = server.log.count("Orthanc has started")
    assert server.post("/tools/reset").status == 200
    server.wait_until(lambda: server.log.count("Orthanc has started") > started or server.process.poll() is not None,
                      timeout=60, what="the restart")


RESTARTING_SCRIPT = """
import threading
import numpy
import pydicom
import orthanc
from orthanc_py import on_shutdown, on_startup, route, run_in_worker


def square(n):
    return int(numpy.int64(n) ** 2)


stop = threading.Event()


def tick():
    while not stop.wait(0.1):
        pass


@on_startup
def started():
    print("CYCLE-STARTED")
    threading.Thread(target=tick, name="ticker").start()


@on_shutdown
def stopped():
    print("CYCLE-STOPPED")
    stop.set()


@route("/square/<int:n>")
def square_route(request, n):
    return f"{run_in_worker(square, n)} pydicom {pydicom.__version__}"


def OnChange(change_type, level, resource):
    if change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        print("STOPPED-CHANGE")


orthanc.RegisterOnChangeCallback(OnChange)
"""


@pytest.mark.slow
def test_twenty_in_process_restarts_keep_serving_with_flat_memory(make_orthanc):
    server = make_orthanc(RESTARTING_SCRIPT, config={"Python": {"OffloadWorkers": 1}})
    pid = server.process.pid
    assert wait_answers(server, "/square/3", 10).startswith("9 pydicom")
    after_first = rss_kib(pid)
    helpers_after_first = descendants(pid)
    for cycle in range(2, 22):
        reset(server)
        server.wait_until(lambda n=cycle: server.log.count("CYCLE-STARTED") == n, timeout=10, what=f"restart {cycle}")
        # The same process serves again, with numpy and the offload pool.
        assert wait_answers(server, f"/square/{cycle}", 10).startswith(f"{cycle * cycle} pydicom")
        assert server.process.poll() is None
    assert server.process.pid == pid
    grown_mib = (rss_kib(pid) - after_first) / 1024
    assert grown_mib < 20, f"RSS grew by {grown_mib:.1f} MiB over 20 restarts"
    # The forkserver and the resource tracker are the process's own: no new ones per restart.
    assert len(descendants(pid)) <= len(helpers_after_first) + 1
    log = server.log
    assert log.count("CYCLE-STARTED") == 21
    assert log.count("CYCLE-STOPPED") == 20
    assert log.count("STOPPED-CHANGE") == 20
    assert "Traceback" not in log
    assert server.stop() == 0
    assert server.log.count("CYCLE-STOPPED") == 21


def test_a_script_that_fails_on_restart_stops_orthanc_with_its_traceback(make_orthanc, tmp_path: Path):
    script = tmp_path / "flaky.py"
    script.write_text("from orthanc_py import route\n@route('/ok')\ndef ok(request):\n    return 'ok'\n")
    server = make_orthanc(script)
    assert server.get("/ok").text == "ok"
    script.write_text("raise RuntimeError('broken on the second run')\n")
    reset(server)
    assert server.wait_exit(timeout=60) != 0
    assert "RuntimeError: broken on the second run" in server.log


SLOW_HANDLERS = """
import time
import orthanc


def OnChange(change_type, level, resource):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        time.sleep(0.3)
        instance = orthanc.RestApiGet(f"/instances/{resource}")  # the REST API still works
        print("DELIVERED", resource, len(instance))
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        print("STOPPED-CHANGE")


orthanc.RegisterOnChangeCallback(OnChange)
"""


def upload_distinct(server: OrthancServer, count: int) -> set[str]:
    return {upload(server, make_dicom(patient_id=f"P{n}"))["ID"] for n in range(count)}


@pytest.mark.parametrize("how", ["SIGTERM", "/tools/shutdown"])
def test_every_queued_event_is_delivered_while_orthanc_stops(make_orthanc, how):
    server = make_orthanc(SLOW_HANDLERS)
    ids = upload_distinct(server, 20)
    if how == "SIGTERM":
        code = server.stop(timeout=120)
    else:
        server.post("/tools/shutdown")
        code = server.wait_exit(timeout=120)
    assert code == 0
    log = server.log
    delivered = set(re.findall(r"DELIVERED (\S+) \d+", log))
    assert delivered == ids
    assert log.count("STOPPED-CHANGE") == 1
    assert "Traceback" not in log


def test_a_cap_on_the_wait_at_stop_names_the_events_dropped(make_orthanc):
    server = make_orthanc(SLOW_HANDLERS, config={"Python": {"ShutdownEventsTimeout": 1}})
    upload_distinct(server, 20)
    started = time.monotonic()
    assert server.stop(timeout=120) == 0
    assert time.monotonic() - started < 30
    log = server.log
    dropped = int(re.search(r"orthanc_py: (\d+) queued change events were dropped", log).group(1))  # type: ignore[union-attr]
    delivered = len(re.findall(r"DELIVERED \S+ \d+", log))
    assert delivered < 20
    # Every change counts (new series, studies, patients...), the NEW_INSTANCE ones among them.
    assert dropped >= 20 - delivered - 1
    assert "STOPPED-CHANGE" not in log


def test_reset_while_a_change_handler_runs_keeps_orthanc_serving(make_orthanc):
    server = make_orthanc(
        """
        import time
        import orthanc

        def OnChange(change_type, level, resource):
            if change_type == orthanc.ChangeType.NEW_INSTANCE:
                time.sleep(8)
                orthanc.LogWarning("WOKE " + orthanc.RestApiGet("/system").decode()[:1])

        orthanc.RegisterOnChangeCallback(OnChange)
        """
    )
    upload_distinct(server, 1)
    time.sleep(0.5)
    started = time.monotonic()
    reset(server)
    wait_answers(server, "/system", 60)
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))
    assert server.get("/system").status == 200
    assert server.process.poll() is None
    assert "WOKE {" in server.log
    assert server.stop() == 0


def test_reset_with_a_script_thread_that_never_ends_keeps_serving(make_orthanc):
    server = make_orthanc(
        """
        import threading, time
        import orthanc

        def forever():
            while True:
                try:
                    orthanc.RestApiGet("/system")
                except Exception:
                    pass
                time.sleep(0.05)

        threading.Thread(target=forever, name="forever").start()
        """,
        config={"Python": {"ShutdownGrace": 1}},
    )
    reset(server)
    wait_answers(server, "/system", 30)
    assert "the script's thread 'forever' still runs" in server.log
    started = time.monotonic()
    assert server.stop(timeout=60) == 0
    assert time.monotonic() - started < 20


def test_script_threads_calling_the_rest_api_do_not_crash_a_stopping_orthanc(make_orthanc):
    script = """
        import threading
        import orthanc
        from orthanc_py import on_startup

        def hammer():
            calls = 0
            while True:
                try:
                    orthanc.RestApiGet("/instances")
                except Exception as error:
                    orthanc.LogWarning(f"HAMMER-ENDED after {calls} calls: {type(error).__name__}")
                    return
                calls += 1

        @on_startup
        def start_hammering():
            for n in range(3):
                threading.Thread(target=hammer, name=f"hammer-{n}", daemon=True).start()
        """
    for _ in range(5):
        server = make_orthanc(script, config={"Python": {"ShutdownGrace": 1}})
        time.sleep(0.5)
        assert server.stop(timeout=60) == 0
        assert server.log.count("HAMMER-ENDED") == 3
        assert server.log.count(": NotInOrthancError") == 3, re.findall("HAMMER-ENDED.*", server.log)


def test_a_systemexit_in_a_change_handler_does_not_end_the_delivery(make_orthanc):
    server = make_orthanc(
        """
        from orthanc_py import ChangeType, on_change

        seen = []

        @on_change(ChangeType.NEW_INSTANCE)
        def first(change):
            seen.append(change.resource_id)
            print("SEEN", len(seen))
            if len(seen) == 1:
                raise SystemExit("a handler asked to exit")
        """
    )
    upload_distinct(server, 3)
    server.wait_for_log("SEEN 3")
    assert "SystemExit: a handler asked to exit" in server.log
    assert server.get("/system").status == 200


OFFLOAD_SCRIPT = """
import os
import time
from orthanc_py import ChangeType, on_change, route, run_in_worker


def die():
    os._exit(1)


@route("/die", offload=True)
def offloaded_die(request):
    die()


@route("/die-inside")
def die_inside(request):
    return run_in_worker(die)


@route("/pid", offload=True)
def pid(request):
    return str(os.getpid())


@route("/sleep")
def sleep(request):
    print("ROUTE-SLEEPS")
    return str(run_in_worker(time.sleep, 120))


@on_change(ChangeType.NEW_INSTANCE)
def sleep_too(change):
    print("HANDLER-SLEEPS")
    run_in_worker(time.sleep, 120)
"""


@pytest.mark.parametrize("path", ["/die", "/die-inside"])
def test_a_dead_worker_fails_its_request_only(make_orthanc, path):
    server = make_orthanc(OFFLOAD_SCRIPT, config={"Python": {"OffloadWorkers": 1}})
    first = wait_answers(server, "/pid", 30)
    answer = server.get(path)
    assert answer.status == 503
    assert "a worker process of the offload pool died" in server.log
    # The pool was replaced: the next offloaded request runs in a new worker.
    second = server.get("/pid")
    assert second.status == 200 and second.text != first
    assert server.get(path).status == 503
    assert server.get("/pid").status == 200


def test_offloaded_work_in_flight_at_stop_is_ended_after_the_grace(make_orthanc):
    grace = 2
    server = make_orthanc(OFFLOAD_SCRIPT, config={"Python": {"OffloadWorkers": 2, "ShutdownGrace": grace}})
    wait_answers(server, "/pid", 30)
    get_in_background(server, "/sleep")
    upload_distinct(server, 1)
    server.wait_for_log("ROUTE-SLEEPS")
    server.wait_for_log("HANDLER-SLEEPS")
    time.sleep(1)
    helpers = descendants(server.process.pid)
    assert helpers, "the forkserver and its workers run below Orthanc"
    started = time.monotonic()
    assert server.stop(timeout=120) == 0
    took = time.monotonic() - started
    assert took < grace + 5, f"Orthanc took {took:.1f} s to stop"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)], "processes of the offload pool outlived Orthanc"
    assert "offloaded work still runs" in server.log


def test_offloaded_work_ends_when_orthanc_is_killed(make_orthanc):
    server = make_orthanc(OFFLOAD_SCRIPT, config={"Python": {"OffloadWorkers": 1}})
    wait_answers(server, "/pid", 30)
    get_in_background(server, "/sleep")
    server.wait_for_log("ROUTE-SLEEPS")
    time.sleep(1)
    helpers = descendants(server.process.pid)
    assert len(helpers) >= 2, "the forkserver and a busy worker run below Orthanc"
    server.process.kill()
    server.wait_exit(timeout=30)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)], "processes of the offload pool outlived a killed Orthanc"


SHORT_LIVED = """
import ctypes
import json
import threading

import orthanc
from orthanc_py import _capi

libc = ctypes.CDLL(None)
libc.pthread_create.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
Routine = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
ENTERED = set()
PARSED = []


def body(argument):
    ENTERED.add(threading.get_native_id())
    # Far deeper than the thread's own 128 KiB stack allows on CPython 3.11 to 3.13.
    PARSED.append(len(json.dumps(json.loads("[" * 900 + "]" * 900))))


# A callback of a thread Python has never seen, as Orthanc's threads call in.
routine = _capi.trampoline(Routine, "a short-lived thread", on_error=None)(body)


def short_lived(output, uri, **request):
    attributes = ctypes.create_string_buffer(128)
    libc.pthread_attr_init(attributes)
    libc.pthread_attr_setstacksize(attributes, ctypes.c_size_t(128 * 1024))
    for _ in range(int(request["get"]["n"])):
        thread = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(thread), attributes, routine, None) == 0
        libc.pthread_join(thread, None)
    libc.pthread_attr_destroy(attributes)
    output.AnswerBuffer(json.dumps({"entered": len(ENTERED), "parsed": len(PARSED)}), "application/json")


api = ctypes.pythonapi
api.PyInterpreterState_Get.restype = ctypes.c_void_p
api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
api.PyThreadState_Next.restype = ctypes.c_void_p
api.PyThreadState_Next.argtypes = [ctypes.c_void_p]


def thread_states(output, uri, **request):
    count, state = 0, api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while state:
        count, state = count + 1, api.PyThreadState_Next(state)
    with open("/proc/self/maps") as maps:
        mappings = sum(1 for _ in maps)
    output.AnswerBuffer(f"{count} {len(threading._active)} {mappings}", "text/plain")


orthanc.RegisterRestCallback("/short-lived", short_lived)
orthanc.RegisterRestCallback("/thread-states", thread_states)
"""


def test_short_lived_threads_leave_no_thread_state_and_no_stack_behind(make_orthanc):
    # Threads Python has never seen, with small stacks, each calling into Python
    # once and ending, as Orthanc's short-lived threads do (archive loaders, in
    # the Orthanc versions that start them per archive).
    server = make_orthanc(SHORT_LIVED)
    assert server.get_json("/short-lived?n=20") == {"entered": 20, "parsed": 20}
    states_before, active_before, maps_before = map(int, server.get("/thread-states").text.split())
    rss_before = rss_kib(server.process.pid)
    assert server.get_json("/short-lived?n=500") == {"entered": 520, "parsed": 520}
    states_after, active_after, maps_after = map(int, server.get("/thread-states").text.split())
    rss_after = rss_kib(server.process.pid)
    assert states_after <= states_before + 2, (states_before, states_after)
    assert active_after <= active_before + 2, (active_before, active_after)
    # Each thread had a stack of the loader's for Python: all of them unmapped.
    assert maps_after <= maps_before + 10, (maps_before, maps_after)
    assert (rss_after - rss_before) / 1024 < 8, f"RSS grew by {(rss_after - rss_before) / 1024:.1f} MiB"
    assert "a short-lived thread" not in server.log, "no callback failed"
    assert server.stop() == 0


def test_the_process_locale_stays_orthancs(make_orthanc):
    env = {key: value for key, value in os.environ.items() if not key.startswith("LC_")}
    env["LANG"] = "C"
    server = make_orthanc(
        """
        import ctypes, os, sys
        from orthanc_py import route

        libc = ctypes.CDLL(None)
        libc.setlocale.restype = ctypes.c_char_p

        @route("/locale")
        def locale(request):
            return {"LC_CTYPE": libc.setlocale(0, None).decode(), "env": os.environ.get("LC_CTYPE"),
                    "encoding": sys.getfilesystemencoding()}
        """,
        env=env,
    )
    answer = server.get_json("/locale")
    # Python neither called setlocale() nor coerced the C locale through the environment.
    assert answer == {"LC_CTYPE": "C", "env": None, "encoding": "utf-8"}


@pytest.mark.parametrize("official_first", [True, False])
def test_two_python_plugins_are_refused_with_a_clear_message(make_orthanc, official_first):
    assert os.path.isfile(OFFICIAL_PLUGIN), "make test installs Debian's orthanc-python"
    server: OrthancServer = make_orthanc("print('loaded')\n", start=False)
    mine = plugin_path()
    server.configuration["Plugins"] = [OFFICIAL_PLUGIN, mine] if official_first else [mine, OFFICIAL_PLUGIN]
    with pytest.raises(OrthancStartError):
        server.start()
    code = server.wait_exit(timeout=60)
    assert code > 0, f"Orthanc must stop with an error, not be killed by a signal ({code})"
    if official_first:
        assert "Python is already running in this Orthanc (another Python plugin" in server.log
    else:
        assert 'another Python plugin is listed in "Plugins"' in server.log
        assert OFFICIAL_PLUGIN in server.log

