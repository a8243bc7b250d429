# SPDX-License-Identifier: GPL-3.0-or-later
"""Soak scenarios: what a PACS running for months needs (memory that stays flat, no lost event, clean stops).

Each scenario starts a real Orthanc with orthanc_py and a script of its own,
on loopback, drives it, and reports every figure it measured:

- ``requests``: 1,000,000 requests to a Python route (``wrk``, 8 connections) after
  a warm-up; Orthanc's resident memory (VmRSS) after the warm-up and every tenth
  of the run; target: growth < 10 MB, no failed request.
- ``rest-calls``: 100,000 ``rest.get("/system")`` calls made inside a handler (a
  route looping 500 times a request); target: growth < 10 MB.
- ``stored``: 100,000 ``@on_stored_instance`` calls (small instances uploaded by two
  threads, each study deleted once its 1,000 instances are in); target: growth
  < 10 MB, one call per instance, no failed upload.
- ``dicom-buffers``: 10,000 ``orthanc.GetDicomForInstance`` calls on a ~10 MB
  instance (2048x2560, 16 bits), 10 a request; target: growth < 2 instances' size
  (a buffer never freed, even one in 5,000 calls, exceeds it).
- ``mixed``: 2 minutes of ``wrk`` with 64 connections on three Python routes (text,
  JSON, one calling the REST API), while a thread uploads distinct instances and
  the script records every change (``@on_change``) and stored instance
  (``@on_stored_instance``); target: no failed request or upload, every upload in
  ``/instances``, ``NEW_INSTANCE`` and the stored-instance call once per upload
  and in upload order.
- ``mixed-cluster``: the ``mixed`` load on two nodes sharing one PostgreSQL, behind
  nginx (wrk and the uploads go through nginx, so each study's instances arrive
  through both nodes), with a ``once_per_cluster`` ``STABLE_STUDY`` handler;
  target: no failed request or upload, ``NEW_INSTANCE`` and the stored-instance
  call once per upload in the whole cluster (in upload order on each node), each
  study handled once in the cluster.
- ``cycles``: 100 start/stop cycles of a script with a timer thread, an offloaded
  route (called once a cycle) and four slow requests in flight at SIGTERM;
  target: every exit code 0, no core file, no hang (a stop bounded by 60 s), no
  Python traceback in the log.

``--scale`` multiplies every count and duration (``--scale 0.01`` for a quick
run); ``--only`` picks scenarios. The tests (``tests/test_soak.py``) call the
same ``run_*`` functions with small numbers. The exit code is 1 when a target is
missed.

Usage: ``.venv/bin/python bench/soak.py [--only requests --only mixed] [--scale 1.0] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orthanc_py.server import OrthancServer

REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024

# --- the scripts Orthanc runs -----------------------------------------------------

# Every script serves the Python heap's figures, to tell a Python leak from a C one.
COMMON = '''
import gc, sys, threading
from orthanc_py import route

@route("/soak/pystats")
def pystats(request):
    return {"objects": len(gc.get_objects()), "blocks": sys.getallocatedblocks(),
            "threads": threading.active_count()}
'''

REQUESTS_SCRIPT = COMMON + '''
@route("/soak/item/<int:item>")
def item(request, item):
    return {"item": item, "x": request.args.get("x"), "agent": request.headers.get("User-Agent") is not None}
'''

REST_SCRIPT = COMMON + '''
from orthanc_py import rest

@route("/soak/rest")
def calls(request):
    n = int(request.args.get("n", "1"))
    size = 0
    for _ in range(n):
        size += len(rest.get("/system"))
    return {"calls": n, "bytes": size}
'''

STORED_SCRIPT = COMMON + '''
from orthanc_py import on_stored_instance

_lock = threading.Lock()
_count = 0
_bad = 0

@on_stored_instance
def stored(instance):
    global _count, _bad
    uid = instance.simplified_json.get("SOPInstanceUID")
    with _lock:
        _count += 1
        if not uid or len(instance.id) != 44:
            _bad += 1

@route("/soak/stored")
def stored_count(request):
    return {"count": _count, "bad": _bad}
'''

DICOM_SCRIPT = COMMON + '''
import orthanc

@route("/soak/dicom/<instance_id>")
def dicom(request, instance_id):
    n = int(request.args.get("n", "1"))
    sizes = set()
    for _ in range(n):
        sizes.add(len(orthanc.GetDicomForInstance(instance_id)))
    return {"calls": n, "sizes": sorted(sizes)}
'''

MIXED_SCRIPT = COMMON + '''
from orthanc_py import on_change, on_stored_instance, rest

_changes = []  # [change type, resource id], in the order delivered
_stored = []   # instance ids, in the order stored

@on_change
def changed(change):
    _changes.append([change.change_type.name, change.resource_id])

@on_stored_instance
def stored(instance):
    _stored.append(instance.id)

@route("/soak/hello")
def hello(request):
    return "hello"

@route("/soak/item/<int:item>")
def item(request, item):
    return {"item": item, "x": request.args.get("x")}

@route("/soak/rest")
def calls_rest(request):
    system = rest.get_json("/system")
    changes = rest.get_json("/changes?limit=5")
    return {"name": system["Name"], "last": changes["Last"]}

@route("/soak/events")
def events(request):
    return {"changes": list(_changes), "stored": list(_stored)}
'''

CLUSTER_SCRIPT = MIXED_SCRIPT + '''
from orthanc_py import ChangeType

_stable = []  # studies this node handled, once_per_cluster

@on_change(ChangeType.STABLE_STUDY, once_per_cluster=True)
def stable(change):
    _stable.append(change.resource_id)

@route("/soak/stable")
def stable_list(request):
    return {"stable": list(_stable)}
'''

CYCLES_SCRIPT = COMMON + '''
import os, time
from orthanc_py import on_shutdown

_stop = threading.Event()
_ticks = 0

def _tick():
    global _ticks
    while not _stop.wait(0.05):
        _ticks += 1

if __name__ == "__main__":  # not again in the offload workers, which import this script
    threading.Thread(target=_tick, name="soak-timer").start()

@on_shutdown
def _end():
    _stop.set()

@route("/soak/offload", offload=True)
def offloaded(request):
    return {"pid": os.getpid(), "sum": sum(range(100000))}

@route("/soak/slow")
def slow(request):
    time.sleep(float(request.args.get("s", "1")))
    return "slow done"

@route("/soak/ticks")
def ticks(request):
    return {"ticks": _ticks}
'''

# --- measuring ------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` (VmRSS), in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def pid_of(server: OrthancServer) -> int:
    assert server.process is not None, "start the server first"
    return server.process.pid


def sample(server: OrthancServer, client: Client | None = None) -> dict[str, float]:
    """Orthanc's resident memory, then the Python heap's figures."""
    memory = rss_mb(pid_of(server))
    stats = (client or Client(server)).get_json("/soak/pystats")
    return {"rss_mb": round(memory, 2), "objects": stats["objects"], "blocks": stats["blocks"],
            "threads": stats["threads"]}


class Client:
    """One keep-alive HTTP connection to Orthanc (reopened when idle, as Orthanc closes it after 1 s)."""

    def __init__(self, server: OrthancServer, timeout: float = 300.0) -> None:
        self.port = server.http_port
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None
        self.last = 0.0

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.connection is None or time.monotonic() - self.last > 0.5:
            self.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.connection.request(method, path, body=body, headers=headers or {})
            answer = self.connection.getresponse()
            data = answer.read()
        except Exception:
            self.close()
            raise
        self.last = time.monotonic()
        if answer.will_close:
            self.close()
        return answer.status, data

    def get_json(self, path: str) -> Any:
        status, data = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {data[:300]!r}")
        return json.loads(data)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


WRK_LUA = '''
paths = {%(paths)s}
limit = 0
count = 0
index = 0

function setup(thread)
  thread:set("limit", %(per_thread)d)
end

request = function()
  index = index %% #paths + 1
  return wrk.format(nil, paths[index])
end

%(response)s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('SOAK_WRK {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(99.0), latency.max))
end
'''

COUNT_RESPONSES = '''
response = function(status, headers, body)
  count = count + 1
  if limit > 0 and count == limit then
    io.stdout:write("SOAK_THREAD_DONE\\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end
'''


def wrk(server: OrthancServer, paths: list[str], workdir: Path, connections: int = 8, threads: int = 2,
        requests: int = 0, seconds: float = 0, timeout: float = 30) -> dict[str, Any]:
    """Runs ``wrk`` on ``paths`` in turn until ``requests`` answers (or for ``seconds``).

    wrk has no request count: each of its threads stops itself after its share
    of ``requests`` and says so, then wrk is interrupted (SIGINT), which makes
    it print its summary at once. A run is bounded in time all the same.

    :returns: wrk's summary: ``requests``, ``failed`` (the sum of the socket
        errors and the answers >= 400), each error count, latencies.
    """
    if requests:
        threads = max(1, min(threads, connections))
        per_thread = -(-requests // threads)
        duration = 3600
        bound = 300 + requests / 500  # at 500 requests/s, something is wrong
    else:
        per_thread, duration = 0, max(1, round(seconds))
        bound = duration + 120
    script = workdir / f"wrk-{threading.get_ident()}-{time.monotonic_ns()}.lua"
    script.write_text(WRK_LUA % {
        "paths": ", ".join(json.dumps(p) for p in paths),
        "per_thread": per_thread,
        "response": COUNT_RESPONSES if requests else "",
    })
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", f"{timeout:g}s",
               "-s", str(script), server.url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(bound, process.send_signal, (signal.SIGINT,))
    watchdog.start()
    lines = []
    done = 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("SOAK_THREAD_DONE"):
                done += 1
                if done == threads:
                    process.send_signal(signal.SIGINT)
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        script.unlink()
    output = "".join(lines)
    match = re.search(r"^SOAK_WRK (\{.*\})$", output, re.M)
    if match is None or process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{output}")
    summary: dict[str, Any] = json.loads(match.group(1))
    summary["failed"] = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    if requests and done < threads:
        summary["failed"] += 1  # the watchdog stopped it: count it, the caller sees why
        summary["stopped_by_watchdog"] = True
    return summary


def start(workdir: Path, name: str, script: str, config: dict[str, Any] | None = None) -> OrthancServer:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak_script.py").write_text(script)
    server = OrthancServer(str(folder / "orthanc"), script=str(folder / "soak_script.py"), config=config)
    server.start()
    return server


# --- DICOM files ------------------------------------------------------------------------


def _make_dicom(**kwargs: Any) -> bytes:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.dicom import make_dicom

    return make_dicom(**kwargs)


class InstanceMaker:
    """Distinct small instances, fast: one template per study, the SOPInstanceUID patched in place."""

    def __init__(self) -> None:
        self.root = f"1.2.826.0.1.3680043.8.498.{random.randint(10 ** 9, 10 ** 10 - 1)}"
        self.placeholder = f"{self.root}.1{'9' * 11}".encode("ascii")
        self._lock = threading.Lock()
        self._next = 0

    def study(self, patient_id: str = "SOAK") -> Callable[[], bytes]:
        """A function that returns a new instance of one new study (one series) at each call."""
        template = _make_dicom(sop_uid=self.placeholder.decode(), patient_id=patient_id)
        assert template.count(self.placeholder) == 2, "the SOPInstanceUID is in the meta header and the dataset"

        def instance() -> bytes:
            with self._lock:
                number = self._next
                self._next += 1
            return template.replace(self.placeholder, f"{self.root}.1{number:011d}".encode("ascii"))

        return instance


def make_large_dicom(rows: int, cols: int) -> bytes:
    """One instance of ``rows`` x ``cols`` 16-bit pixels (a pattern, made fast)."""
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(_make_dicom(rows=2, cols=2)))
    dataset.Rows, dataset.Columns = rows, cols
    line = b"".join(((c * 4000) // max(cols - 1, 1)).to_bytes(2, "little") for c in range(cols))
    dataset.PixelData = line * rows
    out = io.BytesIO()
    try:
        dataset.save_as(out, enforce_file_format=True)
    except TypeError:  # pragma: no cover - pydicom 2
        dataset.save_as(out, write_like_original=False)
    return out.getvalue()


# --- results ------------------------------------------------------------------------------


@dataclass
class Check:
    figure: str
    value: str
    target: str
    passed: bool


@dataclass
class Outcome:
    """What a scenario measured (``figures``) and how it compares with its targets (``checks``)."""

    scenario: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def check(self, figure: str, value: str, target: str, passed: bool) -> None:
        self.checks.append(Check(figure, value, target, bool(passed)))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def growth_mb(self) -> float:
        samples = self.figures["samples"]
        return round(float(samples[-1]["rss_mb"] - samples[0]["rss_mb"]), 2)


def memory_series(server: OrthancServer, warmup: Callable[[], None], step: Callable[[], None], steps: int,
                  log: Callable[[str], None]) -> list[dict[str, float]]:
    """Runs ``warmup``, then ``step`` ``steps`` times, sampling the memory after each."""
    warmup()
    samples = [sample(server)]
    log(f"  after warm-up: {samples[0]}")
    for number in range(1, steps + 1):
        step()
        samples.append(sample(server))
        log(f"  step {number}/{steps}: {samples[-1]}")
    return samples


def _memory_figures(outcome: Outcome, samples: list[dict[str, float]], target_mb: float) -> None:
    outcome.figures["samples"] = samples
    outcome.figures["rss_after_warmup_mb"] = samples[0]["rss_mb"]
    outcome.figures["rss_end_mb"] = samples[-1]["rss_mb"]
    outcome.figures["rss_max_mb"] = max(s["rss_mb"] for s in samples)
    outcome.figures["rss_growth_mb"] = growth = outcome.growth_mb()
    half = samples[len(samples) // 2]
    outcome.figures["rss_growth_second_half_mb"] = round(samples[-1]["rss_mb"] - half["rss_mb"], 2)
    outcome.figures["python_objects_growth"] = samples[-1]["objects"] - samples[0]["objects"]
    outcome.figures["python_blocks_growth"] = samples[-1]["blocks"] - samples[0]["blocks"]
    outcome.check("RSS growth", f"{growth:+.1f} MB", f"< {target_mb:g} MB", growth < target_mb)


def _quiet(_: str) -> None:
    pass


def _split(total: int, steps: int) -> list[int]:
    return [total // steps + (1 if i < total % steps else 0) for i in range(steps)]


# --- scenarios ------------------------------------------------------------------------------


def run_requests(workdir: Path, requests: int = 1_000_000, warmup: int = 100_000, steps: int = 10,
                 connections: int = 8, target_mb: float = 10, log: Callable[[str], None] = _quiet) -> Outcome:
    """``requests`` requests to a Python route (path parameter, query, headers, JSON answer) with wrk."""
    outcome = Outcome("requests")
    server = start(workdir, "requests", REQUESTS_SCRIPT)
    totals = {"requests": 0, "failed": 0, "seconds": 0.0}

    def drive(count: int, counted: bool) -> None:
        summary = wrk(server, ["/soak/item/42?x=y"], workdir, connections=connections, requests=count)
        if summary["failed"]:
            log(f"  wrk failures: {summary}")
        if counted:
            totals["requests"] += summary["requests"]
            totals["seconds"] += summary["duration_us"] / 1e6
        totals["failed"] += summary["failed"]

    try:
        log(f"requests: {requests:,} requests (warm-up {warmup:,}), wrk -c{connections}")
        chunks = iter(_split(requests, steps))
        samples = memory_series(server, lambda: drive(warmup, False), lambda: drive(next(chunks), True), steps, log)
    finally:
        outcome.figures["exit_code"] = server.stop()
    _memory_figures(outcome, samples, target_mb)
    outcome.figures.update(requests=totals["requests"], failed=totals["failed"],
                           requests_per_s=round(totals["requests"] / max(totals["seconds"], 1e-9)))
    outcome.check("failed requests", str(totals["failed"]), "0", totals["failed"] == 0)
    return outcome


def run_rest_calls(workdir: Path, calls: int = 100_000, per_request: int = 500, warmup: int = 10_000,
                   steps: int = 10, target_mb: float = 10, log: Callable[[str], None] = _quiet) -> Outcome:
    """``calls`` calls of ``rest.get("/system")`` from inside a route, ``per_request`` a request."""
    outcome = Outcome("rest-calls")
    server = start(workdir, "rest-calls", REST_SCRIPT)
    client = Client(server)
    totals = {"calls": 0, "failed": 0, "seconds": 0.0}

    def drive(count: int, counted: bool) -> None:
        started = time.monotonic()
        for n in _split(count, max(1, -(-count // per_request))):
            status, body = client.request("GET", f"/soak/rest?n={n}")
            if status != 200 or json.loads(body)["calls"] != n:
                totals["failed"] += 1
                log(f"  failed: {status} {body[:200]!r}")
            elif counted:
                totals["calls"] += n
        if counted:
            totals["seconds"] += time.monotonic() - started

    try:
        log(f"rest-calls: {calls:,} rest.get('/system') calls, {per_request} a request (warm-up {warmup:,})")
        chunks = iter(_split(calls, steps))
        samples = memory_series(server, lambda: drive(warmup, False), lambda: drive(next(chunks), True), steps, log)
    finally:
        client.close()
        outcome.figures["exit_code"] = server.stop()
    _memory_figures(outcome, samples, target_mb)
    outcome.figures.update(calls=totals["calls"], failed_requests=totals["failed"],
                           calls_per_s=round(totals["calls"] / max(totals["seconds"], 1e-9)))
    outcome.check("failed requests", str(totals["failed"]), "0", totals["failed"] == 0)
    return outcome


def run_stored(workdir: Path, instances: int = 100_000, warmup: int = 5_000, batch: int = 1_000,
               uploaders: int = 2, steps: int = 10, target_mb: float = 10,
               log: Callable[[str], None] = _quiet) -> Outcome:
    """``instances`` uploads, each one ``@on_stored_instance`` call; each study deleted once complete."""
    outcome = Outcome("stored")
    server = start(workdir, "stored", STORED_SCRIPT)
    maker = InstanceMaker()
    totals = {"uploaded": 0, "failed": 0, "deleted_studies": 0, "seconds": 0.0}
    lock = threading.Lock()

    def upload_batches(sizes: list[int]) -> None:
        client = Client(server)
        try:
            while True:
                with lock:
                    if not sizes:
                        return
                    size = sizes.pop()
                new_instance = maker.study()
                study = None
                for _ in range(size):
                    try:
                        status, body = client.request("POST", "/instances", new_instance())
                        answer = json.loads(body) if status == 200 else {}
                    except Exception as error:  # counted: a PACS must not drop a connection
                        status, answer = 0, {"error": repr(error)}
                    if status != 200 or answer.get("Status") != "Success":
                        with lock:
                            totals["failed"] += 1
                        log(f"  upload failed: {status} {answer}")
                        continue
                    study = answer["ParentStudy"]
                    with lock:
                        totals["uploaded"] += 1
                if study is not None:
                    status, body = client.request("DELETE", f"/studies/{study}")
                    with lock:
                        if status == 200:
                            totals["deleted_studies"] += 1
                        else:
                            totals["failed"] += 1
        finally:
            client.close()

    def drive(count: int, counted: bool) -> None:
        started = time.monotonic()
        sizes = _split(count, max(1, -(-count // batch)))
        workers = [threading.Thread(target=upload_batches, args=(sizes,)) for _ in range(uploaders)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if counted:
            totals["seconds"] += time.monotonic() - started

    try:
        log(
            f"stored: {instances:,} uploads (warm-up {warmup:,}), {uploaders} threads, "
            f"studies of {batch:,} deleted when complete"
        )
        drive(warmup, False)
        warm_uploaded = totals["uploaded"]
        chunks = iter(_split(instances, steps))
        samples = memory_series(server, lambda: None, lambda: drive(next(chunks), True), steps, log)
        client = Client(server)
        calls = client.get_json("/soak/stored")
        left = len(client.get_json("/instances"))
        client.close()
    finally:
        outcome.figures["exit_code"] = server.stop()
    _memory_figures(outcome, samples, target_mb)
    uploaded = totals["uploaded"] - warm_uploaded
    outcome.figures.update(uploaded=uploaded, uploaded_with_warmup=totals["uploaded"],
                           stored_calls=calls["count"], bad_calls=calls["bad"], failed=totals["failed"],
                           deleted_studies=totals["deleted_studies"], instances_left=left,
                           uploads_per_s=round(uploaded / max(totals["seconds"], 1e-9)))
    outcome.check("failed uploads/deletes", str(totals["failed"]), "0", totals["failed"] == 0)
    outcome.check("on_stored_instance calls", f"{calls['count']:,} for {totals['uploaded']:,} uploads",
                  "one per upload", calls["count"] == totals["uploaded"] and calls["bad"] == 0)
    return outcome


def run_dicom_buffers(workdir: Path, calls: int = 10_000, rows: int = 2048, cols: int = 2560,
                      per_request: int = 10, warmup: int = 500, steps: int = 10, target_mb: float | None = None,
                      log: Callable[[str], None] = _quiet) -> Outcome:
    """``calls`` ``orthanc.GetDicomForInstance`` calls on one instance of ``rows`` x ``cols`` 16-bit pixels."""
    outcome = Outcome("dicom-buffers")
    data = make_large_dicom(rows, cols)
    size = len(data)
    server = start(workdir, "dicom-buffers", DICOM_SCRIPT)
    client = Client(server)
    totals = {"calls": 0, "failed": 0, "seconds": 0.0}
    try:
        instance = server.upload(data)["ID"]

        def drive(count: int, counted: bool) -> None:
            started = time.monotonic()
            for n in _split(count, max(1, -(-count // per_request))):
                status, body = client.request("GET", f"/soak/dicom/{instance}?n={n}")
                if status != 200 or json.loads(body) != {"calls": n, "sizes": [size]}:
                    totals["failed"] += 1
                    log(f"  failed: {status} {body[:200]!r}")
                elif counted:
                    totals["calls"] += n
            if counted:
                totals["seconds"] += time.monotonic() - started

        log(f"dicom-buffers: {calls:,} GetDicomForInstance calls on {size / MB:.1f} MB, {per_request} a request "
            f"(warm-up {warmup:,})")
        chunks = iter(_split(calls, steps))
        samples = memory_series(server, lambda: drive(warmup, False), lambda: drive(next(chunks), True), steps, log)
    finally:
        client.close()
        outcome.figures["exit_code"] = server.stop()
    limit = target_mb if target_mb is not None else round(2 * size / MB, 1)
    _memory_figures(outcome, samples, limit)
    outcome.figures.update(instance_mb=round(size / MB, 2), calls=totals["calls"], failed_requests=totals["failed"],
                           copied_gb=round(totals["calls"] * size / 1024 ** 3, 1),
                           calls_per_s=round(totals["calls"] / max(totals["seconds"], 1e-9), 1))
    outcome.check("failed requests", str(totals["failed"]), "0", totals["failed"] == 0)
    return outcome


def upload_studies(client: Client, maker: InstanceMaker, study_size: int, stop: threading.Event,
                   uploaded: list[str], errors: list[str], studies: set[str] | None = None) -> None:
    """Uploads studies of ``study_size`` instances until ``stop`` is set; records each ID or error, then closes."""
    try:
        while not stop.is_set():
            new_instance = maker.study()
            for _ in range(study_size):
                if stop.is_set():
                    return
                try:
                    status, body = client.request("POST", "/instances", new_instance())
                    answer = json.loads(body) if status == 200 else {"body": body[:200].decode("utf-8", "replace")}
                except Exception as error:
                    status, answer = 0, {"error": repr(error)}
                if status != 200 or answer.get("Status") != "Success":
                    errors.append(f"{status} {answer}")
                else:
                    uploaded.append(answer["ID"])
                    if studies is not None:
                        studies.add(answer["ParentStudy"])
    finally:
        client.close()


def run_mixed(workdir: Path, seconds: float = 120, connections: int = 64, study_size: int = 100,
              log: Callable[[str], None] = _quiet) -> Outcome:
    """wrk on Python routes, one thread uploading, change and stored-instance handlers recording all."""
    outcome = Outcome("mixed")
    # Orthanc keeps a thread per keep-alive connection: 64 wrk connections and
    # the uploader need more than the default 50.
    server = start(workdir, "mixed", MIXED_SCRIPT, config={"HttpThreadsCount": connections + 16})
    maker = InstanceMaker()
    uploaded: list[str] = []
    upload_errors: list[str] = []
    stop = threading.Event()

    def upload() -> None:
        upload_studies(Client(server), maker, study_size, stop, uploaded, upload_errors)

    try:
        log(f"mixed: {seconds:g} s of wrk -c{connections} on 3 Python routes, uploads, change handlers")
        before = sample(server)
        uploader = threading.Thread(target=upload, name="uploader")
        started = time.monotonic()
        uploader.start()
        try:
            summary = wrk(server, ["/soak/hello", "/soak/item/7?x=y", "/soak/rest"], workdir,
                          connections=connections, seconds=seconds)
        finally:
            stop.set()
            uploader.join()
        elapsed = time.monotonic() - started
        after = sample(server)
        client = Client(server)
        stored = set(client.get_json("/instances"))

        def delivered() -> dict[str, Any] | None:
            events = client.get_json("/soak/events")
            news = [i for t, i in events["changes"] if t == "NEW_INSTANCE"]
            return events if len(news) >= len(uploaded) and len(events["stored"]) >= len(uploaded) else None

        deadline = time.monotonic() + 60
        while (events := delivered()) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        if events is None:
            events = client.get_json("/soak/events")
        client.close()
    finally:
        outcome.figures["exit_code"] = server.stop()
    news = [i for t, i in events["changes"] if t == "NEW_INSTANCE"]
    stored_calls = events["stored"]
    outcome.figures.update(
        wrk_requests=summary["requests"],
        wrk_requests_per_s=round(summary["requests"] / (summary["duration_us"] / 1e6)),
        wrk_failed=summary["failed"],
        wrk_errors={k: summary[k] for k in ("connect", "read", "write", "status", "timeout")},
        wrk_p99_ms=round(summary["p99_us"] / 1000, 1),
        wrk_max_ms=round(summary["max_us"] / 1000, 1),
        uploaded=len(uploaded),
        upload_errors=len(upload_errors),
        uploads_per_s=round(len(uploaded) / elapsed, 1),
        instances_stored=len(stored),
        missing=len(set(uploaded) - stored),
        unexpected=len(stored - set(uploaded)),
        new_instance_events=len(news),
        stored_calls=len(stored_calls),
        rss_before_mb=before["rss_mb"],
        rss_after_mb=after["rss_mb"],
        change_counts=_counts(t for t, _ in events["changes"]),
    )
    outcome.figures.update({f"new_instance_{k}": v for k, v in _sequence_report(uploaded, news).items()})
    outcome.figures.update({f"stored_call_{k}": v for k, v in _sequence_report(uploaded, stored_calls).items()})
    # A resource is new once; NEW_CHILD_INSTANCE repeats its parent's id by design.
    unique_kinds = ("NEW_PATIENT", "NEW_STUDY", "NEW_SERIES", "NEW_INSTANCE", "ORTHANC_STARTED")
    duplicated = [pair for pair, n in _counts(tuple(c) for c in events["changes"] if c[0] in unique_kinds).items()
                  if n > 1]
    outcome.figures["duplicated_changes"] = len(duplicated)
    if upload_errors:
        outcome.figures["first_upload_errors"] = upload_errors[:5]
    failed = summary["failed"] + len(upload_errors)
    outcome.check("failed requests + uploads", f"{summary['failed']} + {len(upload_errors)}", "0", failed == 0)
    outcome.check("uploads in /instances", f"{len(uploaded) - outcome.figures['missing']:,}/{len(uploaded):,}",
                  "all", outcome.figures["missing"] == 0 and outcome.figures["unexpected"] == 0)
    outcome.check("NEW_INSTANCE once, in order", _sequence_summary(uploaded, news), "exactly once, in order",
                  news == uploaded)
    outcome.check("stored-instance call once, in order", _sequence_summary(uploaded, stored_calls),
                  "exactly once, in order", stored_calls == uploaded)
    outcome.check("NEW_PATIENT/STUDY/SERIES repeated", str(len(duplicated)), "0", not duplicated)
    return outcome


def _counts(items: Any) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _sequence_report(expected: list[str], got: list[str]) -> dict[str, Any]:
    """How ``got`` differs from ``expected``: lost, duplicated, unknown, first position out of order."""
    counts = _counts(got)
    wanted = set(expected)
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)
    return {
        "lost": sum(1 for i in expected if i not in counts),
        "duplicated": sum(n - 1 for i, n in counts.items() if n > 1),
        "unknown": sum(1 for i in got if i not in wanted),
        "first_out_of_order": first,
    }


def _sequence_summary(expected: list[str], got: list[str]) -> str:
    if got == expected:
        return f"{len(got):,}/{len(expected):,}"
    report = _sequence_report(expected, got)
    return (f"{len(got):,}/{len(expected):,}: lost {report['lost']}, duplicated {report['duplicated']}, "
            f"unknown {report['unknown']}, first difference at {report['first_out_of_order']}")


class Endpoint:
    """Where ``wrk`` and :class:`Client` send requests: a node, or the balancer in front of several."""

    def __init__(self, url: str, http_port: int) -> None:
        self.url = url
        self.http_port = http_port


def run_mixed_cluster(workdir: Path, seconds: float = 120, connections: int = 64, study_size: int = 20,
                      nodes: int = 2, stable_age: int = 2, log: Callable[[str], None] = _quiet) -> Outcome:
    """The ``mixed`` load through nginx on ``nodes`` nodes sharing one PostgreSQL; studies handled once."""
    from orthanc_py.cluster_server import OrthancCluster

    outcome = Outcome("mixed-cluster")
    folder = workdir / "mixed-cluster"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak_script.py").write_text(CLUSTER_SCRIPT)
    cluster = OrthancCluster(str(folder / "nodes"), nodes=nodes, script=str(folder / "soak_script.py"),
                             config={"HttpThreadsCount": connections + 16, "StableAge": stable_age})
    maker = InstanceMaker()
    uploaded: list[str] = []
    studies: set[str] = set()
    upload_errors: list[str] = []
    stop = threading.Event()
    try:
        cluster.start()
        assert cluster.balancer is not None
        front = Endpoint(cluster.url, cluster.balancer.port)

        def upload() -> None:
            upload_studies(Client(front), maker, study_size, stop, uploaded, upload_errors, studies)  # type: ignore[arg-type]

        log(f"mixed-cluster: {seconds:g} s of wrk -c{connections} through nginx on {nodes} nodes, uploads, "
            "change handlers, a once_per_cluster STABLE_STUDY handler")
        uploader = threading.Thread(target=upload, name="uploader")
        started = time.monotonic()
        uploader.start()
        try:
            summary = wrk(front, ["/soak/hello", "/soak/item/7?x=y", "/soak/rest"], workdir,  # type: ignore[arg-type]
                          connections=connections, seconds=seconds)
        finally:
            stop.set()
            uploader.join()
        elapsed = time.monotonic() - started
        clients = [Client(node) for node in cluster.nodes]
        stored = set(clients[0].get_json("/instances"))

        def collect() -> tuple[list[dict[str, Any]], list[list[str]]]:
            events = [client.get_json("/soak/events") for client in clients]
            return events, [client.get_json("/soak/stable")["stable"] for client in clients]

        # Both nodes fire STABLE_STUDY once StableAge has passed: wait for every study, then as long again.
        deadline = time.monotonic() + 60 + 4 * stable_age
        while True:
            events, stable_by_node = collect()
            news = [i for e in events for t, i in e["changes"] if t == "NEW_INSTANCE"]
            done = len(news) >= len(uploaded) and studies <= {s for node in stable_by_node for s in node}
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(2 * stable_age + 1)
        events, stable_by_node = collect()
        for client in clients:
            client.close()
    finally:
        codes = []
        for node in cluster.nodes:
            try:
                codes.append(node.stop())
            except Exception:
                codes.append(-1)
        cluster.stop()
        outcome.figures["exit_codes"] = codes
    order = {instance: number for number, instance in enumerate(uploaded)}
    news_by_node = [[i for t, i in e["changes"] if t == "NEW_INSTANCE"] for e in events]
    stored_by_node = [e["stored"] for e in events]
    news = [i for node in news_by_node for i in node]
    stored_calls = [i for node in stored_by_node for i in node]

    def in_order(sequence: list[str]) -> bool:
        positions = [order.get(i, -1) for i in sequence]
        return positions == sorted(positions)

    stable_counts = _counts(s for node in stable_by_node for s in node if s in studies)
    outcome.figures.update(
        nodes=nodes, wrk_requests=summary["requests"],
        wrk_requests_per_s=round(summary["requests"] / (summary["duration_us"] / 1e6)),
        wrk_failed=summary["failed"],
        wrk_errors={k: summary[k] for k in ("connect", "read", "write", "status", "timeout")},
        wrk_p99_ms=round(summary["p99_us"] / 1000, 1),
        uploaded=len(uploaded), upload_errors=len(upload_errors), uploads_per_s=round(len(uploaded) / elapsed, 1),
        studies=len(studies), instances_stored=len(stored & set(uploaded)), missing=len(set(uploaded) - stored),
        new_instance_events=len(news), new_instance_by_node=[len(n) for n in news_by_node],
        stored_calls=len(stored_calls), studies_handled=len(stable_counts),
        studies_handled_twice=sum(1 for n in stable_counts.values() if n > 1),
        studies_handled_by_node=[len(set(node) & studies) for node in stable_by_node],
    )
    if upload_errors:
        outcome.figures["first_upload_errors"] = upload_errors[:5]
    failed = summary["failed"] + len(upload_errors)
    outcome.check("failed requests + uploads", f"{summary['failed']} + {len(upload_errors)}", "0", failed == 0)
    outcome.check("uploads in the database", f"{len(uploaded) - outcome.figures['missing']:,}/{len(uploaded):,}",
                  "all", outcome.figures["missing"] == 0)
    outcome.check("NEW_INSTANCE once in the cluster", _sequence_summary(sorted(uploaded), sorted(news)),
                  "exactly once, in order on each node",
                  sorted(news) == sorted(uploaded) and all(in_order(n) for n in news_by_node))
    outcome.check("stored-instance call once in the cluster", _sequence_summary(sorted(uploaded), sorted(stored_calls)),
                  "exactly once, in order on each node",
                  sorted(stored_calls) == sorted(uploaded) and all(in_order(n) for n in stored_by_node))
    outcome.check("STABLE_STUDY handled once in the cluster",
                  f"{len(stable_counts)}/{len(studies)}, twice: {outcome.figures['studies_handled_twice']}",
                  "every study once", set(stable_counts) == studies and outcome.figures["studies_handled_twice"] == 0)
    return outcome


def run_cycles(workdir: Path, cycles: int = 100, slow_requests: int = 4, slow_seconds: float = 1.0,
               stop_timeout: float = 60, log: Callable[[str], None] = _quiet) -> Outcome:
    """Start/stop cycles with a timer thread, an offloaded route, slow requests in flight at SIGTERM."""
    outcome = Outcome("cycles")
    folder = workdir / "cycles"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak_script.py").write_text(CYCLES_SCRIPT)
    server = OrthancServer(str(folder / "orthanc"), script=str(folder / "soak_script.py"),
                           config={"Python": {"OffloadWorkers": 1}})
    codes: dict[int, int] = {}
    hangs = offload_failures = start_failures = 0
    slow_answered = slow_failed = 0
    stop_times: list[float] = []
    # Let Orthanc write a core file (core_pattern permitting) when it crashes.
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    log(f"cycles: {cycles} start/stop cycles, {slow_requests} requests of {slow_seconds:g} s in flight at SIGTERM")
    try:
        for cycle in range(cycles):
            try:
                server.start()
            except Exception as error:
                start_failures += 1
                log(f"  cycle {cycle}: start failed: {error}")
                _stop_quietly(server)
                continue
            status, body = Client(server, timeout=120).request("GET", "/soak/offload")
            if status != 200 or json.loads(body).get("sum") != sum(range(100000)):
                offload_failures += 1
                log(f"  cycle {cycle}: offload answered {status} {body[:200]!r}")
            results: list[bool] = []

            def slow(results: list[bool] = results) -> None:
                try:
                    answer = server.get(f"/soak/slow?s={slow_seconds}", timeout=stop_timeout + 30)
                    results.append(answer.status == 200)
                except Exception:
                    results.append(False)

            clients = [threading.Thread(target=slow) for _ in range(slow_requests)]
            for client in clients:
                client.start()
            time.sleep(min(0.3, slow_seconds / 3))  # the requests reach the handler
            started = time.monotonic()
            try:
                code = server.stop(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                hangs += 1
                code = server.process.returncode if server.process else -9
                log(f"  cycle {cycle}: no exit within {stop_timeout:g} s: killed")
            stop_times.append(time.monotonic() - started)
            for client in clients:
                client.join()
            slow_answered += sum(results)
            slow_failed += len(results) - sum(results)
            codes[code] = codes.get(code, 0) + 1
            if code != 0:
                log(f"  cycle {cycle}: exit code {code}")
            if (cycle + 1) % 10 == 0:
                log(f"  {cycle + 1} cycles, exit codes {codes}, stop {max(stop_times):.1f} s at most")
    finally:
        _stop_quietly(server)
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    cores = [str(p) for p in Path(server.workdir).rglob("core*") if p.is_file()]
    text = server.log
    tracebacks = text.count("Traceback")
    if tracebacks:
        outcome.figures["first_traceback"] = _first_traceback(text)
    outcome.figures.update(
        cycles=cycles,
        exit_codes={str(k): v for k, v in sorted(codes.items())},
        hangs=hangs,
        start_failures=start_failures,
        core_files=cores,
        offload_failures=offload_failures,
        slow_answered=slow_answered,
        slow_failed=slow_failed,
        stop_s_mean=round(sum(stop_times) / max(len(stop_times), 1), 2),
        stop_s_max=round(max(stop_times, default=0), 2),
        orthanc_has_stopped_lines=text.count("Orthanc has stopped"),
        python_tracebacks=tracebacks,
        thread_still_runs_warnings=text.count("still runs"),
    )
    nonzero = sum(n for c, n in codes.items() if c != 0) + start_failures
    outcome.check("exit codes 0", f"{codes.get(0, 0)}/{cycles}", f"{cycles}/{cycles}", nonzero == 0)
    outcome.check(f"hangs (stop > {stop_timeout:g} s)", str(hangs), "0", hangs == 0)
    outcome.check("core files", str(len(cores)), "0", not cores)
    outcome.check("offloaded calls", f"{cycles - offload_failures - start_failures}/{cycles}", "all",
                  offload_failures == 0 and start_failures == 0)
    outcome.check("Python tracebacks in the log", str(tracebacks), "0", tracebacks == 0)
    return outcome


def _first_traceback(log: str) -> str:
    """The first Python traceback in Orthanc's log, with the line before it, up to the next log line."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if "Traceback" in line)
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"[IWEF]\d{4} ", lines[i])), len(lines))
    return "\n".join(lines[max(0, start - 1):end])


def _stop_quietly(server: OrthancServer) -> None:
    with contextlib.suppress(Exception):
        server.stop(timeout=30)


# --- the command ------------------------------------------------------------------------------


def scenarios(scale: float, log: Callable[[str], None]) -> dict[str, Callable[[Path], Outcome]]:
    """The scenarios at ``scale`` (1.0: the full figures), by name."""

    def n(value: int, least: int = 1) -> int:
        return max(least, round(value * scale))

    return {
        "requests": lambda w: run_requests(w, requests=n(1_000_000, 100), warmup=n(100_000, 100), log=log),
        "rest-calls": lambda w: run_rest_calls(w, calls=n(100_000, 100), warmup=n(10_000, 100), log=log),
        "stored": lambda w: run_stored(w, instances=n(100_000, 20), warmup=n(5_000, 10), log=log),
        "dicom-buffers": lambda w: run_dicom_buffers(w, calls=n(10_000, 10), warmup=n(500, 10), log=log),
        "mixed": lambda w: run_mixed(w, seconds=max(5.0, 120 * scale), log=log),
        "mixed-cluster": lambda w: run_mixed_cluster(w, seconds=max(5.0, 120 * scale), log=log),
        "cycles": lambda w: run_cycles(w, cycles=n(100, 2), log=log),
    }


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("scenario", "figure", "value", "target", "result")]
    for outcome in outcomes:
        for check in outcome.checks:
            rows.append((outcome.scenario, check.figure, check.value, check.target, "pass" if check.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if number == 0:
            print("  ".join("-" * width for width in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run this scenario only (repeat for several): " + ", ".join(scenarios(1, _quiet)))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every count and duration (default 1.0: the full figures; 0.01: a quick run)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (Orthanc's logs, storage)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("soak: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2

    def log(line: str) -> None:
        print(line, flush=True)

    table = scenarios(args.scale, log)
    unknown = [name for name in args.only or [] if name not in table]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose among {', '.join(table)}")
    chosen = args.only or list(table)
    print(f"soak: scale {args.scale:g}, {os.cpu_count()} cores, scenarios {', '.join(chosen)}", flush=True)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="orthanc-py-soak-") as temporary:
        workdir = Path(args.keep or temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in chosen:
            started = time.monotonic()
            outcome = table[name](workdir)
            outcome.figures["scenario_s"] = round(time.monotonic() - started, 1)
            outcomes.append(outcome)
            print(f"{name}: " + json.dumps({k: v for k, v in outcome.figures.items() if k != "samples"}), flush=True)
            if "samples" in outcome.figures:
                print(f"{name}: RSS MB after warm-up, then by step: "
                      + ", ".join(f"{s['rss_mb']:.1f}" for s in outcome.figures["samples"]), flush=True)
    print()
    print_table(outcomes)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
