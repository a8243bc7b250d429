# SPDX-License-Identifier: GPL-3.0-or-later
"""Every sample of the official plugin's documentation, run in a real Orthanc.

Each test loads one file of ``examples/seed`` and checks what a user would
see: HTTP answers, files a DICOM receiver got, lines in Orthanc's log. Each
runs twice: with orthanc_py (``ours``) and with the official plugin
(``official``, Debian's ``orthanc-python``), which must behave the same.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest

from orthanc_py.server import OrthancServer, OrthancStartError

from .checks import assert_answer, assert_method_not_allowed, printed, upload
from .conftest import EXAMPLES
from .dicom import make_dicom, make_study, sop_instance_uids
from .fixtures_dicom import StoreScp

SEED = EXAMPLES / "seed"
OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPUTATION_ANSWER = re.compile(rb"computation done in \d+\.\d{3} seconds\n")


@pytest.fixture(params=["ours", "official"])
def plugin(request: pytest.FixtureRequest) -> str | None:
    """The Python plugin to load: orthanc_py's loader (``None``) or the official plugin's library."""
    if request.param == "official":
        if not os.path.exists(OFFICIAL_PLUGIN):
            pytest.skip(
                f"the official Python plugin is not installed ({OFFICIAL_PLUGIN}; "
                "Debian: apt-get install orthanc-python)"
            )
        return OFFICIAL_PLUGIN
    return None


@pytest.fixture
def start_sample(make_orthanc: Callable[..., OrthancServer], plugin: str | None) -> Callable[..., OrthancServer]:
    """Factory: ``start_sample("rest", config={...})`` starts Orthanc with ``examples/seed/rest.py``."""

    def start(name: str, **kwargs: Any) -> OrthancServer:
        return make_orthanc(SEED / f"{name}.py", plugin=plugin, **kwargs)

    return start


def study_dates(studies: list[dict[str, Any]]) -> list[str]:
    return [study["MainDicomTags"]["StudyDate"] for study in studies]


# --- Extending the REST API ---------------------------------------------------


def test_rest_sample_answers_ok_and_prints_the_request(start_sample):
    server = start_sample("rest")

    answer = server.get("/toto?answer=42", headers={"X-Sample": "rest"})
    assert_answer(answer, 200, "text/plain")
    assert answer.body == b"ok\n"
    assert server.get("/tata").body == b"ok\n"
    assert server.get("/tito").status == 404

    server.wait_for_log(printed("Accessing uri: /toto"))
    server.wait_for_log(printed("Accessing uri: /tata"))
    # pprint.pprint(request): one key a line, sorted
    log = server.log
    assert re.search(printed("{'get': {'answer': '42'},"), log, re.M), log
    assert re.search(printed(" 'groups': ('to', 't'),"), log, re.M), log
    assert re.search(r"^.*'x-sample': 'rest'", log, re.M), log
    assert re.search(printed(" 'method': 'GET'}"), log, re.M), log


# --- Listening to changes -----------------------------------------------------


def test_changes_sample_uploads_its_file_on_start_and_prints_the_changes(make_orthanc, plugin):
    source = (SEED / "changes.py").read_text()
    server = make_orthanc(source, plugin=plugin, start=False)
    (Path(server.workdir) / "sample.dcm").write_bytes(make_dicom(patient_id="CHANGES", patient_name="Changes^Sample"))
    server.start()

    server.wait_for_log(printed("Started"))
    instances = server.wait_until(lambda: server.get_json("/instances"), what="the sample's upload")
    assert len(instances) == 1
    assert server.get_json(f"/instances/{instances[0]}/simplified-tags")["PatientID"] == "CHANGES"
    server.wait_for_log(printed(f"A new instance was uploaded: {instances[0]}"))

    assert server.stop() == 0
    assert re.search(printed("Stopped"), server.log, re.M), server.log


# --- Accessing the content of a new instance ----------------------------------


def test_new_instance_sample_prints_size_origin_and_tags(start_sample):
    server = start_sample("new_instance")
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


def test_new_instance_sample_tells_an_instance_came_through_dicom(start_sample, tmp_path):
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (Debian/Ubuntu: apt-get install dcmtk)")
    server = start_sample("new_instance")
    path = tmp_path / "sent.dcm"
    path.write_bytes(make_dicom(patient_id="NEW-2", patient_name="Sent^ByDicom"))

    sent = subprocess.run(
        ["storescu", "-aec", "ORTHANC", "127.0.0.1", str(server.dicom_port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    server.wait_for_log(printed("This instance was received through the DICOM protocol"))
    server.wait_for_log(r"'PatientName': 'Sent\^ByDicom',$")


# --- Calling pydicom ----------------------------------------------------------


def test_pydicom_sample_dumps_the_dataset_of_an_instance(start_sample):
    server = start_sample("pydicom_dump")
    dicom = make_dicom(patient_id="DUMP-1", patient_name="Dump^Patient")
    instance = upload(server, dicom)["ID"]
    sop_uid = pydicom.dcmread(io.BytesIO(dicom)).SOPInstanceUID

    answer = server.get(f"/pydicom/{instance}")
    assert_answer(answer, 200, "text/plain")
    assert re.search(r"Patient's Name\s+PN: 'Dump\^Patient'", answer.text), answer.text
    assert re.search(rf"SOP Instance UID\s+UI: {re.escape(sop_uid)}", answer.text), answer.text
    assert_method_not_allowed(server.post(f"/pydicom/{instance}", b""), "GET")


# --- Auto-routing studies -----------------------------------------------------


def test_autorouting_sample_sends_each_stable_study_to_the_modality(start_sample, storescp: StoreScp):
    server = start_sample("autorouting", config={"DicomModalities": {"sample": storescp.modality()}, "StableAge": 1})
    _, files = make_study(3, patient_id="ROUTE-1", patient_name="Auto^Routed")
    study = {upload(server, dicom)["ParentStudy"] for dicom in files}.pop()

    received = storescp.wait_for_files(3, timeout=60)
    assert sop_instance_uids([p.read_bytes() for p in received]) == sop_instance_uids(files)
    assert re.search(printed(f"Stable study: {study}"), server.log, re.M), server.log


# --- Rendering a thumbnail using PIL/Pillow -----------------------------------


def test_thumbnail_sample_answers_a_small_jpeg(start_sample):
    from PIL import Image

    server = start_sample("thumbnail")
    instance = upload(server, make_dicom(patient_id="THUMB-1", rows=96, cols=128))["ID"]

    answer = server.get(f"/pydicom/{instance}")
    assert_answer(answer, 200, "text/plain")  # sic: the sample answers its JPEG as text/plain
    thumbnail = Image.open(io.BytesIO(answer.body))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (64, 48)  # 128x96 downsized to fit 64x64
    # the DICOM's gradient: dark top-left, bright bottom-right
    gray = thumbnail.convert("L")
    assert gray.getpixel((0, 0)) < 40 and gray.getpixel((63, 47)) > 200, (
        gray.getpixel((0, 0)),
        gray.getpixel((63, 47)),
    )
    assert_method_not_allowed(server.post(f"/pydicom/{instance}", b""), "GET")


# --- Inspecting the available API ---------------------------------------------


def test_introspection_sample_prints_functions_classes_and_enumerations(start_sample):
    server = start_sample("introspection")
    server.wait_for_log(printed("Function RegisterRestCallback():"))
    for line in [
        "Function RestApiGet():",
        "Function RegisterOnChangeCallback():",
        "Class ChangeType:",
        "  - Enumeration value ORTHANC_STARTED: 10",
        "  - Enumeration value STABLE_STUDY: 9",
        "Class InstanceOrigin:",
        "  - Enumeration value REST_API: 3",
    ]:
        assert re.search(printed(line), server.log, re.M), f"{line!r} not in the log:\n{server.log}"
    # methods of the classes are method descriptors, as those of a C extension are
    for method in ("AnswerBuffer", "SetHttpHeader", "GetInstanceSimplifiedJson"):  # by hand, and built from the SDK
        assert re.search(rf"^(?:W.*\] (?:\(plugins\) )?)?  - Method {method}\(\): ", server.log, re.M), server.log


# --- Filtering and returning metadata -----------------------------------------


def test_find_metadata_sample_filters_studies_by_a_metadata_regex(start_sample):
    server = start_sample("find_metadata", config={"UserMetadata": {"Reviewer": 1024}})
    alice = upload(server, make_dicom(patient_id="FIND-A"))["ParentStudy"]
    bob = upload(server, make_dicom(patient_id="FIND-B"))["ParentStudy"]
    for study, reviewer in [(alice, "alice"), (bob, "bob")]:
        assert server.request("PUT", f"/studies/{study}/metadata/Reviewer", reviewer).status == 200

    def find(query: dict[str, Any]) -> Any:
        answer = server.post("/tools/find", json.dumps(query))
        assert_answer(answer, 200, "application/json")
        return answer.json()

    assert find({"Level": "Study", "Query": {}, "Metadata": {"Reviewer": "^ali"}}) == [alice]
    assert sorted(find({"Level": "Study", "Query": {}, "Metadata": {"Reviewer": "^(alice|bob)$"}})) == sorted(
        [alice, bob]
    )
    assert find({"Level": "Study", "Query": {}, "Metadata": {"LastUpdate": "^2019.*$"}}) == []
    assert find({"Level": "Study", "Query": {"PatientID": "FIND-B"}}) == [bob]

    expanded = find({"Level": "Study", "Query": {}, "Expand": True, "Metadata": {"Reviewer": "^bob$"}})
    assert [study["ID"] for study in expanded] == [bob]
    assert expanded[0]["Metadata"]["Reviewer"] == "bob"
    assert expanded[0]["PatientMainDicomTags"]["PatientID"] == "FIND-B"

    assert_method_not_allowed(server.get("/tools/find"), "POST")


# --- Implementing basic paging ------------------------------------------------


def test_paging_sample_sorts_studies_by_date_and_pages(start_sample):
    server = start_sample("paging")
    for date in ["20230301", "20210101", "20240615", "20220510"]:
        upload(server, make_dicom(patient_id=f"PAGE-{date}", study_date=date))

    def sorted_studies(query: str = "") -> list[dict[str, Any]]:
        answer = server.get("/sort-studies" + query)
        assert_answer(answer, 200, "application/json")
        return answer.json()

    assert study_dates(sorted_studies()) == ["20210101", "20220510", "20230301", "20240615"]
    assert study_dates(sorted_studies("?offset=1&limit=2")) == ["20220510", "20230301"]
    assert study_dates(sorted_studies("?offset=3")) == ["20240615"]
    assert study_dates(sorted_studies("?limit=1")) == ["20210101"]
    assert sorted_studies("?offset=1&limit=2")[0]["PatientMainDicomTags"]["PatientID"] == "PAGE-20220510"
    assert_method_not_allowed(server.post("/sort-studies", b""), "GET")


# --- Performance and concurrency ----------------------------------------------


def test_computation_sample_answers_the_time_it_took(start_sample):
    server = start_sample("computation")
    answer = server.get("/computation")
    assert_answer(answer, 200, "text/plain")
    assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body


# CPython 3.14 starts processes with forkserver, whose children re-run the
# script: a module-level pool then fails there. orthanc_py keeps fork as the
# default inside Orthanc; the official plugin (7.1) does not, and the sample
# fails to load under it (README, "Where orthanc_py differs").
OFFICIAL_FORKSERVER = sys.version_info >= (3, 14)


def official_fails_with_a_module_level_pool(start_sample: Callable[..., OrthancServer], plugin: str | None,
                                            name: str) -> bool:
    if plugin is None or not OFFICIAL_FORKSERVER:
        return False
    with pytest.raises(OrthancStartError):
        start_sample(name)
    return True


def test_computation_pool_sample_answers_concurrent_requests(start_sample, plugin):
    if official_fails_with_a_module_level_pool(start_sample, plugin, "computation_pool"):
        return
    server = start_sample("computation_pool")
    with ThreadPoolExecutor(2) as executor:
        answers = list(executor.map(lambda _: server.get("/computation", timeout=60), range(2)))
    for answer in answers:
        assert_answer(answer, 200, "text/plain")
        assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body
    assert server.stop() == 0


def test_offload_dicom_sample_parses_the_instance_in_a_worker_process(start_sample, plugin):
    if official_fails_with_a_module_level_pool(start_sample, plugin, "offload_dicom"):
        return
    server = start_sample("offload_dicom")
    instance = upload(server, make_dicom(patient_id="OFFLOAD-1", patient_name="Offload^Patient"))["ID"]

    answer = server.get(f"/offload-parse/{instance}", timeout=60)
    assert_answer(answer, 200, "text/plain")
    assert re.search(r"Patient's Name\s+PN: 'Offload\^Patient'", answer.text), answer.text
    assert re.search(r"Patient ID\s+LO: 'OFFLOAD-1'", answer.text), answer.text
    assert server.stop() == 0
