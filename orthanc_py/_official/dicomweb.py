# SPDX-License-Identifier: GPL-3.0-or-later
"""DICOMweb: DICOM files and instances as DICOMweb JSON or XML."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _sdk
from .._calls import Handle
from .registration import (
    PLUGIN_ERROR,
    Service,
    _check_callable,
    _is_int,
)

__all__ = [
    "EncodeDicomWebJson",
    "EncodeDicomWebJson2",
    "EncodeDicomWebXml",
    "EncodeDicomWebXml2",
]


# --- DICOMweb ----------------------------------------------------------------------------------------

BinaryMode = _sdk.OrthancPluginDicomWebBinaryMode
_BINARY_MODES = {int(mode) for mode in BinaryMode}

DicomWebBinaryCallback = Callable[[list[tuple[int, int, int]], int, int, int], Any]


class _DicomWebEncoding:
    """One DICOMweb conversion with a Python callback for the binary tags.

    The callback runs during the SDK call, on the caller's thread: an
    exception it raises is kept, the tag left out, and the exception raised
    again to the caller once Orthanc returns.
    """

    def __init__(self, function: str, callback: DicomWebBinaryCallback | None) -> None:
        if callback is not None:
            _check_callable(function, "callback", callback)
        self.function = function
        self.callback = callback
        self.error: BaseException | None = None

    def thunk(self, c_type: Any) -> Any:
        if self.callback is None:
            return c_type()  # NULL: Orthanc's default for binary tags
        callback = self.callback

        def c_binary(node: Any, setter: Any, depth: int, groups: Any, elements: Any, indexes: Any,
                     group: int, element: int, vr: int, *payload: Any) -> None:
            if self.error is not None:
                return
            try:
                path = [(groups[i], elements[i], indexes[i]) for i in range(depth)]
                answer = callback(path, group, element, vr)
                if answer is None:
                    return  # the tag is left out
                mode, uri = answer if isinstance(answer, tuple) else (answer, None)
                if not _is_int(mode) or mode not in _BINARY_MODES:
                    raise ValueError(
                        f"the callback of orthanc.{self.function}() returned {answer!r}, not None, an "
                        "orthanc.DicomWebBinaryMode value or (DicomWebBinaryMode.BULK_DATA_URI, uri)"
                    )
                setter(node, int(mode), None if uri is None else str(uri).encode("utf-8"))
            except BaseException as error:  # raised again to the caller
                self.error = error

        return c_type(c_binary)

    def finish(self, result: ctypes.c_void_p) -> str:
        text = _capi.take_text(result.value)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if text is None:
            raise _capi.OrthancError(PLUGIN_ERROR, f"orthanc.{self.function}() got no document from Orthanc")
        return text


def _encode_dicomweb(function: str, service: Service, version2: bool, dicom: Any,
                     callback: DicomWebBinaryCallback | None) -> str:
    data = _calls._to_bytes(dicom, f"{function}() argument 'dicom'", 0xFFFFFFFF)  # dicomSize is 32-bit
    encoding = _DicomWebEncoding(function, callback)
    result = ctypes.c_void_p()
    if version2:
        params: Any = _sdk._OrthancPluginEncodeDicomWeb2()
        params.callback = thunk = encoding.thunk(_sdk.OrthancPluginDicomWebBinaryCallback2)
        params.payload = None
    else:
        params = _sdk._OrthancPluginEncodeDicomWeb()
        params.callback = thunk = encoding.thunk(_sdk.OrthancPluginDicomWebBinaryCallback)
    _capi.set_out_pointer(params, "target", result)
    buffer = ctypes.create_string_buffer(data, len(data))
    params.dicom = ctypes.addressof(buffer)
    params.dicomSize = len(data)
    _capi.invoke(service, params, f"orthanc.{function}()")
    del thunk  # kept alive until here: Orthanc calls it during invoke() only
    return encoding.finish(result)


_BINARY_CALLBACK_DOC = """
    ``callback(path, group, element, vr)``, when given, chooses how each
    binary tag (VR OB, OD, OF, OL, OW or UN) is written: ``group`` and
    ``element`` name the tag, ``vr`` is an :class:`orthanc.ValueRepresentation`
    value, and ``path`` lists the sequences that hold it, as ``(group,
    element, index)`` tuples (``[]`` at the top level). It returns ``None``
    or ``DicomWebBinaryMode.IGNORE`` to leave the tag out,
    ``DicomWebBinaryMode.INLINE_BINARY`` to write its value in base64, or
    ``(DicomWebBinaryMode.BULK_DATA_URI, uri)`` to write ``uri`` in its
    place. Without a callback, Orthanc writes binary tags its own way. An
    exception the callback raises is raised again by this function.
"""


def EncodeDicomWebJson(dicom: bytes, callback: DicomWebBinaryCallback | None = None) -> str:
    return _encode_dicomweb("EncodeDicomWebJson", Service.EncodeDicomWebJson, False, dicom, callback)


def EncodeDicomWebXml(dicom: bytes, callback: DicomWebBinaryCallback | None = None) -> str:
    return _encode_dicomweb("EncodeDicomWebXml", Service.EncodeDicomWebXml, False, dicom, callback)


def EncodeDicomWebJson2(dicom: bytes, callback: DicomWebBinaryCallback | None = None) -> str:
    return _encode_dicomweb("EncodeDicomWebJson2", Service.EncodeDicomWebJson2, True, dicom, callback)


def EncodeDicomWebXml2(dicom: bytes, callback: DicomWebBinaryCallback | None = None) -> str:
    return _encode_dicomweb("EncodeDicomWebXml2", Service.EncodeDicomWebXml2, True, dicom, callback)


def _instance_dicomweb(function: str, service: Service, instance: Handle,
                       callback: DicomWebBinaryCallback | None) -> str:
    lease = instance._take_lease() if isinstance(instance, Handle) else None
    try:
        return _instance_dicomweb_held(function, service, instance, callback)
    finally:
        if lease is not None:
            lease.release()


def _instance_dicomweb_held(function: str, service: Service, instance: Handle,
                            callback: DicomWebBinaryCallback | None) -> str:
    address = _calls._handle_converter("OrthancPluginDicomInstance")(instance, f"{function}() argument 'self'")
    encoding = _DicomWebEncoding(function, callback)
    result = ctypes.c_void_p()
    params = _sdk._OrthancPluginAccessDicomInstance2()
    _capi.set_out_pointer(params, "targetStringToFree", result)
    params.instance = ctypes.cast(address, ctypes.POINTER(_sdk.OrthancPluginDicomInstance))
    params.dicomWebCallback = thunk = encoding.thunk(_sdk.OrthancPluginDicomWebBinaryCallback2)
    params.dicomWebPayload = None
    _capi.invoke(service, params, f"orthanc.DicomInstance.{function}()")
    del thunk
    return encoding.finish(result)


def GetInstanceDicomWebJson(self: Handle, callback: DicomWebBinaryCallback | None = None) -> str:
    return _instance_dicomweb("GetInstanceDicomWebJson", Service.GetInstanceDicomWebJson, self, callback)


def GetInstanceDicomWebXml(self: Handle, callback: DicomWebBinaryCallback | None = None) -> str:
    return _instance_dicomweb("GetInstanceDicomWebXml", Service.GetInstanceDicomWebXml, self, callback)


for _function, _what, _form in (
    (EncodeDicomWebJson, "DICOMweb JSON", "a DICOM file (``bytes``)"),
    (EncodeDicomWebXml, "DICOMweb XML", "a DICOM file (``bytes``)"),
    (EncodeDicomWebJson2, "DICOMweb JSON", "a DICOM file (``bytes``)"),
    (EncodeDicomWebXml2, "DICOMweb XML", "a DICOM file (``bytes``)"),
    (GetInstanceDicomWebJson, "DICOMweb JSON", "this instance"),
    (GetInstanceDicomWebXml, "DICOMweb XML", "this instance"),
):
    _function.__doc__ = (
        f"Returns {_form} in {_what} (``str``).\n{_BINARY_CALLBACK_DOC}\n"
        + ("    :param dicom: the DICOM file.\n" if _form.startswith("a DICOM") else "")
        + "    :param callback: how to write binary tags (optional).\n"
        "    :raises OrthancError: when Orthanc cannot parse the file.\n"
        "    :raises TypeError: when ``callback`` is not callable.\n"
    )


# Methods of the orthanc module's classes, put there when it is assembled.
METHODS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("OrthancPluginDicomInstance", GetInstanceDicomWebJson),
    ("OrthancPluginDicomInstance", GetInstanceDicomWebXml),
)
