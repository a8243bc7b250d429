# SPDX-License-Identifier: GPL-3.0-or-later
"""The jobs of the ``orthanc`` module: created, submitted, unserialized.

Jobs whose callbacks give values Orthanc cannot take get a clear error or log
line, never a crash. Orthanc parses a job's content and saved state as JSON
objects and writes its progress into JSON answers. Each such case here once
took Orthanc down (SIGSEGV when a refused job was collected, an abort when the
content turned into plain text) or broke ``GET /jobs`` for every client (NaN
progress).

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from orthanc_py import _compat
from orthanc_py.server import OrthancServer

from .official import (
    recorded,
    start,
    wait_for_job,
)

# --- jobs ------------------------------------------------------------------------------------------

JOBS = """
import threading

class Counter:
    def __init__(self, target, name):
        self.count = 0
        self.target = target
        self.name = name
        self.stopped = []

    def step(self):
        if self.name == "raise":
            raise ValueError("job step failed")
        self.count += 1
        return orthanc.JobStepStatus.SUCCESS if self.count >= self.target else orthanc.JobStepStatus.CONTINUE

    def progress(self):
        return self.count / self.target

    def content(self):
        return {"name": self.name, "count": self.count, "stopped": self.stopped}

    def serialized(self):
        return {"name": self.name, "count": self.count, "target": self.target}

    def stop(self, reason):
        self.stopped.append(reason)
        RECORDED.setdefault("stops", {})[self.name] = self.stopped

def Create(counter):
    return orthanc.CreateJob("PythonCounter", counter.step, progress=counter.progress, content=counter.content,
                             serialized=counter.serialized, stop=counter.stop)

def Submit(output, uri, **request):
    body = json.loads(request["body"])
    job = Create(Counter(body["target"], body["name"]))
    RECORDED["type"] = type(job).__name__
    job_id = job.SubmitJob(body.get("priority", 0))
    try:
        job.SubmitJob(0)
    except ValueError as error:
        RECORDED["resubmit"] = str(error)
    output.AnswerBuffer(json.dumps({"ID": job_id}), "application/json")

def Unserialize(jobType, serialized):
    RECORDED.setdefault("unserialized", []).append([jobType, json.loads(serialized)])
    if jobType != "PythonCounter":
        return None
    state = json.loads(serialized)
    counter = Counter(state["target"], state["name"])
    counter.count = state["count"]
    return Create(counter)

def Abandon(output, uri, **request):
    # Never submitted: collected by Python, freed by Orthanc through FreeJob.
    job = orthanc.CreateJob("Abandoned", lambda: orthanc.JobStepStatus.SUCCESS)
    del job
    output.AnswerBuffer("ok", "text/plain")

orthanc.RegisterRestCallback("/submit", Submit)
orthanc.RegisterRestCallback("/abandon", Abandon)
orthanc.RegisterJobsUnserializer(Unserialize)
"""


def test_python_job_runs_to_success_with_its_content(make_orthanc):
    server = start(make_orthanc, None, JOBS)
    answer = server.post("/submit", json.dumps({"target": 5, "name": "five"}))
    assert answer.status == 200, answer.text
    job = wait_for_job(server, answer.json()["ID"])
    assert job["State"] == "Success", job
    assert job["Type"] == "PythonCounter"
    assert job["Progress"] == 100
    assert job["Content"] == {"name": "five", "count": 5, "stopped": [_compat.JobStopReason.SUCCESS]}
    seen = recorded(server)
    assert seen["type"] == "Job"
    assert "closed" in seen["resubmit"], "a submitted job belongs to Orthanc: the Python object is closed"
    assert seen["stops"]["five"] == [_compat.JobStopReason.SUCCESS]


def test_failing_job_step_fails_the_job_and_is_logged(make_orthanc):
    server = start(make_orthanc, None, JOBS)
    job = wait_for_job(server, server.post("/submit", json.dumps({"target": 3, "name": "raise"})).json()["ID"])
    assert job["State"] == "Failure"
    assert "job step failed" in server.log
    assert server.get("/abandon").status == 200
    assert server.get("/system").status == 200


def test_saved_jobs_come_back_through_the_unserializer(make_orthanc):
    server = start(make_orthanc, None, JOBS, config={"SaveJobs": True})
    job_id = server.post("/submit", json.dumps({"target": 2, "name": "saved"})).json()["ID"]
    assert wait_for_job(server, job_id)["State"] == "Success"
    server.stop()
    server.start()
    unserialized = recorded(server).get("unserialized", [])
    # Orthanc saves the object serialized() returned, with its own "Type" added.
    assert ["PythonCounter", {"Type": "PythonCounter", "name": "saved", "count": 2, "target": 2}] in unserialized
    job = server.get_json(f"/jobs/{job_id}")
    assert job["Type"] == "PythonCounter"
    assert job["Content"]["name"] == "saved"


# --- values Orthanc cannot take ---------------------------------------------------------------

# Jobs whose callbacks read STATE, which POST /change sets; /submit/<kind>
# answers the job's ID or the exception SubmitJob raised, after the job
# object has been dropped and collected.
CHANGING_JOBS = """
import gc, json, math, time
import orthanc

STATE = {"content": {"step": 1}, "serialized": {"step": 1}, "progress": 0.25}
KINDS = {
    "nan-content": {"content": lambda: {"ratio": math.nan}},
    "inf-in-text": {"content": lambda: '{"ratio": 1e999}'},
    "list-serialized": {"serialized": lambda: [1, 2]},
    "text-serialized": {"serialized": lambda: "step 1 of 3"},
    "changing": {"content": lambda: STATE["content"], "serialized": lambda: STATE["serialized"],
                 "progress": lambda: STATE["progress"]},
    "not-saved": {"content": lambda: STATE["content"], "progress": lambda: STATE["progress"]},
}

def Step():
    time.sleep(0.05)  # a job that runs until the test ends, without spinning
    return orthanc.JobStepStatus.CONTINUE

def Submit(output, uri, **request):
    job = orthanc.CreateJob("Changing", Step, **KINDS[uri.rsplit("/", 1)[1]])
    try:
        answer = {"ID": job.SubmitJob(0)}
    except Exception as error:
        answer = {"error": type(error).__name__, "message": str(error)}
    del job
    gc.collect()
    output.AnswerBuffer(json.dumps(answer), "application/json")

def Change(output, uri, **request):
    STATE.update({key: (math.nan if value == "nan" else value) for key, value in json.loads(request["body"]).items()})
    output.AnswerBuffer("{}", "application/json")

orthanc.RegisterRestCallback("/submit/(.*)", Submit)
orthanc.RegisterRestCallback("/change", Change)
"""


@pytest.fixture
def jobs(make_orthanc: Callable[..., OrthancServer]) -> OrthancServer:
    return make_orthanc(CHANGING_JOBS, config={"SaveJobs": True})


def submit(server: OrthancServer, kind: str) -> dict[str, Any]:
    answer = server.post(f"/submit/{kind}")
    assert answer.status == 200, (answer.status, answer.text, server.log[-3000:])
    result: dict[str, Any] = answer.json()
    return result


def job_shows(server: OrthancServer, job_id: str, content: Any, progress: int) -> dict[str, Any]:
    """Waits until ``GET /jobs/{id}`` shows that content and progress (Orthanc refreshes them after each step)."""
    def shown() -> Any:
        job = server.get_json(f"/jobs/{job_id}")
        return job if (job["Content"], job["Progress"]) == (content, progress) else None

    result: dict[str, Any] = server.wait_until(shown, 10, f"job showing {content} at {progress}%")
    return result


def assert_alive(server: OrthancServer) -> None:
    assert server.process is not None and server.process.poll() is None, server.log[-3000:]
    assert server.get("/system").status == 200


REFUSALS = [
    ("nan-content", "content", "NaN or Infinity"),
    ("inf-in-text", "content", "NaN or Infinity"),
    ("list-serialized", "serialized", "returned list [1, 2], not a dict"),
    ("text-serialized", "serialized", "returned text that is not JSON"),
]


def test_a_job_orthanc_would_refuse_is_not_submitted_and_orthanc_keeps_serving(jobs):
    for kind, callback, problem in REFUSALS:
        refused = submit(jobs, kind)
        assert refused["error"] == "ValueError", (kind, refused)
        assert f"the {callback} callback" in refused["message"]
        assert "of the job of type 'Changing'" in refused["message"]
        assert problem in refused["message"], (kind, refused)
        assert "the job is not submitted" in refused["message"]
        # The job object was collected after the refusal: Orthanc is still there.
        time.sleep(0.2)
        assert_alive(jobs)
    assert jobs.get_json("/jobs") == []


def test_a_job_whose_values_go_bad_later_keeps_its_last_good_ones(jobs):
    job_id = submit(jobs, "changing")["ID"]
    jobs.post("/change", json.dumps({"content": {"step": 2}, "serialized": {"step": 2}, "progress": 0.5}))
    job_shows(jobs, job_id, {"step": 2}, 50)

    # Plain text as content: Orthanc used to abort ("terminate called after throwing").
    jobs.post("/change", json.dumps({"content": "halfway", "serialized": [2], "progress": "nan"}))
    jobs.wait_for_log("the progress callback")
    for _ in range(3):  # asked again by each client: logged once
        time.sleep(0.1)
        job = jobs.get_json(f"/jobs/{job_id}")
        assert (job["Content"], job["Progress"]) == ({"step": 2}, 50)
        expanded = jobs.get("/jobs?expand")
        assert expanded.status == 200, expanded.text
    # A state change makes Orthanc save its jobs, asking for the serialized state.
    assert jobs.post(f"/jobs/{job_id}/pause").status == 200
    jobs.wait_for_log(
        r"the serialized callback .* returned list \[2\], not a dict .*Orthanc keeps the last valid state"
    )
    jobs.wait_until(lambda: jobs.get_json(f"/jobs/{job_id}")["State"] == "Paused", 10, "the job paused")
    assert jobs.post(f"/jobs/{job_id}/resume").status == 200

    log = jobs.log
    assert log.count("the content callback <lambda> of the job of type 'Changing' returned text that is not JSON") == 1
    assert "Orthanc shows the last valid content (return a dict of JSON values)" in log
    assert log.count("the progress callback <lambda> of the job of type 'Changing' returned nan, not a fraction") == 1
    assert "terminate called" not in log
    assert_alive(jobs)

    # Good values again: shown again.
    jobs.post("/change", json.dumps({"content": {"step": 3}, "progress": 0.75}))
    job_shows(jobs, job_id, {"step": 3}, 75)


def test_a_progress_out_of_range_is_clamped_and_nan_keeps_the_last_one(jobs):
    job_id = submit(jobs, "changing")["ID"]
    for progress, shown in ((7, 100), (-2, 0), (0.5, 50), ("nan", 50), (float("inf"), 100)):
        jobs.post("/change", json.dumps({"progress": progress}))
        if progress == "nan":
            jobs.wait_for_log("returned nan, not a fraction from 0.0 to 1.0; the last valid progress stays")
        job_shows(jobs, job_id, {"step": 1}, shown)
        answer = jobs.get("/jobs?expand")  # NaN in Orthanc's JSON made this 400 for every client
        assert answer.status == 200, answer.text
    message = "the progress callback <lambda> of the job of type 'Changing' returned {}, outside 0.0 to 1.0 " \
              "(a fraction, not a percentage); it is clamped"
    assert message.format(7.0) in jobs.log
    assert message.format(-2.0) not in jobs.log  # out of range again before a good value: logged once
    assert message.format("inf") in jobs.log


# Orthanc refuses a job it cannot read, and deletes it. orthanc_py's checks
# keep such a job from reaching Orthanc, so this script turns them off to
# make Orthanc refuse one: the job then belongs to Orthanc, which has deleted
# it, and collecting the Python object must not free it again.
REFUSED_BY_ORTHANC = """
import gc, json, math
import orthanc
from orthanc_py._official import jobs as jobs_family

jobs_family._check_before_submit = lambda state, what: None
jobs_family._job_json = lambda value: json.dumps(value).encode("utf-8")

def Submit(output, uri, **request):
    job = orthanc.CreateJob("Refused", lambda: orthanc.JobStepStatus.SUCCESS, content=lambda: {"ratio": math.nan})
    try:
        answer = {"ID": job.SubmitJob(0)}
    except Exception as error:
        answer = {"error": type(error).__name__, "message": str(error)}
    try:
        job.SubmitJob(0)
    except Exception as error:
        answer["again"] = str(error)
    del job
    gc.collect()
    answer["jobs alive"] = len(jobs_family._jobs)
    output.AnswerBuffer(json.dumps(answer), "application/json")

orthanc.RegisterRestCallback("/submit", Submit)
"""


def test_a_job_orthanc_refuses_belongs_to_orthanc_and_is_never_freed_again(make_orthanc):
    server = make_orthanc(REFUSED_BY_ORTHANC)
    for _ in range(2):
        refused = server.post_json("/submit")
        assert refused["error"] == "OrthancError"
        assert "Orthanc refused the job of type 'Refused' and deleted it" in refused["message"]
        assert "already submitted or closed" in refused["again"]
        assert refused["jobs alive"] == 0  # Orthanc finalized it
    time.sleep(0.2)
    assert_alive(server)


def test_a_job_that_is_not_saved_goes_through_the_newer_service(jobs):
    """CreateJob2 on Orthanc 1.11.3 and later, except for jobs whose state is saved (Orthanc's own bug)."""
    deprecated = "deprecated OrthancPluginCreateJob() function"
    not_saved = submit(jobs, "not-saved")["ID"]
    job_shows(jobs, not_saved, {"step": 1}, 25)
    assert jobs.log.count(deprecated) == 0
    saved = submit(jobs, "changing")["ID"]
    job_shows(jobs, saved, {"step": 1}, 25)
    version = jobs.get_json("/system")["Version"]
    if tuple(map(int, version.split(".")[:3])) >= (1, 11, 3):
        jobs.wait_for_log(re.escape(deprecated))  # the saved job: Orthanc says the older service is deprecated
        assert jobs.log.count(deprecated) == 1
    else:
        assert jobs.log.count(deprecated) == 0  # Orthanc 1.10 has one service, and no such warning
