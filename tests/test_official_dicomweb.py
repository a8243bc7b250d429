# SPDX-License-Identifier: GPL-3.0-or-later
"""DICOMweb in the ``orthanc`` module: the JSON and XML encoders.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

from .dicom import make_dicom
from .official import (
    recorded,
    start,
)

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
    server = start(make_orthanc, None, DICOMWEB)
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
    assert recorded(server)["binary"][0][:3] == [[], 0x7FE0, 0x0010]

    server.upload(dicom)
    plain, chosen, xml = server.wait_until(lambda: recorded(server).get("stored"), what="the stored instance")
    assert plain["00100020"]["Value"] == ["DW-1"]
    assert chosen[PIXEL_DATA]["BulkDataURI"] == "http://example.com/pixels"
    assert "http://example.com/pixels" in xml
