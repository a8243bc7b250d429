# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module's functions and classes, called from scripts in a real Orthanc.

Where Debian's official plugin is installed, the same script runs under it too
and both must give the same answers.
"""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import pytest

import orthanc
from orthanc_py import _compat
from orthanc_py.server import find_orthanc, orthanc_version

OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
# The official plugin 4.0's API, as the introspection sample of its documentation lists it.
API = json.loads((Path(__file__).resolve().parent / "data" / "official-plugin-4.0-api.json").read_text())

PLUGINS = [
    pytest.param(None, id="ours"),
    pytest.param(
        OFFICIAL_PLUGIN,
        id="official",
        marks=pytest.mark.skipif(not Path(OFFICIAL_PLUGIN).exists(), reason="Debian's orthanc-python is not installed"),
    ),
]


def test_every_official_function_exists_with_documentation():
    api = API
    for name in api["functions"]:
        function = getattr(orthanc, name, None)
        assert callable(function), f"orthanc.{name} is missing"
        assert inspect.getdoc(function), f"orthanc.{name} has no docstring"


def test_every_official_class_method_and_enum_value_exists():
    api = API
    for class_name, members in api["classes"].items():
        if class_name.startswith("__"):
            continue
        cls = getattr(orthanc, class_name, None)
        assert inspect.isclass(cls), f"orthanc.{class_name} is missing"
        assert inspect.getdoc(cls)
        for member in members:
            kind, name = member.split(":")
            value = getattr(cls, name, None)
            assert value is not None, f"orthanc.{class_name}.{name} is missing"
            if kind == "enum":
                assert isinstance(value, int)
            elif kind == "method" and class_name != "OrthancException":
                assert inspect.ismethoddescriptor(value) or inspect.isfunction(value)
                assert inspect.getdoc(value), f"orthanc.{class_name}.{name} has no docstring"


def test_the_whole_sdk_is_reachable_except_what_is_listed():
    # Each SDK function is a function or method of the module, or listed with the reason.
    from orthanc_py import _sdk

    reachable = set()
    for name in dir(orthanc):
        reachable.add(name)
        obj = getattr(orthanc, name)
        if inspect.isclass(obj):
            reachable.update(vars(obj))
    for c_name in _sdk.FUNCTIONS:
        python_name = c_name[len("OrthancPlugin"):]
        assert python_name in reachable or c_name in _compat.UNSUPPORTED or python_name.startswith("Free"), c_name


def test_enum_values_come_from_the_sdk_header():
    from orthanc_py import _sdk

    assert _sdk.OrthancPluginChangeType.StableStudy == orthanc.ChangeType.STABLE_STUDY
    assert _sdk.OrthancPluginResourceType.None_ == orthanc.ResourceType.NONE
    assert _sdk.OrthancPluginErrorCode.UnknownResource == orthanc.ErrorCode.UNKNOWN_RESOURCE
    assert _sdk.OrthancPluginPixelFormat.SignedGrayscale16 == orthanc.PixelFormat.SIGNED_GRAYSCALE16


def test_outside_orthanc_logging_works_and_sdk_calls_explain_themselves():
    orthanc.LogWarning("a worker process may log")
    orthanc.RegisterOnChangeCallback(lambda *args: None)  # ignored outside Orthanc
    with pytest.raises(RuntimeError, match="needs the Orthanc server"):
        orthanc.RestApiGet("/system")


PROBE = """
import json
import orthanc

STORED = {}

def OnStored(dicom, instanceId):
    simplified = json.loads(dicom.GetInstanceSimplifiedJson())
    STORED[instanceId] = {
        "size": dicom.GetInstanceSize(),
        "data_size": len(dicom.GetInstanceData()),
        "origin": dicom.GetInstanceOrigin(),
        "rest_api": orthanc.InstanceOrigin.REST_API,
        "transfer_syntax": dicom.GetInstanceMetadata("TransferSyntax"),
        "missing_metadata": dicom.GetInstanceMetadata("NoSuchMetadata"),
        "has_metadata": dicom.HasInstanceMetadata("TransferSyntax"),
        "has_pixels": dicom.HasInstancePixelData(),
        "frames": dicom.GetInstanceFramesCount(),
        "patient": simplified["PatientID"],
        "json_has_tags": "0010,0020" in json.loads(dicom.GetInstanceJson()),
    }

def Stored(output, uri, **request):
    output.AnswerBuffer(json.dumps(STORED[request["groups"][0]]), "application/json")

def Probe(output, uri, **request):
    r = {}
    r["md5"] = orthanc.ComputeMd5(b"hello")
    r["sha1"] = orthanc.ComputeSha1(b"hello")
    r["uuid"] = len(orthanc.GenerateUuid())
    r["dictionary"] = orthanc.LookupDictionary("PatientName")
    r["error"] = orthanc.GetErrorDescription(orthanc.ErrorCode.UNKNOWN_RESOURCE)
    r["check"] = [orthanc.CheckVersion(), orthanc.CheckVersionAdvanced(1, 0, 0), orthanc.CheckVersionAdvanced(99, 0, 0)]
    r["tag"] = orthanc.GetTagName(0x0010, 0x0010, "")
    orthanc.SetGlobalProperty(5000, "stored value")
    r["property"] = [orthanc.GetGlobalProperty(5000, "default"), orthanc.GetGlobalProperty(5001, "default")]
    packed = orthanc.BufferCompression(b"abc" * 100, orthanc.CompressionType.ZLIB_WITH_SIZE, 0)
    unpacked = orthanc.BufferCompression(packed, orthanc.CompressionType.ZLIB_WITH_SIZE, 1)
    r["compression"] = [len(packed) < 300, unpacked.decode()]
    pixels = bytes(range(12))
    image = orthanc.CreateImageFromBuffer(orthanc.PixelFormat.GRAYSCALE8, 4, 3, 4, pixels)
    r["image"] = [image.GetImageWidth(), image.GetImageHeight(), image.GetImagePitch(),
                  image.GetImagePixelFormat(), image.GetImageBuffer() == pixels]
    png = orthanc.CompressPngImage(orthanc.PixelFormat.GRAYSCALE8, 4, 3, 4, pixels)
    r["png"] = [png[:8].hex(), orthanc.UncompressImage(png, orthanc.ImageFormat.PNG).GetImageBuffer() == pixels]
    rgb = image.ConvertPixelFormat(orthanc.PixelFormat.RGB24)
    r["converted"] = [rgb.GetImagePixelFormat(), rgb.GetImagePitch()]
    r["configuration"] = json.loads(orthanc.GetConfiguration())["Name"]
    r["system"] = json.loads(orthanc.RestApiGet("/system"))["Name"]
    r["peers"] = orthanc.GetPeers().GetPeersCount()
    output.AnswerBuffer(json.dumps(r), "application/json")

orthanc.RegisterOnStoredInstanceCallback(OnStored)
orthanc.RegisterRestCallback("/probe", Probe)
orthanc.RegisterRestCallback("/stored/(.*)", Stored)
"""


def make_dicom(patient_id: str) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.PatientID, ds.PatientName = patient_id, "Probe^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = bytes([0, 64, 128, 255])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """The probe script's answers under each plugin available."""
    from orthanc_py.server import OrthancServer

    answers = {}
    dicom = make_dicom("PROBE-1")
    for plugin in (None, OFFICIAL_PLUGIN):
        if plugin is not None and not Path(plugin).exists():
            continue
        workdir = tmp_path_factory.mktemp("probe")
        (workdir / "probe.py").write_text(PROBE)
        server = OrthancServer(str(workdir / "orthanc"), script=str(workdir / "probe.py"), plugin=plugin)
        server.start()
        try:
            probe = server.get("/probe")
            assert probe.status == 200, server.log[-3000:]
            upload = server.post("/instances", dicom)
            assert upload.status == 200
            stored = server.get_json(f"/stored/{upload.json()['ID']}")
            answers["ours" if plugin is None else "official"] = {"probe": probe.json(), "stored": stored,
                                                                  "size": len(dicom)}
        finally:
            assert server.stop() == 0
    return answers


def test_sdk_functions_answer_what_a_user_expects(probes):
    r = probes["ours"]["probe"]
    assert r["md5"] == "5d41402abc4b2a76b9719d911017c592"
    assert r["sha1"] == "aaf4c61d-dcc5e8a2-dabede0f-3b482cd9-aea9434d"  # Orthanc's own layout
    assert r["uuid"] == 36
    assert r["dictionary"] == {"Group": 0x10, "Element": 0x10, "ValueRepresentation": orthanc.ValueRepresentation.PN,
                               "MinMultiplicity": 1, "MaxMultiplicity": 1}
    assert r["error"] == "Unknown resource"
    assert r["check"] == [1, 1, 0]
    assert r["tag"] == "PatientName"
    assert r["property"] == ["stored value", "default"]
    assert r["compression"] == [True, "abc" * 100]
    assert r["image"] == [4, 3, 4, orthanc.PixelFormat.GRAYSCALE8, True]
    assert r["png"] == ["89504e470d0a1a0a", True]
    assert r["converted"] == [orthanc.PixelFormat.RGB24, 12]
    assert r["configuration"] == r["system"] == "orthanc-py"
    assert r["peers"] == 0


def test_a_stored_instance_is_described_as_uploaded(probes):
    stored, size = probes["ours"]["stored"], probes["ours"]["size"]
    assert stored["size"] == stored["data_size"] == size
    assert stored["origin"] == stored["rest_api"]
    assert stored["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert stored["missing_metadata"] is None
    assert stored["has_metadata"] == 1
    assert stored["has_pixels"] == 1
    assert stored["frames"] == 1
    assert stored["patient"] == "PROBE-1"
    assert stored["json_has_tags"] is True


def test_answers_match_the_official_plugin(probes):
    if "official" not in probes:
        pytest.skip("Debian's orthanc-python is not installed")
    assert probes["ours"]["probe"] == probes["official"]["probe"]
    assert probes["ours"]["stored"] == probes["official"]["stored"]


def test_a_function_newer_than_the_running_orthanc_raises_a_clear_error(make_orthanc):
    # No SDK function of this header is newer than this Orthanc, so the
    # running version is made to look older than GetPeers (1.4.2) for one
    # call: the check is the one every generated call goes through.
    server = make_orthanc(
        """
        import orthanc
        from orthanc_py import _calls, _capi, route

        @route("/future")
        def call_future(request):
            real, _capi.release = _capi.release, (1, 4, 1)
            try:
                orthanc.GetPeers()
            except _calls.SdkVersionError as error:
                return {"error": str(error), "is_orthanc_exception": isinstance(error, orthanc.OrthancException)}
            finally:
                _capi.release = real
        """
    )
    answer = server.get_json("/future")
    running = orthanc_version(find_orthanc())
    assert f"GetPeers() needs Orthanc 1.4.2 or newer; this Orthanc is {running}" in answer["error"]
    assert answer["is_orthanc_exception"] is True
