# SPDX-License-Identifier: GPL-3.0-or-later
"""Every example of ``examples/decorators`` (the seed samples, rewritten with the decorator API), run in a real Orthanc.

Each test loads one example, unchanged, and checks what a user sees: HTTP
status, content type and body, files a DICOM receiver got, lines in Orthanc's
log. Servers come from the module-scoped ``example`` factory and are stopped
together at the end (stopping one takes seconds), each expected to exit
with code 0; the tests about stopping stop their server themselves.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest

from orthanc_py.server import OrthancServer

from .checks import (
    assert_answer,
    assert_error,
    assert_method_not_allowed,
    printed,
    upload,
)
from .conftest import EXAMPLES
from .dicom import make_dicom, make_study, sop_instance_uids
from .fixtures_dicom import StoreScp

DECORATORS = EXAMPLES / "decorators"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPUTATION_ANSWER = re.compile(rb"computation done in \d+\.\d{3} seconds\n")
UNKNOWN_ID = "00000000-00000000-00000000-00000000-00000000"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrthancServer]]:
    """Factory: ``example("paging", config={...})`` starts Orthanc with ``examples/decorators/paging.py``.

    Tests asking for the same example with the same configuration share its
    server. Every server is stopped at the end of the module (all at once)
    and must exit with code 0.
    """
    servers: dict[tuple[str, str], OrthancServer] = {}

    def start(name: str, config: dict[str, Any] | None = None, script: Path | None = None) -> OrthancServer:
        script = script or DECORATORS / f"{name}.py"
        key = (str(script), json.dumps(config, sort_keys=True))
        if key not in servers:
            server = OrthancServer(str(tmp_path_factory.mktemp(name)), script=str(script), config=config)
            servers[key] = server.start()
        return servers[key]

    yield start
    with ThreadPoolExecutor(max(len(servers), 1)) as pool:
        codes = list(pool.map(lambda server: server.stop(timeout=60), servers.values()))
    failed = [(script, code) for (script, _), code in zip(servers, codes) if code != 0]
    assert not failed, f"examples that did not stop cleanly: {failed}"


# --- hello.py -----------------------------------------------------------------


def test_hello_prints_a_line_and_answers(example):
    server = example("hello")
    assert re.search(printed("Hello world!"), server.log, re.MULTILINE), server.log
    answer = server.get("/hello")
    assert_answer(answer, 200, "text/plain")
    assert answer.text == "Hello world!\n"


# --- rest.py ------------------------------------------------------------------


def test_rest_plain_routes_answer_ok_and_print_the_request(example):
    server = example("rest")
    answer = server.get("/toto?answer=42")
    assert_answer(answer, 200, "text/plain")
    assert answer.text == "ok\n"
    assert server.get("/tata").text == "ok\n"
    assert_method_not_allowed(server.post("/toto", b""), "GET")
    server.wait_for_log(printed("Accessing uri: /toto"))
    server.wait_for_log(printed("  method: GET, query: {'answer': '42'}"))
    server.wait_for_log(printed("Accessing uri: /tata"))


def test_rest_path_parameters(example):
    server = example("rest")
    hello = server.get("/hello/J%C3%B6rg")
    assert_answer(hello, 200, "text/plain")
    assert hello.text == "Hello Jörg!\n"

    added = server.get("/add/2/40")
    assert_answer(added, 200, "application/json")
    assert added.json() == {"a": 2, "b": 40, "sum": 42}
    assert server.get("/add/two/40").status == 404  # <int:a> takes digits only

    patient = upload(server, make_dicom(patient_id="REST-1", patient_name="Rest^Patient"))["ParentPatient"]
    summary = server.get(f"/patients-summary/{patient}")
    assert_answer(summary, 200, "application/json")
    assert summary.json() == {"name": "Rest^Patient", "studies": 1}
    assert_error(server.get(f"/patients-summary/{UNKNOWN_ID}"), 404, f"no patient {UNKNOWN_ID}")


# --- changes.py ---------------------------------------------------------------


def test_changes_uploads_its_file_on_start_prints_new_instances_and_stops(example, tmp_path):
    # the example uploads sample.dcm from its own folder: run a copy next to one
    script = tmp_path / "changes.py"
    shutil.copy(DECORATORS / "changes.py", script)
    (tmp_path / "sample.dcm").write_bytes(make_dicom(patient_id="CHANGES", patient_name="Changes^Sample"))
    server = example("changes", script=script)

    server.wait_for_log(printed("Started"))
    instances = server.wait_until(lambda: server.get_json("/instances"), what="the sample's upload")
    assert len(instances) == 1
    assert server.get_json(f"/instances/{instances[0]}/simplified-tags")["PatientID"] == "CHANGES"
    server.wait_for_log(printed(f"A new instance was uploaded: {instances[0]}"))

    another = upload(server, make_dicom(patient_id="CHANGES-2"))["ID"]
    server.wait_for_log(printed(f"A new instance was uploaded: {another}"))

    assert server.stop() == 0
    assert re.search(printed("Stopped"), server.log, re.MULTILINE), server.log


def test_changes_without_a_sample_file_says_so(example):
    server = example("changes")  # examples/decorators holds no sample.dcm
    server.wait_for_log(printed(f"No {DECORATORS / 'sample.dcm'}: nothing to upload"))
    assert server.get_json("/instances") == []


# --- new_instance.py ----------------------------------------------------------


def test_new_instance_prints_size_origin_and_tags(example):
    server = example("new_instance")
    dicom = make_dicom(patient_id="NEW-1", patient_name="New^Instance")
    instance = upload(server, dicom)["ID"]

    server.wait_for_log(
        printed(
            f"Received instance {instance} of size {len(dicom)} "
            f"(transfer syntax {EXPLICIT_VR_LITTLE_ENDIAN}, SOP class UID {CT_IMAGE_STORAGE})"
        )
    )
    server.wait_for_log(printed("This instance was received through the REST API"))
    server.wait_for_log(r"'PatientName': 'New\^Instance',$")
    server.wait_for_log(r"'PatientID': 'NEW-1',$")


def test_new_instance_tells_an_instance_came_through_dicom(example, tmp_path):
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (Debian/Ubuntu: apt-get install dcmtk)")
    server = example("new_instance")
    path = tmp_path / "sent.dcm"
    path.write_bytes(make_dicom(patient_id="NEW-2", patient_name="Sent^ByDicom"))

    sent = subprocess.run(
        ["storescu", "-aet", "MYSCU", "-aec", "ORTHANC", "127.0.0.1", str(server.dicom_port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    server.wait_for_log(printed("This instance was received through the DICOM protocol from MYSCU"))
    server.wait_for_log(r"'PatientName': 'Sent\^ByDicom',$")


# --- pydicom_dump.py ----------------------------------------------------------


def test_pydicom_dump_answers_the_dataset_of_an_instance(example):
    server = example("pydicom_dump")
    dicom = make_dicom(patient_id="DUMP-1", patient_name="Dump^Patient")
    instance = upload(server, dicom)["ID"]
    sop_uid = pydicom.dcmread(io.BytesIO(dicom)).SOPInstanceUID

    answer = server.get(f"/pydicom/{instance}")
    assert_answer(answer, 200, "text/plain")
    assert re.search(r"Patient's Name\s+PN: 'Dump\^Patient'", answer.text), answer.text
    assert re.search(rf"SOP Instance UID\s+UI: {re.escape(sop_uid)}", answer.text), answer.text
    assert_error(server.get(f"/pydicom/{UNKNOWN_ID}"), 404, f"no instance {UNKNOWN_ID}")
    assert_method_not_allowed(server.post(f"/pydicom/{instance}", b""), "GET")


# --- autorouting.py -----------------------------------------------------------


def test_autorouting_sends_each_stable_study_to_the_modality(example, storescp: StoreScp):
    server = example("autorouting", config={"DicomModalities": {"sample": storescp.modality()}, "StableAge": 1})
    _, files = make_study(3, patient_id="ROUTE-1", patient_name="Auto^Routed")
    study = {upload(server, dicom)["ParentStudy"] for dicom in files}.pop()

    received = storescp.wait_for_files(3, timeout=60)
    assert sop_instance_uids([p.read_bytes() for p in received]) == sop_instance_uids(files)
    assert re.search(printed(f"Stable study: {study}"), server.log, re.MULTILINE), server.log


# --- thumbnail.py -------------------------------------------------------------


def test_thumbnail_answers_a_small_jpeg(example):
    from PIL import Image

    server = example("thumbnail")
    instance = upload(server, make_dicom(patient_id="THUMB-1", rows=96, cols=128))["ID"]

    answer = server.get(f"/thumbnail/{instance}")
    assert_answer(answer, 200, "image/jpeg")
    thumbnail = Image.open(io.BytesIO(answer.body))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (64, 48)  # 128x96 downsized to fit 64x64
    # the DICOM's gradient: dark top-left, bright bottom-right
    gray = thumbnail.convert("L")
    corners = gray.getpixel((0, 0)), gray.getpixel((63, 47))
    assert corners[0] < 40 and corners[1] > 200, corners
    assert_error(server.get(f"/thumbnail/{UNKNOWN_ID}"), 404, f"no instance {UNKNOWN_ID}")


# --- find_metadata.py ---------------------------------------------------------


def test_find_metadata_filters_by_a_metadata_regex(example):
    server = example("find_metadata", config={"UserMetadata": {"Reviewer": 1024}})
    alice = upload(server, make_dicom(patient_id="FIND-A"))["ParentStudy"]
    bob = upload(server, make_dicom(patient_id="FIND-B"))["ParentStudy"]
    for study, reviewer in [(alice, "alice"), (bob, "bob")]:
        assert server.request("PUT", f"/studies/{study}/metadata/Reviewer", reviewer).status == 200

    def find(query: dict[str, Any]) -> Any:
        answer = server.post("/tools/find", json.dumps(query))
        assert_answer(answer, 200, "application/json")
        return answer.json()

    assert find({"Level": "Study", "Query": {}, "Metadata": {"Reviewer": "^ali"}}) == [alice]
    both = find({"Level": "Study", "Query": {}, "Metadata": {"Reviewer": "^(alice|bob)$"}})
    assert sorted(both) == sorted([alice, bob])
    assert find({"Level": "Study", "Query": {}, "Metadata": {"LastUpdate": "^2019.*$"}}) == []
    assert find({"Level": "Study", "Query": {"PatientID": "FIND-B"}}) == [bob]

    expanded = find({"Level": "Study", "Query": {}, "Expand": True, "Metadata": {"Reviewer": "^bob$"}})
    assert [study["ID"] for study in expanded] == [bob]
    assert expanded[0]["Metadata"]["Reviewer"] == "bob"
    assert expanded[0]["PatientMainDicomTags"]["PatientID"] == "FIND-B"


def test_find_metadata_answers_400_to_bad_queries(example):
    server = example("find_metadata", config={"UserMetadata": {"Reviewer": 1024}})
    assert_error(server.post("/tools/find", "{not json"), 400, "the body is not valid JSON")
    assert_error(server.post("/tools/find", "[1, 2]"), 400, "the query must be a JSON object")
    bad = {"Level": "Study", "Query": {}, "Metadata": ["Reviewer"]}
    assert_error(server.post("/tools/find", json.dumps(bad)), 400, '"Metadata" must be an object')
    bad = {"Level": "Study", "Query": {}, "Metadata": {"Reviewer": "(unclosed"}}
    assert_error(server.post("/tools/find", json.dumps(bad)), 400, '"Metadata" holds a bad regular expression')
    bad = {"Level": "Nowhere", "Query": {}}
    assert server.post("/tools/find", json.dumps(bad)).status == 400  # Orthanc's own refusal, passed on
    assert_method_not_allowed(server.get("/tools/find"), "POST")


# --- paging.py ----------------------------------------------------------------


def test_paging_sorts_studies_by_date_and_pages(example):
    server = example("paging")
    for date in ["20230301", "20210101", "20240615", "20220510"]:
        upload(server, make_dicom(patient_id=f"PAGE-{date}", study_date=date))

    def dates(query: str = "") -> list[str]:
        answer = server.get("/sort-studies" + query)
        assert_answer(answer, 200, "application/json")
        return [study["MainDicomTags"]["StudyDate"] for study in answer.json()]

    assert dates() == ["20210101", "20220510", "20230301", "20240615"]
    assert dates("?offset=1&limit=2") == ["20220510", "20230301"]
    assert dates("?offset=3") == ["20240615"]
    assert dates("?limit=1") == ["20210101"]
    assert dates("?offset=9") == []
    page = server.get_json("/sort-studies?offset=1&limit=1")
    assert page[0]["PatientMainDicomTags"]["PatientID"] == "PAGE-20220510"

    assert_error(server.get("/sort-studies?limit=x"), 400, "limit must be a whole number, not 'x'")
    assert_error(server.get("/sort-studies?offset=-1"), 400, "offset must be a whole number, not '-1'")
    assert_method_not_allowed(server.post("/sort-studies", b""), "GET")


# --- computation.py, computation_pool.py --------------------------------------


def test_computation_answers_the_time_it_took(example):
    server = example("computation")
    answer = server.get("/computation")
    assert_answer(answer, 200, "text/plain")
    assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body


def test_computation_pool_answers_concurrent_requests_from_worker_processes(example):
    server = example("computation_pool")
    with ThreadPoolExecutor(3) as executor:
        answers = list(executor.map(lambda _: server.get("/computation", timeout=60), range(3)))
    for answer in answers:
        assert_answer(answer, 200, "text/plain")
        assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body
    # its clean stop (exit code 0, workers included) is checked with the others at the end


# --- scheduler.py -------------------------------------------------------------


def test_scheduler_runs_its_timer_and_cancels_it_on_stop(example):
    server = example("scheduler")
    server.wait_for_log(printed("Starting the scheduler"))
    server.wait_for_log(printed("In hello()"))

    assert server.stop() == 0
    log = server.log
    assert re.search(printed("Stopping the scheduler"), log, re.MULTILINE), log
    assert "still runs" not in log, log  # the timer's thread ended: orthanc_py did not have to give up on it
    last_tick = max(m.start() for m in re.finditer(printed("In hello()"), log, re.MULTILINE))
    assert last_tick < re.search(printed("Stopping the scheduler"), log, re.MULTILINE).start(), log
