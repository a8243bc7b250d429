# SPDX-License-Identifier: GPL-3.0-or-later
"""The scripts people run with the official plugin, run in a real Orthanc.

Each test loads one file of ``examples/scenarios`` (scripts written for the
official plugin's ``import orthanc``) and drives Orthanc the way a site
does: modalities storing and querying over DICOM (DCMTK's tools), clients
over HTTP, a second Orthanc as a peer, a remote authorization service. It
checks what those see: the files a DICOM peer receives, what is stored,
the answers. Each test runs under orthanc_py and under the official plugin
(the ``plugin`` fixture of the seed-sample tests); both must pass the same
assertions.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from orthanc_py.server import OrthancServer

from .checks import assert_answer, assert_method_not_allowed, printed, upload
from .conftest import EXAMPLES
from .dicom import make_dicom, make_study, sop_instance_uids
from .fixtures_dicom import StoreScp
from .test_seed_samples import plugin  # noqa: F401  (the fixture: ours, then official)

SCENARIOS = EXAMPLES / "scenarios"
# Orthanc refuses C-FIND and C-MOVE from AETs missing in DicomModalities
# unless told otherwise; DCMTK's tools call with their own AET.
OPEN_DICOM = {"DicomAlwaysAllowFind": True, "DicomAlwaysAllowFindWorklist": True, "DicomAlwaysAllowMove": True}
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


@pytest.fixture
def start_scenario(make_orthanc: Callable[..., OrthancServer], plugin: str | None) -> Callable[..., OrthancServer]:  # noqa: F811
    """Factory: ``start_scenario("purge_old_studies", config={...})`` starts Orthanc with that script."""

    def start(name: str, **kwargs: Any) -> OrthancServer:
        return make_orthanc(SCENARIOS / f"{name}.py", plugin=plugin, **kwargs)

    return start


def dcmtk(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs one DCMTK tool to its end; its output is in the answer, whatever its exit code."""
    return subprocess.run(list(command), capture_output=True, text=True, timeout=60, cwd=cwd)


def store_scu(server: OrthancServer, calling_aet: str, *files: Path) -> subprocess.CompletedProcess[str]:
    """``storescu``: sends ``files`` to Orthanc's DICOM port as ``calling_aet``, one association."""
    return dcmtk("storescu", "--verbose", "-aet", calling_aet, "-aec", "ORTHANC",
                 "127.0.0.1", str(server.dicom_port), *map(str, files))


def assert_dimse_success(run: subprocess.CompletedProcess[str]) -> None:
    """A DCMTK query tool exits with 0 even when the peer refuses; its log tells."""
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "Failed" not in output and "Aborted" not in output, output


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def stored_datasets(server: OrthancServer) -> list[pydicom.Dataset]:
    """Every instance Orthanc stores, as the DICOM file one downloads from it."""
    return [
        pydicom.dcmread(io.BytesIO(server.get(f"/instances/{instance}/file").body))
        for instance in server.get_json("/instances")
    ]


def responses(folder: Path) -> list[pydicom.Dataset]:
    """The C-FIND answers ``findscu --extract`` wrote into ``folder``, in the order received."""
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


# --- 1. auto-forwarding of stable studies ---------------------------------------------


def test_stable_studies_go_to_the_modality_and_the_peer_then_are_deleted(
    start_scenario, make_orthanc, storescp: StoreScp
):
    peer = make_orthanc(None)
    server = start_scenario("forward_stable_studies", config={
        "DicomModalities": {"destination": storescp.modality()},
        "OrthancPeers": {"backup": [peer.url + "/"]},
        "StableAge": 1,
    })
    _, files = make_study(3, patient_id="FORWARD-1", patient_name="Forward^Me")
    study = {upload(server, dicom)["ParentStudy"] for dicom in files}.pop()

    server.wait_for_log(printed(f"Study {study} forwarded and deleted"), timeout=60)
    received = storescp.wait_for_files(3)
    assert sop_instance_uids([path.read_bytes() for path in received]) == sop_instance_uids(files)
    # Orthanc names a study by its DICOM identifiers: the peer stores it under the same ID
    assert peer.get_json("/studies") == [study]
    on_peer = [peer.get(f"/instances/{instance}/file").body for instance in peer.get_json("/instances")]
    assert sop_instance_uids(on_peer) == sop_instance_uids(files)
    assert server.get_json("/studies") == []


def test_instances_from_the_scanner_are_anonymized_and_sent_on(start_scenario, storescp: StoreScp, tmp_path):
    server = start_scenario("anonymize_and_forward", config={"DicomModalities": {"research": storescp.modality()}})
    _, scanned = make_study(2, patient_id="ANON-1", patient_name="Private^Person", study_description="Chest CT")
    scanner_files = [write(tmp_path / f"scan{number}.dcm", dicom) for number, dicom in enumerate(scanned)]
    other = write(tmp_path / "other.dcm", make_dicom(patient_id="ANON-2", patient_name="Other^Person"))

    for aet, files in [("CT_SCANNER", scanner_files), ("WORKSTATION", [other])]:
        sent = store_scu(server, aet, *files)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    copies = [pydicom.dcmread(path) for path in storescp.wait_for_files(2, timeout=60)]
    assert sorted(str(copy.PatientName) for copy in copies) == ["Research^Subject"] * 2
    assert {str(copy.StudyDescription) for copy in copies} == {"Chest CT"}
    assert not {str(copy.PatientID) for copy in copies} & {"ANON-1", "ANON-2"}
    assert not {str(copy.SOPInstanceUID) for copy in copies} & sop_instance_uids(scanned)
    # Orthanc keeps the originals, and nothing else
    assert sorted(str(dataset.PatientID) for dataset in stored_datasets(server)) == ["ANON-1", "ANON-1", "ANON-2"]
    for instance in server.get_json("/instances"):
        if server.get_json(f"/instances/{instance}/simplified-tags")["PatientID"] == "ANON-1":
            server.wait_for_log(printed(f"Sent an anonymized copy of {instance}"))
    assert len(storescp.received_files()) == 2


# --- 2. changing and filtering what modalities send -----------------------------------


def test_instances_received_over_dicom_are_modified_or_dropped(start_scenario, tmp_path):
    server = start_scenario("modify_received")
    kept = write(tmp_path / "kept.dcm", make_dicom(patient_id="REAL-1", patient_name="Real^Patient"))
    dropped = write(tmp_path / "dropped.dcm", make_dicom(patient_id="TEST-1", patient_name="Test^Patient"))

    sent = store_scu(server, "CT_SCANNER", kept, dropped)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    upload(server, make_dicom(patient_id="REST-1", patient_name="Uploaded^Patient"))

    stored = {str(dataset.PatientID): dataset for dataset in stored_datasets(server)}
    assert sorted(stored) == ["REAL-1", "REST-1"]
    assert stored["REAL-1"].InstitutionName == "Central Hospital"
    assert "PatientBirthDate" not in stored["REAL-1"]
    assert stored["REAL-1"].SOPInstanceUID == pydicom.dcmread(kept).SOPInstanceUID
    # what came through the REST API is stored as it was sent
    assert "InstitutionName" not in stored["REST-1"]
    assert stored["REST-1"].PatientBirthDate == "19700101"


def test_the_cstore_filter_refuses_unknown_modalities_and_reports(start_scenario, tmp_path):
    server = start_scenario("cstore_filter")
    ct = write(tmp_path / "ct.dcm", make_dicom(patient_id="FILTER-CT"))
    report = write(tmp_path / "sr.dcm", make_dicom(patient_id="FILTER-SR", modality="SR"))
    stranger = write(tmp_path / "stranger.dcm", make_dicom(patient_id="FILTER-STRANGER"))

    accepted = store_scu(server, "CT_SCANNER", ct)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Received Store Response (Success)" in accepted.stderr + accepted.stdout
    for aet, path in [("CT_SCANNER", report), ("LAPTOP", stranger)]:
        refused = store_scu(server, aet, path)
        # what the modality is told: the status the filter returned
        assert "Received Store Response (Refused: OutOfResources)" in refused.stdout + refused.stderr, refused
    server.wait_for_log(printed("Refusing a structured report from CT_SCANNER"))
    server.wait_for_log(printed("Refusing an instance from LAPTOP"))
    assert [str(dataset.PatientID) for dataset in stored_datasets(server)] == ["FILTER-CT"]


class AuthorizationService:
    """A remote authorization service: grants requests carrying ``Bearer good-token``, records every question."""

    TOKEN = "Bearer good-token"

    def __init__(self) -> None:
        self.questions: list[dict[str, Any]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                question = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.questions.append(question)
                body = json.dumps({"granted": question["token"] == service.TOKEN}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: pytest shows the assertions
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/authorize"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def asked_about(self, uri: str) -> list[dict[str, Any]]:
        return [question for question in self.questions if question["uri"] == uri]


@pytest.fixture
def authorization_service() -> Iterator[AuthorizationService]:
    service = AuthorizationService()
    service.thread.start()
    try:
        yield service
    finally:
        service.http.shutdown()
        service.http.server_close()


def test_the_http_filter_asks_the_authorization_service(start_scenario, authorization_service: AuthorizationService):
    server = start_scenario("http_authorization", config={"AuthorizationService": authorization_service.url})
    granted = {"Authorization": AuthorizationService.TOKEN}

    assert_answer(server.get("/system", headers=granted), 200, "application/json")
    assert server.get("/system").status == 403
    assert server.get("/system", headers={"Authorization": "Bearer stolen"}).status == 403
    assert_answer(server.get("/patients?since=0&limit=2", headers=granted), 200, "application/json")
    assert_answer(server.post("/tools/find", json.dumps({"Level": "Study", "Query": {}}), headers=granted),
                  200, "application/json")
    assert server.request("DELETE", "/patients/unknown").status == 403

    assert {"uri": "/patients", "method": "GET", "ip": "127.0.0.1", "token": AuthorizationService.TOKEN,
            "get": {"since": "0", "limit": "2"}} in authorization_service.asked_about("/patients")
    assert authorization_service.asked_about("/tools/find") == [
        {"uri": "/tools/find", "method": "POST", "ip": "127.0.0.1", "token": AuthorizationService.TOKEN, "get": {}}
    ]
    assert authorization_service.asked_about("/patients/unknown") == [
        {"uri": "/patients/unknown", "method": "DELETE", "ip": "127.0.0.1", "token": "", "get": {}}
    ]


def test_a_missing_study_is_told_apart_by_its_error_code(start_scenario):
    server = start_scenario("study_summary")
    study = upload(server, make_dicom(patient_id="SUMMARY-1", study_date="20220202"))["ParentStudy"]

    answer = server.get(f"/studies/{study}/summary")
    assert_answer(answer, 200, "application/json")
    assert answer.json() == {"PatientID": "SUMMARY-1", "StudyDate": "20220202", "Series": 1}
    assert server.get("/studies/missing/summary").status == 404
    # what print() shows of the exception: under the official plugin, the tuple of its arguments
    logged = server.wait_for_log(r"No summary for study missing: (.*)$")
    assert logged[1] == "(17, 'Unknown resource')"


# --- 3. housekeeping and DICOM services -----------------------------------------------


def days_ago(days: int) -> str:
    return (datetime.date.today() - datetime.timedelta(days=days)).strftime("%Y%m%d")


def test_old_studies_are_purged_on_request_and_when_orthanc_starts(start_scenario):
    server = start_scenario("purge_old_studies")
    studies = {
        days: upload(server, make_dicom(patient_id=f"PURGE-{days}", study_date=days_ago(days)))["ParentStudy"]
        for days in [0, 10, 366, 5000]
    }

    answer = server.post("/tools/purge-old-studies", json.dumps({"Days": 365}))
    assert_answer(answer, 200, "application/json")
    assert answer.json() == sorted([studies[366], studies[5000]])
    assert sorted(server.get_json("/studies")) == sorted([studies[0], studies[10]])
    assert server.post("/tools/purge-old-studies", json.dumps({"Days": "many"})).status == 400
    assert_method_not_allowed(server.get("/tools/purge-old-studies"), "POST")

    # the same purge, by the timer that starts with Orthanc when "PurgeAfterDays" is set
    assert server.stop() == 0
    server.configuration["PurgeAfterDays"] = 5
    server.start()
    server.wait_until(lambda: server.get_json("/studies") == [studies[0]], what="the purge at start-up")
    cutoff = datetime.date.today() - datetime.timedelta(days=5)
    server.wait_for_log(printed(f"Purged 1 studies older than {cutoff.isoformat()}"))


def worklist_item(patient_id: str, patient_name: str, accession: str, modality: str, station: str) -> bytes:
    """A worklist file as the ones a RIS writes: one scheduled procedure step."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MODALITY_WORKLIST_FIND
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    item = Dataset()
    item.file_meta = meta
    item.SpecificCharacterSet = "ISO_IR 100"
    item.AccessionNumber = accession
    item.PatientName = patient_name
    item.PatientID = patient_id
    item.RequestedProcedureDescription = f"{modality} exam"
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = "20240101"
    step.ScheduledProcedureStepDescription = f"{modality} exam"
    item.ScheduledProcedureStepSequence = [step]
    out = io.BytesIO()
    item.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_worklist_is_served_from_a_folder_of_files(start_scenario, tmp_path):
    folder = tmp_path / "worklists"
    folder.mkdir()
    for accession, patient, name, modality, station in [
        ("ACC-1", "WL-1", "Smith^Anna", "MR", "MR_SCANNER"),
        ("ACC-2", "WL-2", "Smith^Bob", "CT", "CT_SCANNER"),
        ("ACC-3", "WL-3", "Jones^Carl", "MR", "MR_SCANNER"),
    ]:
        write(folder / f"{accession}.wl", worklist_item(patient, name, accession, modality, station))
    (folder / "notes.txt").write_text("not a worklist")
    server = start_scenario("worklist_folder", config={"WorklistsFolder": str(folder), **OPEN_DICOM})

    def worklist(name: str, *keys: str) -> list[pydicom.Dataset]:
        answers = tmp_path / name
        answers.mkdir()
        found = dcmtk("findscu", "-W", "-X", "-od", str(answers), "-aet", "MR_SCANNER", "-aec", "ORTHANC",
                      "-k", "AccessionNumber", "-k", "PatientID", *[arg for key in keys for arg in ("-k", key)],
                      "127.0.0.1", str(server.dicom_port))
        assert_dimse_success(found)
        return responses(answers)

    mr = worklist("mr", "PatientName", "ScheduledProcedureStepSequence[0].Modality=MR")
    assert sorted(str(answer.AccessionNumber) for answer in mr) == ["ACC-1", "ACC-3"]
    assert {str(answer.PatientName) for answer in mr} == {"Smith^Anna", "Jones^Carl"}
    assert [str(step.Modality) for answer in mr for step in answer.ScheduledProcedureStepSequence] == ["MR", "MR"]
    smiths = worklist("smiths", "PatientName=Smith*")
    assert sorted(str(answer.PatientID) for answer in smiths) == ["WL-1", "WL-2"]
    assert worklist("nobody", "PatientName=Nobody") == []
    server.wait_for_log(printed("Worklist C-FIND from MR_SCANNER"))


def test_python_cfind_and_cmove_scps_answer_and_send_the_study(start_scenario, storescp: StoreScp, tmp_path):
    server = start_scenario("query_retrieve_scp", config={"DicomModalities": {"viewer": storescp.modality()},
                                                          **OPEN_DICOM})
    study_uid, files = make_study(2, patient_id="QR-1", patient_name="Query^Retrieve", study_date="20230405")
    for dicom in files:
        upload(server, dicom)
    upload(server, make_dicom(patient_id="QR-2", study_date="20230405"))

    answers = tmp_path / "answers"
    answers.mkdir()
    found = dcmtk("findscu", "-S", "-X", "-od", str(answers), "-aet", "VIEWER", "-aec", "ORTHANC",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QR-1", "-k", "PatientName",
                  "-k", "StudyInstanceUID", "-k", "StudyDate",
                  "127.0.0.1", str(server.dicom_port))
    assert_dimse_success(found)
    [answer] = responses(answers)
    assert (answer.PatientID, answer.PatientName, answer.StudyInstanceUID, answer.StudyDate) == (
        "QR-1", "Query^Retrieve", study_uid, "20230405")
    server.wait_for_log(printed(
        'C-FIND from VIEWER: {"PatientID": "QR-1", "PatientName": "", "QueryRetrieveLevel": "STUDY", "StudyDate": "", '
        '"StudyInstanceUID": ""}'))

    moved = dcmtk("movescu", "-S", "-aet", "VIEWER", "-aec", "ORTHANC", "-aem", storescp.aet,
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                  "127.0.0.1", str(server.dicom_port))
    assert_dimse_success(moved)
    received = storescp.wait_for_files(2)
    assert sop_instance_uids([path.read_bytes() for path in received]) == sop_instance_uids(files)
    server.wait_for_log(printed(f"C-MOVE of study {study_uid} to {storescp.aet}"))


# --- 4. storage, downloads, jobs --------------------------------------------------------


def test_a_python_storage_area_keeps_orthancs_files(start_scenario, tmp_path):
    folder = tmp_path / "python-storage"
    folder.mkdir()
    server = start_scenario("storage_area", config={"PythonStorageFolder": str(folder)})
    dicom = make_dicom(patient_id="STORAGE-1", patient_name="Stored^InPython")

    instance = upload(server, dicom)["ID"]
    # the DICOM file is one of the files in the folder, byte for byte
    assert dicom in [path.read_bytes() for path in folder.iterdir()]
    assert server.get(f"/instances/{instance}/file").body == dicom
    assert server.get_json(f"/instances/{instance}/simplified-tags")["PatientID"] == "STORAGE-1"

    assert server.request("DELETE", f"/instances/{instance}").status == 200
    assert list(folder.iterdir()) == []


def test_routes_answer_a_spreadsheet_a_zip_and_a_jpeg(start_scenario):
    from PIL import Image

    server = start_scenario("downloads")
    _, files = make_study(3, patient_id="DOWNLOAD-1", rows=32, cols=48)
    uploaded = [upload(server, dicom) for dicom in files]
    study = uploaded[0]["ParentStudy"]
    uids = [str(pydicom.dcmread(io.BytesIO(dicom)).SOPInstanceUID) for dicom in files]

    sheet = server.get(f"/studies/{study}/instances.csv")
    assert_answer(sheet, 200, "text/csv")
    assert sheet.headers["content-disposition"] == f'attachment; filename="{study}.csv"'
    rows = list(csv.reader(io.StringIO(sheet.text)))
    assert rows == [["SOPInstanceUID", "InstanceNumber", "FileSize"]] + [
        [uid, str(number), str(len(dicom))] for number, (uid, dicom) in enumerate(zip(uids, files), start=1)
    ]

    archive = server.get(f"/studies/{study}/files.zip")
    assert_answer(archive, 200, "application/zip")
    assert archive.headers["content-disposition"] == f'attachment; filename="{study}.zip"'
    with zipfile.ZipFile(io.BytesIO(archive.body)) as z:
        assert {name: z.read(name) for name in z.namelist()} == {f"{uid}.dcm": dicom for uid, dicom in zip(uids, files)}

    preview = server.get(f"/instances/{uploaded[0]['ID']}/preview.jpg")
    assert_answer(preview, 200, "image/jpeg")
    picture = Image.open(io.BytesIO(preview.body))
    assert (picture.format, picture.mode, picture.size) == ("JPEG", "L", (48, 32))
    # the gradient of the DICOM, cut to 8 bits: black top-left, white bottom-right
    assert picture.getpixel((0, 0)) < 16 and picture.getpixel((47, 31)) > 240

    assert server.get("/studies/unknown/files.zip").status == 500


def test_a_failed_transfer_job_is_retried_until_the_modality_answers(start_scenario, tmp_path):
    receiver = StoreScp(tmp_path / "received", tmp_path / "storescp.log")
    server = start_scenario("retry_failed_jobs", config={"DicomModalities": {"late": receiver.modality()}})
    _, files = make_study(2, patient_id="RETRY-1")
    study = {upload(server, dicom)["ParentStudy"] for dicom in files}.pop()

    # the modality is down: the transfer fails, and is retried
    job = server.post_json("/modalities/late/store", {"Resources": [study], "Asynchronous": True})["ID"]
    server.wait_for_log(printed(f"Job {job} failed, retry 1 in 1 s"))
    receiver.start()
    try:
        server.wait_for_log(printed(f"Job {job} succeeded"), timeout=60)
        received = receiver.wait_for_files(2)
        assert sop_instance_uids([path.read_bytes() for path in received]) == sop_instance_uids(files)
    finally:
        receiver.stop()
    assert server.get_json(f"/jobs/{job}")["State"] == "Success"
    assert "giving up" not in server.log


def pynetdicom_path(folder: Path) -> Path:
    """A folder to put on the official plugin's ``PYTHONPATH``: this venv's pynetdicom and pydicom.

    The official plugin runs Debian's Python, whose pydicom is too old for
    pynetdicom; a site installs both for it with ``pip install --target``.
    """
    from importlib.metadata import distribution

    folder.mkdir()
    for name in ("pynetdicom", "pydicom"):
        site = Path(str(distribution(name).locate_file("")))
        # the package and its metadata (pynetdicom reads its own version from it)
        for source in [site / name, *site.glob(f"{name}-*.dist-info")]:
            (folder / source.name).symlink_to(source)
    return folder


def test_pynetdicom_runs_inside_orthanc(start_scenario, plugin, storescp: StoreScp, tmp_path):  # noqa: F811
    env = None
    if plugin is not None:
        env = {**os.environ, "PYTHONPATH": str(pynetdicom_path(tmp_path / "site"))}
    server = start_scenario("pynetdicom_scu", config={"DicomModalities": {"archive": storescp.modality()}}, env=env)
    dicom = make_dicom(patient_id="PYNETDICOM-1")
    instance = upload(server, dicom)["ID"]

    echo = server.get("/pynetdicom/echo/archive")
    assert_answer(echo, 200, "application/json")
    assert echo.json() == {"Status": 0}
    stored = server.post("/pynetdicom/store/archive", instance)
    assert_answer(stored, 200, "application/json")
    assert stored.json() == {"Status": 0}
    [received] = storescp.wait_for_files(1)
    assert sop_instance_uids([received.read_bytes()]) == sop_instance_uids([dicom])
    assert_method_not_allowed(server.get("/pynetdicom/store/archive"), "POST")
