# SPDX-License-Identifier: GPL-3.0-or-later
"""What only the examples of ``examples/decorators`` (the seed samples, rewritten with the decorator API) do.

What a rewrite has in common with its seed sample is tested once, over both
(and the seed sample in the official plugin too), in ``test_seed_samples.py``
(its ``decorators`` variant). Here: path parameters, a start without
``sample.dcm``, the 400s of ``find_metadata.py``, ``scheduler.py``. Each test
loads one example, unchanged, and checks what a user sees: HTTP status,
content type and body, lines in Orthanc's log. Servers come from the
module-scoped ``example`` factory and are stopped together at the end
(stopping one takes seconds), each expected to exit with code 0; the tests
about stopping stop their server themselves.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from orthanc_py.server import OrthancServer

from .checks import assert_answer, assert_error, assert_method_not_allowed, printed, upload
from .dicom import make_dicom
from .samples import DECORATORS, UNKNOWN_ID, example  # noqa: F401  (example: a fixture)

Example = Callable[..., OrthancServer]


# --- rest.py ------------------------------------------------------------------


def test_rest_path_parameters(example: Example) -> None:  # noqa: F811
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


def test_changes_without_a_sample_file_says_so(example: Example) -> None:  # noqa: F811
    server = example("changes")  # examples/decorators holds no sample.dcm
    server.wait_for_log(printed(
        f"No {DECORATORS / 'sample.dcm'}: nothing to upload (copy a DICOM file there, such as pydicom's: "
        "pydicom.data.get_testdata_file('CT_small.dcm') gives its path)"
    ))
    assert server.get_json("/instances") == []


# --- find_metadata.py ---------------------------------------------------------


def test_find_metadata_answers_400_to_bad_queries(example: Example) -> None:  # noqa: F811
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


# --- scheduler.py -------------------------------------------------------------


def test_scheduler_runs_its_timer_and_cancels_it_on_stop(example: Example) -> None:  # noqa: F811
    server = example("scheduler")
    server.wait_for_log(printed("Starting the scheduler"))
    server.wait_for_log(printed("In hello()"))

    assert server.stop() == 0
    log = server.log
    stopping = re.search(printed("Stopping the scheduler"), log, re.MULTILINE)
    assert stopping, log
    assert "still runs" not in log, log  # the timer's thread ended: orthanc_py did not have to give up on it
    last_tick = max(m.start() for m in re.finditer(printed("In hello()"), log, re.MULTILINE))
    assert last_tick < stopping.start(), log
