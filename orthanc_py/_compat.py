# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module: the official Python plugin's API, name for name.

Scripts written for the official plugin run unchanged: ``import orthanc``
resolves to this module (re-exported by the top-level ``orthanc`` package).

Most of it is built from the SDK facts in ``_sdk.FUNCTIONS``: an SDK function
``OrthancPluginXxx`` becomes ``orthanc.Xxx``, or a method ``Xxx`` of the class
of its first argument when that is an Orthanc object (``RestOutput``,
``DicomInstance``, ``Image``...). Callback registrations and the few functions
whose Python form differs from their C form are written by hand below.
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import logging
from typing import Any, Callable, Optional

from . import _calls, _capi, _enums, _events, _sdk
from ._calls import Handle
from ._official import rest
from ._official.registration import _call, _handler_name, _SdkMethod
from ._official.rest import RegisterRestCallback, RestOutput  # noqa: F401  (exported through the loop below)

OrthancException = _capi.OrthancError
"""Raised when an Orthanc SDK call fails; ``args`` are ``(code, description)``."""

_PREFIX = "OrthancPlugin"

__all__: list[str] = ["OrthancException"]


# --- enumerations --------------------------------------------------------------

def _enum_class(source: Any) -> type:
    """An official-style enum: a plain class whose UPPER_CASE attributes are ints.

    The names and values are those of the generated ``_enums`` module; the
    official plugin's enums are plain classes (not :class:`enum.IntEnum`),
    which its introspection sample relies on.
    """
    members = {member.name: int(member) for member in source}
    doc = (inspect.getdoc(source) or source.__name__).strip()
    return type(source.__name__, (), {"__doc__": doc, "__module__": "orthanc", **members})


for _source in vars(_enums).values():
    if isinstance(_source, type) and issubclass(_source, enum.IntEnum) and _source is not enum.IntEnum:
        globals()[_source.__name__] = _enum_class(_source)
        __all__.append(_source.__name__)


# --- Orthanc objects ---------------------------------------------------------------

class DicomInstance(Handle):
    """A DICOM instance: received, stored, or created from a buffer."""

    c_type_name = "OrthancPluginDicomInstance"
    after_callback = ("copy what you need while the callback runs: GetInstanceData() (the DICOM file), "
                      "GetInstanceSimplifiedJson()...")

    def HasInstanceMetadata(self, metadata: str) -> int:
        """Returns 1 if the instance has the metadata ``metadata``, 0 otherwise."""
        return int(_calls.sdk_function("OrthancPluginHasInstanceMetadata", raw=True)(self, metadata) != 0)

    def HasInstancePixelData(self) -> int:
        """Returns 1 if the instance has pixel data, 0 otherwise."""
        return int(_calls.sdk_function("OrthancPluginHasInstancePixelData", raw=True)(self) != 0)

    def GetInstanceData(self) -> bytes:
        """Returns the DICOM file of the instance, as bytes."""
        lease = self._take_lease()  # the data stays Orthanc's: the instance must outlive the copy
        try:
            address = _calls.sdk_function("OrthancPluginGetInstanceData", raw=True)(self)
            return _capi.copy_memory(address, _call("OrthancPluginGetInstanceSize", self))
        finally:
            if lease is not None:
                lease.release()


class Image(Handle):
    """An image in memory, decoded from DICOM, PNG or JPEG, or created empty."""

    c_type_name = "OrthancPluginImage"
    _pixels: Any = None  # the memory of an accessor image, which Orthanc points at

    def close(self) -> None:
        """Frees the image now, then the pixels it was made over (if any)."""
        super().close()
        self._pixels = None

    def GetImageBuffer(self) -> bytes:
        """Returns a copy of the pixels: ``GetImagePitch() * GetImageHeight()`` bytes."""
        address = _calls.sdk_function("OrthancPluginGetImageBuffer", raw=True)(self)
        return _capi.copy_memory(address, _call("OrthancPluginGetImagePitch", self) * _call("OrthancPluginGetImageHeight", self))


class FindQuery(Handle):
    """The query of a C-FIND request, given to a find callback."""

    c_type_name = "OrthancPluginFindQuery"
    after_callback = "read the query while the callback runs"

    def GetFindQueryTagGroup(self, index: int) -> int:
        """Returns the group of the ``index``-th tag of the query."""
        return int(_call("OrthancPluginGetFindQueryTag", self, index)[0])

    def GetFindQueryTagElement(self, index: int) -> int:
        """Returns the element of the ``index``-th tag of the query."""
        return int(_call("OrthancPluginGetFindQueryTag", self, index)[1])


_HANDLE_CLASSES: dict[str, type[Handle]] = {
    cls.c_type_name: cls for cls in (RestOutput, DicomInstance, Image, FindQuery)
}
for _opaque in _sdk.OPAQUE_TYPES:
    _c_name = _opaque.__name__
    if _c_name not in _HANDLE_CLASSES:
        _HANDLE_CLASSES[_c_name] = type(
            _c_name[len(_PREFIX):],
            (Handle,),
            {"c_type_name": _c_name, "__doc__": f"An Orthanc object ({_c_name}).", "__module__": "orthanc"},
        )
for _cls in _HANDLE_CLASSES.values():
    _cls.__module__ = "orthanc"
    for _name, _member in list(vars(_cls).items()):
        if inspect.isfunction(_member) and not _name.startswith("_"):
            setattr(_cls, _name, _SdkMethod(_member))
    _calls.HANDLE_CLASSES[_cls.c_type_name] = _cls
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)


# --- functions and methods built from the SDK ------------------------------------

# The RestOutput methods that send the answer: after one of them, the request is answered.
_ANSWERING = {
    "AnswerBuffer", "CompressAndAnswerPngImage", "CompressAndAnswerJpegImage", "CompressAndAnswerImage",
    "Redirect", "SendHttpStatus", "SendHttpStatusCode", "SendMethodNotAllowed", "SendUnauthorized",
    "StartMultipartAnswer",
}

UNSUPPORTED: dict[str, str] = {}
"""SDK functions not reachable from this module, with the reason (see ``orthanc-py sdk-coverage``)."""


def _make_function(compiled: Any, python_name: str, parameters: list[str], answering: bool) -> Callable[..., Any]:
    def function(*args: Any) -> Any:
        result = compiled(*args)
        if answering:
            args[0].answered = True
        return result

    fn = compiled.fn
    function.__name__ = function.__qualname__ = python_name
    function.__module__ = "orthanc"
    doc = fn.doc or f"Calls {fn.name}."
    function.__doc__ = f"{doc}\n\nWraps the SDK function ``{fn.name}``."
    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.POSITIONAL_ONLY) for p in parameters]
    )
    return function


def _build_from_sdk(namespace: dict[str, Any]) -> None:
    for fn in _sdk.FUNCTIONS.values():
        python_name = fn.name[len(_PREFIX):]
        if python_name in namespace or any(python_name in vars(cls) for cls in _HANDLE_CLASSES.values()):
            continue  # written by hand
        try:
            compiled = _calls.sdk_function(fn.name)
        except _calls.UnsupportedFunction as error:
            UNSUPPORTED[fn.name] = str(error).split(": ", 1)[-1]
            continue
        # A method of the class of its first Orthanc-object argument.
        first = compiled.input_types[0] if compiled.input_types else ""
        owner = _HANDLE_CLASSES.get(first)
        parameters = [name for name, _ in compiled.inputs]
        if owner is not None:
            parameters[0] = "self"
        if owner is not None and python_name.startswith("Free"):
            continue  # Handle.close() frees
        if owner is not None:
            answering = owner is RestOutput and python_name in _ANSWERING
            function = _make_function(compiled, python_name, parameters, answering)
            setattr(owner, python_name, _SdkMethod(function))
        else:
            namespace[python_name] = _make_function(compiled, python_name, parameters, False)
            __all__.append(python_name)


# --- written by hand: versions, dictionary, images, logging, callbacks -------------------

def CheckVersionAdvanced(expectedMajor: int, expectedMinor: int, expectedRevision: int) -> int:
    """Returns 1 if the running Orthanc is at least the given version (or a development build), else 0."""
    running = _capi.orthanc_version()
    if running == "mainline":
        return 1
    try:
        have = tuple(int(part) for part in running.split(".")[:3])
    except ValueError:
        return 0
    return int(have >= (int(expectedMajor), int(expectedMinor), int(expectedRevision)))


def CheckVersion() -> int:
    """Returns 1 if the running Orthanc is at least the version of the SDK orthanc_py was built from, else 0."""
    return CheckVersionAdvanced(*_sdk.SDK_VERSION)


def GetErrorDescription(error: int) -> str:
    """Returns Orthanc's description of an error code."""
    return _capi.error_description(int(error))


def LookupDictionary(name: str) -> dict[str, int]:
    """Looks a DICOM tag up in Orthanc's dictionary by name (``"PatientName"``) or number (``"0010,0010"``).

    :returns: ``{"Group", "Element", "ValueRepresentation", "MinMultiplicity", "MaxMultiplicity"}``.
    :raises OrthancException: for an unknown tag.
    """
    entry = _call("OrthancPluginLookupDictionary", name)
    return {
        "Group": entry["group"],
        "Element": entry["element"],
        "ValueRepresentation": entry["vr"],
        "MinMultiplicity": entry["minMultiplicity"],
        "MaxMultiplicity": entry["maxMultiplicity"],
    }


def _image_arguments(what: str, format: Any, width: Any, height: Any, pitch: Any) -> tuple[int, int, int, int]:
    uint32 = _calls._int_converter("uint32_t")
    return (_calls._int_converter("OrthancPluginPixelFormat")(format, f"{what} argument 'format'"),
            uint32(width, f"{what} argument 'width'"), uint32(height, f"{what} argument 'height'"),
            uint32(pitch, f"{what} argument 'pitch'"))


def _pixels_of(image: Image) -> tuple[int, int, int, int, int]:
    """``(address, format, width, height, pitch)`` of an image's pixels."""
    return (_calls.sdk_function("OrthancPluginGetImageBuffer", raw=True)(image),
            _call("OrthancPluginGetImagePixelFormat", image), _call("OrthancPluginGetImageWidth", image),
            _call("OrthancPluginGetImageHeight", image), _call("OrthancPluginGetImagePitch", image))


def CreateImageFromBuffer(format: int, width: int, height: int, pitch: int, buffer: bytes) -> Image:
    """Creates an image from raw pixels: ``height`` rows of ``pitch`` bytes each.

    The pixels are copied into an image Orthanc owns, so ``buffer`` may be
    released afterwards.

    :raises ValueError: when ``buffer`` is shorter than the image, or a size is negative or too large.
    """
    what = "CreateImageFromBuffer()"
    format, width, height, pitch = _image_arguments(what, format, width, height, pitch)
    _calls.check_image_buffer(what, format, width, height, pitch,
                              _calls.buffer_size(buffer, f"{what} argument 'buffer'"))
    data = _calls._to_bytes(buffer, f"{what} argument 'buffer'")
    image: Image = _call("OrthancPluginCreateImage", format, width, height)
    target, _, _, _, target_pitch = _pixels_of(image)
    _capi.copy_rows(target, target_pitch, data, pitch, height, width * _calls.BYTES_PER_PIXEL[format])
    return image


def CreateImageAccessor(format: int, width: int, height: int, pitch: int, buffer: Any) -> Image:
    """Creates an image whose pixels are ``buffer`` itself: ``height`` rows of ``pitch`` bytes.

    Orthanc reads and writes the pixels in place for as long as the image
    lives, so the image keeps what it points at: a writable buffer
    (``bytearray``, writable ``memoryview``, NumPy array...) is shared, and
    locked against resizing until the image is closed; a read-only one
    (``bytes``) is copied into memory the image owns, which
    :meth:`Image.DrawText` may then change without touching ``buffer``.

    :raises ValueError: when ``buffer`` is shorter than the image, or a size is negative or too large.
    """
    what = "CreateImageAccessor()"
    format, width, height, pitch = _image_arguments(what, format, width, height, pitch)
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(f"{what} argument 'buffer' must be bytes, bytearray or another buffer, "
                        f"not {type(buffer).__name__}") from None
    _calls.check_image_buffer(what, format, width, height, pitch, view.nbytes)
    pixels: Any
    if view.readonly or not view.c_contiguous:
        pixels = (ctypes.c_char * view.nbytes).from_buffer_copy(view.tobytes())
    else:
        pixels = (ctypes.c_char * view.nbytes).from_buffer(view.cast("B"))
    target = ctypes.c_void_p()
    params = _sdk._OrthancPluginCreateImage()
    _capi._set_out_pointer(params, "target", target)
    params.format, params.width, params.height, params.pitch = format, width, height, pitch
    params.buffer = ctypes.addressof(pixels)
    _capi.invoke(_capi.Service.CreateImageAccessor, params, what)
    if not target.value:
        raise _capi.OrthancError(int(_capi.ErrorCode.Plugin), f"{what}: Orthanc created no image")
    image = Image(target.value, owned=True)
    image._pixels = pixels  # freed with the image, never before: Orthanc points at it
    return image


def _image_copy(image: Image) -> Image:
    """An image with pixels of its own (Orthanc's memory), equal to ``image``."""
    address, format, width, height, pitch = _pixels_of(image)
    copy: Image = _call("OrthancPluginCreateImage", format, width, height)
    target, _, _, _, target_pitch = _pixels_of(copy)
    row = width * _calls.BYTES_PER_PIXEL.get(format, 0) or min(pitch, target_pitch)
    _capi.copy_rows(target, target_pitch, _capi.copy_memory(address, pitch * height), pitch, height, row)
    return copy


def _log(log: Callable[[str], None], level: int, message: str) -> None:
    try:
        log(str(message))
    except _capi.NotInOrthancError:
        # In a worker process there is no Orthanc log: use Python's logging.
        logging.getLogger("orthanc").log(level, "%s", message)


def LogInfo(message: str) -> None:
    """Writes an information line to Orthanc's log (shown when Orthanc runs with ``--verbose``)."""
    _log(_capi.log_info, logging.INFO, message)


def LogWarning(message: str) -> None:
    """Writes a warning line to Orthanc's log."""
    _log(_capi.log_warning, logging.WARNING, message)


def LogError(message: str) -> None:
    """Writes an error line to Orthanc's log."""
    _log(_capi.log_error, logging.ERROR, message)


def RegisterOnChangeCallback(callback: Callable[[int, int, Optional[str]], None]) -> None:
    """Registers ``callback(changeType, level, resourceId)`` for every change in Orthanc.

    Changes are delivered in order on a thread of orthanc_py's, never on
    Orthanc's own, so the callback may call the REST API. Several callbacks
    may be registered; each is called in registration order.
    """
    _events.changes.add(callback, "orthanc.RegisterOnChangeCallback()")


def RegisterOnStoredInstanceCallback(callback: Callable[[DicomInstance, str], None]) -> None:
    """Registers ``callback(dicom, instanceId)``, called each time Orthanc stores an instance.

    ``dicom`` (:class:`DicomInstance`) is valid during the call only. Several
    callbacks may be registered; each is called in registration order, and
    one that raises is logged without stopping the others.
    """
    if not callable(callback):
        raise TypeError(
            f"RegisterOnStoredInstanceCallback() argument 'callback' must be callable, not {type(callback).__name__}"
        )

    def deliver(address: int, instance_id: str) -> None:
        instance = DicomInstance.lent(address)
        try:
            callback(instance, instance_id)
        finally:
            _capi.expire(instance)  # lent by Orthanc for this call only

    _events.stored_instances.add(deliver, "orthanc.RegisterOnStoredInstanceCallback()", _handler_name(callback))


from ._callbacks import (  # noqa: E402, F401  (exported through the loop below)
    ChunkedHttpClient,
    CreateJob,
    EncodeDicomWebJson,
    EncodeDicomWebJson2,
    EncodeDicomWebXml,
    EncodeDicomWebXml2,
    RegisterChunkedRestCallback,
    RegisterDecodeImageCallback,
    RegisterFindCallback,
    RegisterIncomingCStoreInstanceFilter,
    RegisterIncomingDicomInstanceFilter,
    RegisterIncomingHttpRequestFilter,
    RegisterJobsUnserializer,
    RegisterMoveCallback,
    RegisterReceivedInstanceCallback,
    RegisterRefreshMetricsCallback,
    RegisterStorageArea,
    RegisterStorageCommitmentScpCallback,
    RegisterTranscoderCallback,
    RegisterWebDavCollection,
    RegisterWorklistCallback,
)

for _name in ("LogInfo", "LogWarning", "LogError", "RegisterOnChangeCallback", "RegisterRestCallback",
              "RegisterOnStoredInstanceCallback", "CheckVersion", "CheckVersionAdvanced", "GetErrorDescription",
              "LookupDictionary", "CreateImageFromBuffer", "CreateImageAccessor",
              "RegisterIncomingHttpRequestFilter", "RegisterReceivedInstanceCallback",
              "RegisterIncomingCStoreInstanceFilter", "RegisterFindCallback", "RegisterWorklistCallback",
              "RegisterMoveCallback", "RegisterStorageArea",
              "RegisterRefreshMetricsCallback", "RegisterIncomingDicomInstanceFilter", "CreateJob",
              "RegisterJobsUnserializer", "RegisterStorageCommitmentScpCallback", "RegisterDecodeImageCallback",
              "RegisterTranscoderCallback", "EncodeDicomWebJson", "EncodeDicomWebXml", "EncodeDicomWebJson2",
              "EncodeDicomWebXml2", "ChunkedHttpClient", "RegisterChunkedRestCallback",
              "RegisterWebDavCollection"):
    globals()[_name].__module__ = "orthanc"
    __all__.append(_name)

_build_from_sdk(globals())
__all__.sort()


rest.flatten_lent_output()
