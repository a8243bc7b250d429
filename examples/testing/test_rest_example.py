# SPDX-License-Identifier: GPL-3.0-or-later
"""What a user's tests for their own Orthanc script look like.

Run them with ``pytest`` in this folder: the ``orthanc`` fixture (from the
orthanc_py package) starts a real Orthanc with the script that ``pytest.ini``
names, on free ports, with an empty storage folder, for each test.
"""

import io

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_dicom(patient_id: str) -> bytes:
    """A small DICOM file, made here: tests need no downloaded data."""
    ds = Dataset()
    ds.PatientID, ds.PatientName = patient_id, "Test^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def test_hello_route(orthanc):
    answer = orthanc.get("/hello/world")
    assert answer.status == 200
    assert answer.text == "Hello world!\n"


def test_add_answers_json(orthanc):
    assert orthanc.get_json("/add/2/40") == {"a": 2, "b": 40, "sum": 42}


def test_the_plain_route_prints_to_orthancs_log(orthanc):
    assert orthanc.get("/toto?answer=42").text == "ok\n"
    orthanc.wait_for_log(r"Accessing uri: /toto")


def test_patient_summary_after_an_upload(orthanc):
    patient = orthanc.upload(make_dicom("SUMMARY-1"))["ParentPatient"]
    summary = orthanc.get_json(f"/patients-summary/{patient}")
    assert summary["name"] == "Test^Patient"


def test_an_unknown_patient_is_a_404(orthanc):
    assert orthanc.get("/patients-summary/nope").status == 404


def test_another_script_with_the_factory(orthanc_factory):
    other = orthanc_factory(
        """
        from orthanc_py import route

        @route("/version")
        def version(request):
            return "2"
        """
    )
    assert other.get("/version").text == "2"
