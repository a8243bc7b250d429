# SPDX-License-Identifier: GPL-3.0-or-later
"""Small valid DICOM files made with pydicom, for uploading to a test Orthanc.

Nothing is downloaded: every file is built here, with real pixel data
(MONOCHROME2, 16 bits, a gradient) and a proper file meta information
(Explicit VR Little Endian), so Orthanc stores it and renders it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

_SOP_CLASS_FOR_MODALITY = {"CT": CT_IMAGE_STORAGE}


def gradient_pixels(rows: int, cols: int) -> bytes:
    """Little-endian unsigned 16-bit pixels rising from the top-left corner (0) to the bottom-right."""
    top = max(rows + cols - 2, 1)
    values = [((r + c) * 4000) // top for r in range(rows) for c in range(cols)]
    return b"".join(v.to_bytes(2, "little") for v in values)


def make_dicom(
    patient_id: str = "PATIENT-1",
    patient_name: str = "Doe^John",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    study_date: str = "20240101",
    modality: str = "CT",
    rows: int = 8,
    cols: int = 8,
    instance_number: int = 1,
    study_description: str = "Test study",
) -> bytes:
    """The bytes of one DICOM file (Part 10, Explicit VR Little Endian) holding a small image.

    UIDs that are not given are generated, so two calls make two studies.
    A CT gets the CT Image Storage SOP class, another modality Secondary Capture.
    """
    sop_class = _SOP_CLASS_FOR_MODALITY.get(modality, SECONDARY_CAPTURE_IMAGE_STORAGE)
    sop_uid = sop_uid or generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset("generated.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study_description
    ds.SeriesDescription = f"{modality} series"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2000
    ds.WindowWidth = 4000
    ds.PixelData = gradient_pixels(rows, cols)

    out = io.BytesIO()
    # pydicom 3 spells it enforce_file_format; pydicom 2 write_like_original=False.
    try:
        ds.save_as(out, enforce_file_format=True)
    except TypeError:  # pragma: no cover - pydicom 2
        ds.save_as(out, write_like_original=False)
    return out.getvalue()


def make_study(
    instances: int,
    patient_id: str = "PATIENT-1",
    patient_name: str = "Doe^John",
    study_date: str = "20240101",
    study_uid: str | None = None,
    **kwargs: object,
) -> tuple[str, list[bytes]]:
    """One study of ``instances`` images in one series: its StudyInstanceUID and the files."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    files = [
        make_dicom(
            patient_id=patient_id,
            patient_name=patient_name,
            study_uid=study_uid,
            series_uid=series_uid,
            study_date=study_date,
            instance_number=number,
            **kwargs,  # type: ignore[arg-type]
        )
        for number in range(1, instances + 1)
    ]
    return study_uid, files


def sop_instance_uids(files: Sequence[bytes]) -> set[str]:
    """The SOPInstanceUID of each DICOM file given as bytes."""
    import pydicom

    return {str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID) for data in files}
