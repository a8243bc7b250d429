# SPDX-License-Identifier: GPL-3.0-or-later
"""The images of the ``orthanc`` module: decoders and transcoders.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

import io
import json

import pydicom

from .dicom import make_dicom
from .official import (
    recorded,
    start,
)

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
    server = start(make_orthanc, None, DECODER)
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
    server = start(make_orthanc, None, TRANSCODER)
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
