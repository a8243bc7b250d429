# SPDX-License-Identifier: GPL-3.0-or-later
"""Every hook takes handlers from both APIs in one script, as a script moved one function at a time has.

``orthanc.RegisterXxx`` and the decorators of orthanc_py add their handlers
to the same dispatcher: each handler runs, in the order the script declared
them. A hook Orthanc holds once (the storage area, the C-FIND handler)
refuses a second handler with an error naming the first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from orthanc_py.server import OrthancServer, OrthancStartError

from .dicom import make_dicom
from .official import dcmtk, needs_dcmtk

MIXED = """
import io
import json
import threading
import orthanc
import pydicom
from orthanc_py import (route, http_filter, on_change, on_received_instance, on_stored_instance,
                        instance_filter, cstore_filter, ChangeType)

SEEN = {"filters": [], "received": [], "changes": [], "stored": [], "metrics": [], "instance filters": [],
        "cstore filters": []}
LOCK = threading.Lock()

def note(kind, value):
    with LOCK:
        SEEN[kind].append(value)

# --- HTTP filters: the official one first, then two decorators -------------------
def official_filter(uri, **request):
    if uri.startswith("/mixed/"):
        note("filters", ["official", uri])
    return not uri.startswith("/mixed/refused-by-official")

orthanc.RegisterIncomingHttpRequestFilter(official_filter)
try:
    orthanc.RegisterIncomingHttpRequestFilter(official_filter)
except RuntimeError as error:
    SEEN["second official filter"] = str(error)

@http_filter
def decorated_filter(request):
    if request.path.startswith("/mixed/"):
        note("filters", ["decorator", request.path])
    return not request.path.startswith("/mixed/refused-by-decorator")

# --- routes: both styles ------------------------------------------------------------
def official_route(output, uri, **request):
    output.AnswerBuffer(json.dumps({"by": "official"}), "application/json")

orthanc.RegisterRestCallback("/mixed/official", official_route)

@route("/mixed/decorator")
def decorated_route(request):
    return {"by": "decorator"}

@route("/mixed/seen")
def seen(request):
    with LOCK:
        return json.loads(json.dumps(SEEN))

# --- received instances: the official callback renames, the decorator drops -----------------
def official_received(data, origin):
    dataset = pydicom.dcmread(io.BytesIO(data))
    note("received", ["official", dataset.PatientID])
    if dataset.PatientID == "RENAME":
        dataset.PatientName = "Renamed^By^Official"
        out = io.BytesIO()
        dataset.save_as(out)
        return orthanc.ReceivedInstanceAction.MODIFY, out.getvalue()
    return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None

orthanc.RegisterReceivedInstanceCallback(official_received)

@on_received_instance
def decorated_received(instance):
    dataset = pydicom.dcmread(io.BytesIO(instance.data))
    # What the official callback stored instead reaches the decorator.
    note("received", ["decorator", dataset.PatientID, str(dataset.PatientName)])
    if dataset.PatientID == "DROP":
        return False
    return None

# --- instance filters: both must accept -------------------------------------------------------
def official_instance_filter(instance):
    patient = json.loads(instance.GetInstanceSimplifiedJson())["PatientID"]
    note("instance filters", ["official", patient])
    return patient != "REFUSED-BY-OFFICIAL"

orthanc.RegisterIncomingDicomInstanceFilter(official_instance_filter)

@instance_filter
def decorated_instance_filter(instance):
    patient = instance.simplified_json["PatientID"]
    note("instance filters", ["decorator", patient])
    return patient != "REFUSED-BY-DECORATOR"

# --- C-STORE filters: the first refusal answers the modality -------------------------------------
def official_cstore_filter(instance):
    patient = json.loads(instance.GetInstanceSimplifiedJson())["PatientID"]
    note("cstore filters", ["official", patient])
    return 0xA900 if patient == "CSTORE-OFFICIAL" else 0

orthanc.RegisterIncomingCStoreInstanceFilter(official_cstore_filter)

@cstore_filter
def decorated_cstore_filter(instance):
    patient = instance.simplified_json["PatientID"]
    note("cstore filters", ["decorator", patient, instance.remote_aet])
    return patient != "CSTORE-DECORATOR"

# --- changes and stored instances: both styles ----------------------------------------------
def official_change(change_type, level, resource):
    if change_type == orthanc.ChangeType.NEW_INSTANCE:
        note("changes", ["official", resource])

orthanc.RegisterOnChangeCallback(official_change)

@on_change(ChangeType.NEW_INSTANCE)
def decorated_change(change):
    note("changes", ["decorator", change.resource_id])

def official_stored(instance, instance_id):
    note("stored", ["official", instance_id])

orthanc.RegisterOnStoredInstanceCallback(official_stored)

@on_stored_instance
def decorated_stored(instance):
    note("stored", ["decorator", instance.id])

# --- metrics: several callbacks, all refreshed -------------------------------------------------
def metrics_one():
    note("metrics", "one")
    orthanc.SetMetricsValue("mixed_one", 1, orthanc.MetricsType.DEFAULT)

def metrics_two():
    note("metrics", "two")
    orthanc.SetMetricsValue("mixed_two", 2, orthanc.MetricsType.DEFAULT)

orthanc.RegisterRefreshMetricsCallback(metrics_one)
orthanc.RegisterRefreshMetricsCallback(metrics_two)
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the tests of the mixed script: they look at different hooks."""
    workdir = tmp_path_factory.mktemp("mixed")
    (workdir / "script.py").write_text(MIXED)
    server = OrthancServer(str(workdir), script=str(workdir / "script.py"))
    server.start()
    yield server
    server.stop(timeout=60)


def test_http_filters_of_both_apis_each_see_every_request_and_each_can_refuse(mixed):
    assert mixed.get("/mixed/official").json() == {"by": "official"}
    assert mixed.get("/mixed/decorator").json() == {"by": "decorator"}
    assert mixed.get("/mixed/refused-by-official").status == 403
    assert mixed.get("/mixed/refused-by-decorator").status == 403
    filters = mixed.get_json("/mixed/seen")["filters"]
    asked = [entry for entry in filters if entry[1] != "/mixed/seen"]
    assert asked == [
        ["official", "/mixed/official"], ["decorator", "/mixed/official"],
        ["official", "/mixed/decorator"], ["decorator", "/mixed/decorator"],
        # The official filter refused: the decorator is not asked.
        ["official", "/mixed/refused-by-official"],
        ["official", "/mixed/refused-by-decorator"], ["decorator", "/mixed/refused-by-decorator"],
    ]


def test_the_official_function_still_takes_one_filter_as_in_the_official_plugin(mixed):
    message = mixed.get_json("/mixed/seen")["second official filter"]
    assert "orthanc.RegisterIncomingHttpRequestFilter() was already called" in message
    assert "official_filter" in message, "the error names the filter already registered"


def test_received_instances_go_through_both_apis_in_order(mixed):
    renamed = mixed.post("/instances", make_dicom(patient_id="RENAME")).json()
    assert mixed.get_json(f"/instances/{renamed['ID']}/simplified-tags")["PatientName"] == "Renamed^By^Official"
    assert mixed.post("/instances", make_dicom(patient_id="DROP")).json()["Status"] == "FilteredOut"
    received = mixed.get_json("/mixed/seen")["received"]
    assert received[-4:] == [
        ["official", "RENAME"], ["decorator", "RENAME", "Renamed^By^Official"],
        ["official", "DROP"], ["decorator", "DROP", "Doe^John"],
    ]
    patients = {p["MainDicomTags"]["PatientID"] for p in mixed.get_json("/patients?expand")}
    assert "DROP" not in patients


def test_instance_filters_of_both_apis_must_both_accept(mixed):
    patients = ("FILTER-OK", "REFUSED-BY-OFFICIAL", "REFUSED-BY-DECORATOR")
    answers = {patient: mixed.post("/instances", make_dicom(patient_id=patient)).json() for patient in patients}
    assert answers["FILTER-OK"]["Status"] == "Success"
    assert answers["REFUSED-BY-OFFICIAL"]["Status"] == "FilteredOut"
    assert answers["REFUSED-BY-DECORATOR"]["Status"] == "FilteredOut"
    asked = [entry for entry in mixed.get_json("/mixed/seen")["instance filters"] if entry[1] in patients]
    assert asked == [
        ["official", "FILTER-OK"], ["decorator", "FILTER-OK"],
        ["official", "REFUSED-BY-OFFICIAL"],  # refused: the decorator is not asked
        ["official", "REFUSED-BY-DECORATOR"], ["decorator", "REFUSED-BY-DECORATOR"],
    ]


@needs_dcmtk
def test_c_store_filters_of_both_apis_answer_the_modality_with_the_first_refusal(mixed, tmp_path):
    results = {}
    for patient in ("CSTORE-OK", "CSTORE-OFFICIAL", "CSTORE-DECORATOR"):
        path = tmp_path / f"{patient}.dcm"
        path.write_bytes(make_dicom(patient_id=patient))
        results[patient] = dcmtk("storescu", "-v", "-aet", "MODALITY", "-aec", "ORTHANC", "127.0.0.1",
                                 str(mixed.dicom_port), str(path))
    assert results["CSTORE-OK"].returncode == 0, results["CSTORE-OK"].stderr
    refused_by_official = results["CSTORE-OFFICIAL"].stdout + results["CSTORE-OFFICIAL"].stderr
    refused_by_decorator = results["CSTORE-DECORATOR"].stdout + results["CSTORE-DECORATOR"].stderr
    # DCMTK names the statuses: 0xA900 and 0xA700.
    assert "DataSetDoesNotMatchSOPClass" in refused_by_official, refused_by_official
    assert "OutOfResources" in refused_by_decorator, refused_by_decorator
    stored = {p["MainDicomTags"]["PatientID"] for p in mixed.get_json("/patients?expand")}
    assert "CSTORE-OK" in stored
    assert not {"CSTORE-OFFICIAL", "CSTORE-DECORATOR"} & stored
    asked = [entry for entry in mixed.get_json("/mixed/seen")["cstore filters"]]
    assert asked == [
        ["official", "CSTORE-OK"], ["decorator", "CSTORE-OK", "MODALITY"],
        ["official", "CSTORE-OFFICIAL"],
        ["official", "CSTORE-DECORATOR"], ["decorator", "CSTORE-DECORATOR", "MODALITY"],
    ]


def test_changes_and_stored_instances_reach_the_handlers_of_both_apis(mixed):
    stored = mixed.post("/instances", make_dicom(patient_id="BOTH")).json()["ID"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = mixed.get_json("/mixed/seen")
        changes = [entry for entry in seen["changes"] if entry[1] == stored]
        if len(changes) == 2:
            break
        time.sleep(0.1)
    assert sorted(changes) == [["decorator", stored], ["official", stored]]
    assert sorted(entry for entry in seen["stored"] if entry[1] == stored) == [
        ["decorator", stored], ["official", stored]]


def test_every_refresh_metrics_callback_runs(mixed):
    text = mixed.get("/tools/metrics-prometheus").text
    assert "mixed_one 1" in text
    assert "mixed_two 2" in text
    assert {"one", "two"} <= set(mixed.get_json("/mixed/seen")["metrics"])


@pytest.mark.parametrize(("second", "names"), [
    pytest.param("orthanc.RegisterStorageArea(create, read, remove)",
                 ("orthanc.RegisterStorageArea() was already called", "create"), id="storage-area"),
    pytest.param("orthanc.RegisterFindCallback(find)",
                 ("orthanc.RegisterFindCallback() was already called", "find"), id="c-find"),
])
def test_a_hook_orthanc_holds_once_refuses_a_second_handler_naming_the_first(orthanc_factory, second, names):
    script = f"""
import orthanc

def create(uuid, content_type, data): pass
def read(uuid, content_type): return b""
def remove(uuid, content_type): pass
def find(answers, query, issuerAet, calledAet): pass

{second}
{second}
"""
    server = orthanc_factory(script, start=False)
    with pytest.raises(OrthancStartError):
        server.start()
    for name in names:
        assert name in server.log
