# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module's functions beyond the official plugin 4.0: metrics, jobs, decoders...

The official plugin 4.0 has none of these functions, so the scripts run in
orthanc_py only, in a real Orthanc driven over HTTP (and DICOM between two
Orthanc servers for storage commitment). What a callback received is read
back through a REST route of the script.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import pydicom
import pytest

from orthanc_py import _compat
from orthanc_py._capi import NotInOrthancError
from orthanc_py.server import OrthancServer

from .dicom import make_dicom

# A REST route that answers the script's RECORDED dict as JSON.
RECORDER = """
import json
import orthanc

RECORDED = {}

def Recorded(output, uri, **request):
    output.AnswerBuffer(json.dumps(RECORDED), "application/json")

orthanc.RegisterRestCallback("/recorded", Recorded)
"""


def start(make_orthanc: Callable[..., OrthancServer], script: str, **kwargs: Any) -> OrthancServer:
    return make_orthanc(RECORDER + script, **kwargs)


def recorded(server: OrthancServer) -> Any:
    return server.get_json("/recorded")


def wait_for_job(server: OrthancServer, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Polls ``/jobs/{id}`` until the job is over; returns its last state."""
    deadline = time.monotonic() + timeout
    while True:
        job = server.get_json(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


# --- metrics ----------------------------------------------------------------------------------

METRICS = """
CALLS = {"first": 0}

def Refresh():
    CALLS["first"] += 1
    orthanc.SetMetricsValue("orthanc_py_refreshed", CALLS["first"], orthanc.MetricsType.DEFAULT)

def Broken():
    raise ValueError("refresh-metrics callback failed")

def Second():
    orthanc.SetMetricsValue("orthanc_py_second", 42, orthanc.MetricsType.DEFAULT)

orthanc.RegisterRefreshMetricsCallback(Refresh)
orthanc.RegisterRefreshMetricsCallback(Broken)
orthanc.RegisterRefreshMetricsCallback(Second)
"""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_refresh_metrics_callbacks_set_the_metrics_prometheus_reads(make_orthanc):
    server = start(make_orthanc, METRICS)
    first = server.get("/tools/metrics-prometheus")
    assert first.status == 200
    assert metric(first.text, "orthanc_py_refreshed") == 1
    assert metric(first.text, "orthanc_py_second") == 42, "a failing callback does not stop the next ones"
    assert metric(server.get("/tools/metrics-prometheus").text, "orthanc_py_refreshed") == 2
    assert "refresh-metrics callback failed" in server.log


# --- incoming DICOM instance filter ------------------------------------------------------------

DICOM_FILTER = """
def Filter(instance):
    tags = json.loads(instance.GetInstanceSimplifiedJson())
    patient = tags["PatientID"]
    RECORDED[patient] = [type(instance).__name__, instance.GetInstanceOrigin()]
    if patient == "DF-REFUSE":
        return False
    if patient == "DF-ZERO":
        return 0
    if patient == "DF-RAISE":
        raise ValueError("DICOM instance filter failed")
    if patient == "DF-WRONG":
        return "yes"
    return True

orthanc.RegisterIncomingDicomInstanceFilter(Filter)
try:
    orthanc.RegisterIncomingDicomInstanceFilter(Filter)
except RuntimeError as error:
    RECORDED["second"] = type(error).__name__
"""


def test_dicom_instance_filter_refuses_rest_uploads(make_orthanc):
    server = start(make_orthanc, DICOM_FILTER)
    answers = {patient: server.post("/instances", make_dicom(patient_id=patient))
               for patient in ("DF-ACCEPT", "DF-REFUSE", "DF-ZERO", "DF-RAISE", "DF-WRONG")}
    assert answers["DF-ACCEPT"].status == 200
    assert answers["DF-ACCEPT"].json()["Status"] == "Success"
    for refused in ("DF-REFUSE", "DF-ZERO"):
        assert answers[refused].status == 200, answers[refused].text
        assert answers[refused].json()["Status"] == "FilteredOut"
    for failed in ("DF-RAISE", "DF-WRONG"):
        assert answers[failed].status >= 400, f"{failed}: a failing filter lets nothing through"
        assert "DICOM instance filter failed" not in answers[failed].text
    stored = [server.get_json(f"/instances/{i}/simplified-tags")["PatientID"] for i in server.get_json("/instances")]
    assert stored == ["DF-ACCEPT"]
    assert "DICOM instance filter failed" in server.log
    assert "returned 'yes'" in server.log
    seen = recorded(server)
    assert seen["second"] == "RuntimeError"
    assert seen["DF-ACCEPT"] == ["DicomInstance", _compat.InstanceOrigin.REST_API]


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
    server = start(make_orthanc, JOBS)
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
    server = start(make_orthanc, JOBS)
    job = wait_for_job(server, server.post("/submit", json.dumps({"target": 3, "name": "raise"})).json()["ID"])
    assert job["State"] == "Failure"
    assert "job step failed" in server.log
    assert server.get("/abandon").status == 200
    assert server.get("/system").status == 200


def test_saved_jobs_come_back_through_the_unserializer(make_orthanc):
    server = start(make_orthanc, JOBS, config={"SaveJobs": True})
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


# --- image decoding and transcoding ----------------------------------------------------------------

DECODER = """
def Decode(dicom, frameIndex):
    RECORDED.setdefault("calls", []).append([type(dicom).__name__, len(dicom) > 0, frameIndex])
    if b"DEC-DECLINE" in dicom:
        return None
    if b"DEC-RAISE" in dicom:
        raise ValueError("decoder failed")
    # A fixed 4x2 pattern: the rows 0, 255, 0, 255 / 255, 0, 255, 0.
    return orthanc.CreateImageFromBuffer(orthanc.PixelFormat.GRAYSCALE8, 4, 2, 4,
                                         bytes([0, 255, 0, 255, 255, 0, 255, 0]))

orthanc.RegisterDecodeImageCallback(Decode)
"""


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_python_decoder_serves_the_preview(make_orthanc):
    server = start(make_orthanc, DECODER)
    ours = server.upload(make_dicom(patient_id="DEC-OURS", rows=8, cols=8))["ID"]
    declined = server.upload(make_dicom(patient_id="DEC-DECLINE", rows=8, cols=8))["ID"]
    raising = server.upload(make_dicom(patient_id="DEC-RAISE", rows=8, cols=8))["ID"]

    preview = server.get(f"/instances/{ours}/preview")
    assert preview.status == 200
    assert png_size(preview.body) == (4, 2), "the image the Python decoder made"
    frame = server.get(f"/instances/{ours}/frames/0/raw")
    assert frame.status == 200
    matrix = server.get(f"/instances/{ours}/frames/0/matrix")
    if matrix.status == 200:
        assert matrix.text.split() == ["0", "255", "0", "255", "255", "0", "255", "0"]

    # Declined or failed: Orthanc's own decoder does the work.
    for instance in (declined, raising):
        fallback = server.get(f"/instances/{instance}/preview")
        assert fallback.status == 200
        assert png_size(fallback.body) == (8, 8)
    assert "decoder failed" in server.log
    assert ["bytes", True, 0] in recorded(server)["calls"]


TRANSCODER = """
import io
import pydicom
from pydicom.uid import ImplicitVRLittleEndian

def Transcode(dicom, allowedSyntaxes, allowNewSopInstanceUid):
    RECORDED.setdefault("calls", []).append([type(dicom).__name__, allowedSyntaxes, allowNewSopInstanceUid])
    if ImplicitVRLittleEndian not in allowedSyntaxes:
        return None
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    if dataset.PatientID == "TC-RAISE":
        raise ValueError("transcoder failed")
    dataset.PatientName = "Transcoded^ByPython"
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    output = io.BytesIO()
    dataset.save_as(output, implicit_vr=True, little_endian=True)
    return output.getvalue()

orthanc.RegisterTranscoderCallback(Transcode)
"""

IMPLICIT = "1.2.840.10008.1.2"


def test_python_transcoder_transcodes_on_modify(make_orthanc):
    server = start(make_orthanc, TRANSCODER)
    instance = server.upload(make_dicom(patient_id="TC-OURS"))["ID"]
    answer = server.post(f"/instances/{instance}/modify", json.dumps({"Transcode": IMPLICIT}))
    assert answer.status == 200, answer.text
    result = pydicom.dcmread(io.BytesIO(answer.body))
    assert result.file_meta.TransferSyntaxUID == IMPLICIT
    assert str(result.PatientName) == "Transcoded^ByPython"
    (call,) = recorded(server)["calls"]
    assert call[0] == "bytes"
    assert IMPLICIT in call[1]
    assert isinstance(call[2], bool)

    # A failing transcoder: Orthanc's own transcoder does the work.
    failing = server.upload(make_dicom(patient_id="TC-RAISE"))["ID"]
    answer = server.post(f"/instances/{failing}/modify", json.dumps({"Transcode": IMPLICIT}))
    assert answer.status == 200, answer.text
    result = pydicom.dcmread(io.BytesIO(answer.body))
    assert result.file_meta.TransferSyntaxUID == IMPLICIT
    assert str(result.PatientName) == "Doe^John"
    assert "transcoder failed" in server.log


# --- storage commitment -------------------------------------------------------------------------------

STORAGE_COMMITMENT = """
HANDLERS = []

def Factory(jobId, transactionUid, sopClassUids, sopInstanceUids, remoteAet, calledAet):
    RECORDED["factory"] = [jobId != "", transactionUid, sopClassUids, sopInstanceUids, remoteAet, calledAet]
    handler = {"transaction": transactionUid}
    HANDLERS.append(handler)
    return handler

def Destructor(handler):
    RECORDED["destroyed"] = handler

def Lookup(handler, sopClassUid, sopInstanceUid):
    RECORDED.setdefault("lookups", []).append([handler, sopClassUid, sopInstanceUid])
    if sopInstanceUid == "1.2.3.4.2":
        return orthanc.StorageCommitmentFailureReason.NO_SUCH_OBJECT_INSTANCE
    if sopInstanceUid == "1.2.3.4.3":
        raise ValueError("lookup failed")
    return orthanc.StorageCommitmentFailureReason.SUCCESS

orthanc.RegisterStorageCommitmentScpCallback(Factory, Destructor, Lookup)
"""


def test_storage_commitment_scp_answers_through_python(make_orthanc):
    # No jobs history: Orthanc drops the SCP's job, and its handler, once it is done.
    scp = start(make_orthanc, STORAGE_COMMITMENT, start=False, config={"JobsHistorySize": 0})
    scu = make_orthanc(None, start=False)
    scp.configuration["DicomModalities"] = {"scu": ["SCU", "127.0.0.1", scu.dicom_port]}
    scp.configuration["DicomAet"] = "SCP"
    scu.configuration["DicomModalities"] = {"scp": ["SCP", "127.0.0.1", scp.dicom_port]}
    scu.configuration["DicomAet"] = "SCU"
    scp.start()
    scu.start()

    ct = "1.2.840.10008.5.1.4.1.1.2"
    request = {"DicomInstances": [[ct, "1.2.3.4.1"], [ct, "1.2.3.4.2"], [ct, "1.2.3.4.3"]]}
    answer = scu.post("/modalities/scp/storage-commitment", json.dumps(request))
    assert answer.status == 200, answer.text
    transaction = answer.json()["ID"]

    def report() -> Any:
        status = scu.get_json(f"/storage-commitment/{transaction}")
        return status if status["Status"] != "Pending" else None

    status = scu.wait_until(report, what="the storage commitment report")
    assert status["Status"] == "Failure", status
    assert status["Success"] == [{"SOPClassUID": ct, "SOPInstanceUID": "1.2.3.4.1"}]
    failures = {item["SOPInstanceUID"]: item["FailureReason"] for item in status["Failures"]}
    # The SCU shows the DICOM Failure Reason (0008,1197) that Orthanc sent for
    # NO_SUCH_OBJECT_INSTANCE (0x0112) and PROCESSING_FAILURE (0x0110).
    assert failures == {"1.2.3.4.2": 0x0112, "1.2.3.4.3": 0x0110}

    seen = recorded(scp)
    assert seen["factory"] == [True, transaction, [ct] * 3, ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"], "SCU", "SCP"]
    assert [uid for _, _, uid in seen["lookups"]] == ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    assert seen["lookups"][0][0] == {"transaction": transaction}
    scp.wait_until(lambda: "destroyed" in recorded(scp), what="the destructor")
    assert recorded(scp)["destroyed"] == {"transaction": transaction}
    assert "lookup failed" in scp.log


# --- DICOMweb --------------------------------------------------------------------------------------------

DICOMWEB = """
import base64

def Binary(path, group, element, vr):
    RECORDED.setdefault("binary", []).append([path, group, element, vr])
    if (group, element) == (0x7FE0, 0x0010):
        return orthanc.DicomWebBinaryMode.BULK_DATA_URI, "http://example.com/pixels"
    return orthanc.DicomWebBinaryMode.INLINE_BINARY

def Raising(path, group, element, vr):
    raise ValueError("binary callback failed")

def Encode(output, uri, **request):
    dicom = request["body"]
    answers = {}
    for name in ("EncodeDicomWebJson", "EncodeDicomWebJson2"):
        function = getattr(orthanc, name)
        answers[name] = [json.loads(function(dicom)), json.loads(function(dicom, Binary))]
    for name in ("EncodeDicomWebXml", "EncodeDicomWebXml2"):
        answers[name] = getattr(orthanc, name)(dicom, Binary)
    try:
        orthanc.EncodeDicomWebJson2(dicom, Raising)
    except ValueError as error:
        answers["raised"] = str(error)
    output.AnswerBuffer(json.dumps(answers), "application/json")

def Stored(instance, instanceId):
    RECORDED["stored"] = [json.loads(instance.GetInstanceDicomWebJson()),
                          json.loads(instance.GetInstanceDicomWebJson(Binary)),
                          instance.GetInstanceDicomWebXml(Binary)]

orthanc.RegisterRestCallback("/encode", Encode)
orthanc.RegisterOnStoredInstanceCallback(Stored)
"""

PIXEL_DATA = "7FE00010"


def test_dicomweb_encoding_with_and_without_a_binary_callback(make_orthanc):
    server = start(make_orthanc, DICOMWEB)
    dicom = make_dicom(patient_id="DW-1", rows=2, cols=2)
    answer = server.post("/encode", dicom)
    assert answer.status == 200, answer.text
    answers = answer.json()
    for name in ("EncodeDicomWebJson", "EncodeDicomWebJson2"):
        plain, chosen = answers[name]
        assert plain["00100020"] == {"vr": "LO", "Value": ["DW-1"]}
        assert chosen[PIXEL_DATA]["BulkDataURI"] == "http://example.com/pixels"
    for name in ("EncodeDicomWebXml", "EncodeDicomWebXml2"):
        assert "http://example.com/pixels" in answers[name]
        assert "DW-1" in answers[name]
    assert answers["raised"] == "binary callback failed"
    assert [[], 0x7FE0, 0x0010] == recorded(server)["binary"][0][:3]

    server.upload(dicom)
    plain, chosen, xml = server.wait_until(lambda: recorded(server).get("stored"), what="the stored instance")
    assert plain["00100020"]["Value"] == ["DW-1"]
    assert chosen[PIXEL_DATA]["BulkDataURI"] == "http://example.com/pixels"
    assert "http://example.com/pixels" in xml


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
    import hashlib

    server = start(make_orthanc, CHUNKED_CLIENT)
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


# --- outside Orthanc ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "register, arguments",
    [
        (_compat.RegisterRefreshMetricsCallback, 1),
        (_compat.RegisterIncomingDicomInstanceFilter, 1),
        (_compat.RegisterJobsUnserializer, 1),
        (_compat.RegisterDecodeImageCallback, 1),
        (_compat.RegisterTranscoderCallback, 1),
        (_compat.RegisterStorageCommitmentScpCallback, 3),
    ],
)
def test_registrations_check_types_and_are_no_ops_outside_orthanc(register, arguments):
    register(*([print] * arguments))  # a worker process re-running the script: nothing happens
    with pytest.raises(TypeError, match=rf"{register.__name__}\(\) argument '\w+' must be callable, not int"):
        register(*([print] * (arguments - 1) + [1]))
    assert register.__module__ == "orthanc"
    assert register.__name__ in _compat.__all__
    assert register.__doc__ and ":raises TypeError:" in register.__doc__


def test_functions_check_arguments_and_need_orthanc():
    with pytest.raises(TypeError, match="argument 'jobType' must be str"):
        _compat.CreateJob(1, print)
    with pytest.raises(TypeError, match="argument 'step' must be callable"):
        _compat.CreateJob("T", 1)
    with pytest.raises(TypeError, match="argument 'callback' must be callable"):
        _compat.EncodeDicomWebJson(b"", 1)
    with pytest.raises(NotInOrthancError):
        _compat.EncodeDicomWebJson(b"")
    for name in ("CreateJob", "EncodeDicomWebJson", "EncodeDicomWebXml", "EncodeDicomWebJson2", "EncodeDicomWebXml2"):
        function = getattr(_compat, name)
        assert function.__module__ == "orthanc"
        assert name in _compat.__all__
        assert function.__doc__ and ":raises" in function.__doc__
    for cls, name in ((_compat.Job, "SubmitJob"), (_compat.DicomInstance, "GetInstanceDicomWebJson"),
                      (_compat.DicomInstance, "GetInstanceDicomWebXml")):
        assert getattr(cls, name).__doc__
