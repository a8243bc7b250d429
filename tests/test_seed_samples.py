# SPDX-License-Identifier: GPL-3.0-or-later
"""Every sample of the official plugin's documentation, run in a real Orthanc.

Each test loads one sample and checks what a user would see: HTTP answers,
files a DICOM receiver got, lines in Orthanc's log. Each runs over the
sample's variants (the ``sample`` fixture), which must behave the same:

- ``seed-ours``: the file of ``examples/seed``, as documented, with orthanc_py;
- ``seed-official``: the same file with the official plugin (Debian's ``orthanc-python``);
- ``decorators``: its rewrite with orthanc_py's decorators, in ``examples/decorators``.

Where the rewrite differs on purpose (a log line that says more, a 404 or a
400 where the documented sample fails, another route), the test says so
under ``if sample.decorators``. What only the rewrites do is tested in
``test_examples_decorators.py``. The rewrites' servers are shared by the
tests of this module and must all stop with exit code 0 at its end (the
``example`` fixture); the documented samples get a server per test.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest

from orthanc_py.server import OrthancServer, OrthancStartError

from .checks import assert_answer, assert_error, assert_method_not_allowed, printed, upload
from .dicom import make_dicom, make_study, sop_instance_uids
from .fixtures_dicom import StoreScp
from .samples import DECORATORS, SEED, UNKNOWN_ID, example, official_plugin  # noqa: F401  (example: a fixture)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPUTATION_ANSWER = re.compile(rb"computation done in \d+\.\d{3} seconds\n")

SEED_VARIANTS = ["seed-ours", "seed-official"]
VARIANTS = [*SEED_VARIANTS, "decorators"]


@pytest.fixture(params=["ours", "official"])
def plugin(request: pytest.FixtureRequest) -> str | None:
    """The Python plugin to load: orthanc_py's loader (``None``) or the official plugin's library."""
    return official_plugin() if request.param == "official" else None


@dataclass(frozen=True)
class Sample:
    """One variant of the samples: ``start("paging")`` starts that variant's ``paging.py``."""

    variant: str
    folder: Path
    launch: Callable[[Path, dict[str, Any] | None], OrthancServer]
    copies: Path  # where a script is copied to have files beside it

    @property
    def decorators(self) -> bool:
        """The rewrite with orthanc_py's decorators (``examples/decorators``)."""
        return self.variant == "decorators"

    @property
    def official(self) -> bool:
        """The documented sample in the official plugin."""
        return self.variant == "seed-official"

    def start(self, name: str, config: dict[str, Any] | None = None,
              beside: Mapping[str, bytes] | None = None) -> OrthancServer:
        """Starts Orthanc with the sample ``name``; ``beside``: files the script finds in its own folder.

        With ``beside``, a copy of the script runs, next to those files.
        """
        script = self.folder / f"{name}.py"
        if beside:
            script = Path(shutil.copy(script, self.copies / script.name))
            for file_name, content in beside.items():
                (self.copies / file_name).write_bytes(content)
        return self.launch(script, config)


@pytest.fixture(params=VARIANTS)
def sample(request: pytest.FixtureRequest, tmp_path: Path) -> Sample:
    """The variant the test runs; ``@pytest.mark.parametrize("sample", SEED_VARIANTS, indirect=True)`` narrows them."""
    variant: str = request.param
    if variant == "decorators":
        start_example: Callable[..., OrthancServer] = request.getfixturevalue("example")
        return Sample(variant, DECORATORS, lambda script, config: start_example(
            script.stem, config=config, script=script), tmp_path)
    plugin = official_plugin() if variant == "seed-official" else None
    make_orthanc: Callable[..., OrthancServer] = request.getfixturevalue("make_orthanc")
    return Sample(variant, SEED, lambda script, config: make_orthanc(script, config=config, plugin=plugin), tmp_path)


def study_dates(studies: list[dict[str, Any]]) -> list[str]:
    return [study["MainDicomTags"]["StudyDate"] for study in studies]


# --- Hello world --------------------------------------------------------------


def test_hello_prints_a_line(sample: Sample) -> None:
    server = sample.start("hello")
    # printed when the script loads: in the log once Orthanc answers
    assert re.search(printed("Hello world!"), server.log, re.M), server.log
    if sample.decorators:  # the rewrite adds a first route
        answer = server.get("/hello")
        assert_answer(answer, 200, "text/plain")
        assert answer.text == "Hello world!\n"


# --- Extending the REST API ---------------------------------------------------


def test_rest_answers_ok_and_prints_the_request(sample: Sample) -> None:
    server = sample.start("rest")

    answer = server.get("/toto?answer=42", headers={"X-Sample": "rest"})
    assert_answer(answer, 200, "text/plain")
    assert answer.body == b"ok\n"
    assert server.get("/tata").body == b"ok\n"
    assert server.get("/tito").status == 404

    server.wait_for_log(printed("Accessing uri: /toto"))
    server.wait_for_log(printed("Accessing uri: /tata"))
    if sample.decorators:
        # the rewrite prints the method and the query; it serves GET only (the sample answers any method)
        server.wait_for_log(printed("  method: GET, query: {'answer': '42'}"))
        assert_method_not_allowed(server.post("/toto", b""), "GET")
    else:
        # pprint.pprint(request): one key a line, sorted
        log = server.log
        assert re.search(printed("{'get': {'answer': '42'},"), log, re.M), log
        assert re.search(printed(" 'groups': ('to', 't'),"), log, re.M), log
        assert re.search(r"^.*'x-sample': 'rest'", log, re.M), log
        assert re.search(printed(" 'method': 'GET'}"), log, re.M), log


# --- Listening to changes -----------------------------------------------------


def test_changes_uploads_its_file_on_start_prints_new_instances_and_stops(sample: Sample) -> None:
    # the script uploads sample.dcm from its own folder
    dicom = make_dicom(patient_id="CHANGES", patient_name="Changes^Sample")
    server = sample.start("changes", beside={"sample.dcm": dicom})

    server.wait_for_log(printed("Started"))
    instances = server.wait_until(lambda: server.get_json("/instances"), what="the sample's upload")
    assert len(instances) == 1
    assert server.get_json(f"/instances/{instances[0]}/simplified-tags")["PatientID"] == "CHANGES"
    server.wait_for_log(printed(f"A new instance was uploaded: {instances[0]}"))

    another = upload(server, make_dicom(patient_id="CHANGES-2"))["ID"]
    server.wait_for_log(printed(f"A new instance was uploaded: {another}"))

    assert server.stop() == 0
    assert re.search(printed("Stopped"), server.log, re.M), server.log


# --- Accessing the content of a new instance ----------------------------------


def test_new_instance_prints_size_origin_and_tags(sample: Sample) -> None:
    server = sample.start("new_instance")
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


def test_new_instance_tells_an_instance_came_through_dicom(sample: Sample, tmp_path: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed (Debian/Ubuntu: apt-get install dcmtk)")
    server = sample.start("new_instance")
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

    origin = "This instance was received through the DICOM protocol"
    if sample.decorators:  # the rewrite also names the sender
        origin += " from MYSCU"
    server.wait_for_log(printed(origin))
    server.wait_for_log(r"'PatientName': 'Sent\^ByDicom',$")


# --- Calling pydicom ----------------------------------------------------------


def test_pydicom_dump_answers_the_dataset_of_an_instance(sample: Sample) -> None:
    server = sample.start("pydicom_dump")
    dicom = make_dicom(patient_id="DUMP-1", patient_name="Dump^Patient")
    instance = upload(server, dicom)["ID"]
    sop_uid = pydicom.dcmread(io.BytesIO(dicom)).SOPInstanceUID

    answer = server.get(f"/pydicom/{instance}")
    assert_answer(answer, 200, "text/plain")
    assert re.search(r"Patient's Name\s+PN: 'Dump\^Patient'", answer.text), answer.text
    assert re.search(rf"SOP Instance UID\s+UI: {re.escape(sop_uid)}", answer.text), answer.text
    if sample.decorators:  # the sample fails on an unknown instance; the rewrite answers 404
        assert_error(server.get(f"/pydicom/{UNKNOWN_ID}"), 404, f"no instance {UNKNOWN_ID}")
    assert_method_not_allowed(server.post(f"/pydicom/{instance}", b""), "GET")


# --- Auto-routing studies -----------------------------------------------------


def test_autorouting_sends_each_stable_study_to_the_modality(sample: Sample, storescp: StoreScp) -> None:
    server = sample.start("autorouting", config={"DicomModalities": {"sample": storescp.modality()}, "StableAge": 1})
    _, files = make_study(3, patient_id="ROUTE-1", patient_name="Auto^Routed")
    study = {upload(server, dicom)["ParentStudy"] for dicom in files}.pop()

    received = storescp.wait_for_files(3, timeout=60)
    assert sop_instance_uids([p.read_bytes() for p in received]) == sop_instance_uids(files)
    assert re.search(printed(f"Stable study: {study}"), server.log, re.M), server.log


# --- Rendering a thumbnail using PIL/Pillow -----------------------------------


def test_thumbnail_answers_a_small_jpeg(sample: Sample) -> None:
    from PIL import Image

    server = sample.start("thumbnail")
    instance = upload(server, make_dicom(patient_id="THUMB-1", rows=96, cols=128))["ID"]

    # sic: the sample answers its JPEG as text/plain, on /pydicom/(.*)
    route, content_type = ("/thumbnail", "image/jpeg") if sample.decorators else ("/pydicom", "text/plain")
    answer = server.get(f"{route}/{instance}")
    assert_answer(answer, 200, content_type)
    thumbnail = Image.open(io.BytesIO(answer.body))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (64, 48)  # 128x96 downsized to fit 64x64
    # the DICOM's gradient: dark top-left, bright bottom-right
    gray = thumbnail.convert("L")
    dark, bright = gray.getpixel((0, 0)), gray.getpixel((63, 47))
    assert isinstance(dark, int) and isinstance(bright, int), (dark, bright)
    assert dark < 40 and bright > 200, (dark, bright)
    if sample.decorators:  # the sample fails on an unknown instance; the rewrite answers 404
        assert_error(server.get(f"{route}/{UNKNOWN_ID}"), 404, f"no instance {UNKNOWN_ID}")
    assert_method_not_allowed(server.post(f"{route}/{instance}", b""), "GET")


# --- Inspecting the available API ---------------------------------------------


@pytest.mark.parametrize("sample", SEED_VARIANTS, indirect=True)  # nothing to rewrite with decorators
def test_introspection_prints_functions_classes_and_enumerations(sample: Sample) -> None:
    server = sample.start("introspection")
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


def test_find_metadata_filters_studies_by_a_metadata_regex(sample: Sample) -> None:
    server = sample.start("find_metadata", config={"UserMetadata": {"Reviewer": 1024}})
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

    assert_method_not_allowed(server.get("/tools/find"), "POST")


# --- Implementing basic paging ------------------------------------------------


def test_paging_sorts_studies_by_date_and_pages(sample: Sample) -> None:
    server = sample.start("paging")
    for date in ["20230301", "20210101", "20240615", "20220510"]:
        upload(server, make_dicom(patient_id=f"PAGE-{date}", study_date=date))

    def sorted_studies(query: str = "") -> list[dict[str, Any]]:
        answer = server.get("/sort-studies" + query)
        assert_answer(answer, 200, "application/json")
        studies: list[dict[str, Any]] = answer.json()
        return studies

    assert study_dates(sorted_studies()) == ["20210101", "20220510", "20230301", "20240615"]
    assert study_dates(sorted_studies("?offset=1&limit=2")) == ["20220510", "20230301"]
    assert study_dates(sorted_studies("?offset=3")) == ["20240615"]
    assert study_dates(sorted_studies("?limit=1")) == ["20210101"]
    assert study_dates(sorted_studies("?offset=9")) == []
    assert sorted_studies("?offset=1&limit=2")[0]["PatientMainDicomTags"]["PatientID"] == "PAGE-20220510"
    assert sorted_studies("?offset=1&limit=1")[0]["PatientMainDicomTags"]["PatientID"] == "PAGE-20220510"

    if sample.decorators:  # the sample fails on these (int() raises); the rewrite answers 400
        assert_error(server.get("/sort-studies?limit=x"), 400, "limit must be a whole number, not 'x'")
        assert_error(server.get("/sort-studies?offset=-1"), 400, "offset must be a whole number, not '-1'")
    assert_method_not_allowed(server.post("/sort-studies", b""), "GET")


# --- Performance and concurrency ----------------------------------------------


def test_computation_answers_the_time_it_took(sample: Sample) -> None:
    server = sample.start("computation")
    answer = server.get("/computation")
    assert_answer(answer, 200, "text/plain")
    assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body


# CPython 3.14 starts processes with forkserver, whose children re-run the
# script: a module-level pool then fails there. orthanc_py keeps fork as the
# default inside Orthanc; the official plugin (7.1) does not, and the sample
# fails to load under it (README, "Where orthanc_py differs").
OFFICIAL_FORKSERVER = sys.version_info >= (3, 14)


def official_fails_with_a_module_level_pool(sample: Sample, name: str) -> bool:
    if not sample.official or not OFFICIAL_FORKSERVER:
        return False
    with pytest.raises(OrthancStartError):
        sample.start(name)
    return True


def test_computation_pool_answers_concurrent_requests(sample: Sample) -> None:
    # the sample: a multiprocessing.Pool of its own; the rewrite: @route(offload=True), orthanc_py's workers
    if official_fails_with_a_module_level_pool(sample, "computation_pool"):
        return
    server = sample.start("computation_pool")
    with ThreadPoolExecutor(3) as executor:
        answers = list(executor.map(lambda _: server.get("/computation", timeout=60), range(3)))
    for answer in answers:
        assert_answer(answer, 200, "text/plain")
        assert COMPUTATION_ANSWER.fullmatch(answer.body), answer.body
    assert server.stop() == 0  # workers included


@pytest.mark.parametrize("sample", SEED_VARIANTS, indirect=True)  # offload=True does not cover it (its README)
def test_offload_dicom_parses_the_instance_in_a_worker_process(sample: Sample) -> None:
    if official_fails_with_a_module_level_pool(sample, "offload_dicom"):
        return
    server = sample.start("offload_dicom")
    instance = upload(server, make_dicom(patient_id="OFFLOAD-1", patient_name="Offload^Patient"))["ID"]

    answer = server.get(f"/offload-parse/{instance}", timeout=60)
    assert_answer(answer, 200, "text/plain")
    assert re.search(r"Patient's Name\s+PN: 'Offload\^Patient'", answer.text), answer.text
    assert re.search(r"Patient ID\s+LO: 'OFFLOAD-1'", answer.text), answer.text
    assert server.stop() == 0
