# SPDX-License-Identifier: GPL-3.0-or-later
"""Images: created from pixels, decoded from DICOM by the script's decoders, and transcoders."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _hooks, _sdk, _sdk_calls
from .._calls import Handle
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    ErrorCode,
    Service,
    _call,
    _check_callable,
    _hand_over,
    _name,
)

__all__ = [
    "CreateImageAccessor",
    "CreateImageFromBuffer",
    "Image",
    "RegisterDecodeImageCallback",
    "RegisterTranscoderCallback",
]


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
        address = _sdk_calls.sdk_function("OrthancPluginGetImageBuffer", raw=True)(self)
        return _capi.copy_memory(
            address, _call("GetImagePitch", self) * _call("GetImageHeight", self)
        )


def _image_arguments(what: str, format: Any, width: Any, height: Any, pitch: Any) -> tuple[int, int, int, int]:
    uint32 = _calls._int_converter("uint32_t")
    return (_calls._int_converter("OrthancPluginPixelFormat")(format, f"{what} argument 'format'"),
            uint32(width, f"{what} argument 'width'"), uint32(height, f"{what} argument 'height'"),
            uint32(pitch, f"{what} argument 'pitch'"))


def _pixels_of(image: Image) -> tuple[int, int, int, int, int]:
    """``(address, format, width, height, pitch)`` of an image's pixels."""
    return (_sdk_calls.sdk_function("OrthancPluginGetImageBuffer", raw=True)(image),
            _call("GetImagePixelFormat", image), _call("GetImageWidth", image),
            _call("GetImageHeight", image), _call("GetImagePitch", image))


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
    image: Image = _call("CreateImage", format, width, height)
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
    _capi.set_out_pointer(params, "target", target)
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
    copy: Image = _call("CreateImage", format, width, height)
    target, _, _, _, target_pitch = _pixels_of(copy)
    row = width * _calls.BYTES_PER_PIXEL.get(format, 0) or min(pitch, target_pitch)
    _capi.copy_rows(target, target_pitch, _capi.copy_memory(address, pitch * height), pitch, height, row)
    return copy


def _with_own_pixels(image: Image) -> Image:
    """The image to hand over to Orthanc: ``image``, or a copy when it is an accessor image.

    An accessor image points at memory this Python object owns, which Orthanc
    would keep reading after the object is gone: Orthanc gets a copy with
    pixels of its own.
    """
    if image._pixels is None:
        return image
    copy = _image_copy(image)
    image.close()
    return copy


# --- image decoding and transcoding --------------------------------------------------------

# What a decoder or transcoder returns to say "not mine": Orthanc then tries
# the next one (another plugin, or its built-in DCMTK one).
_DECLINED = int(ErrorCode.NotImplemented)

DecodeImageCallback = Callable[[bytes, int], Any]


def RegisterDecodeImageCallback(callback: DecodeImageCallback) -> None:
    """Registers ``callback(dicom, frameIndex)``, which decodes the frames of DICOM images for Orthanc.

    Orthanc asks it whenever it needs pixels (previews, ``/frames/...``,
    ``/rendered``...): ``dicom`` is the DICOM file (``bytes``) and
    ``frameIndex`` the frame wanted (an ``int``, from 0). The callback
    returns the decoded frame as an :class:`orthanc.Image` it created (e.g.
    with :func:`orthanc.CreateImageFromBuffer`), which Orthanc then owns, or
    ``None`` when it cannot decode that file: Orthanc then uses its other
    decoders. The configuration option ``BuiltinDecoderTranscoderOrder``
    says whether Orthanc's own decoder comes before (``"Before"``) or after
    (``"After"``, the default) the plugins.

    When the callback raises or returns something else, the reason goes to
    Orthanc's log and Orthanc goes on as for ``None``.

    :param callback: the decoder.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a decoder is already registered.
    """
    function = "RegisterDecodeImageCallback"
    _check_callable(function, "callback", callback)
    where = f"the image decoder {_name(callback)}"
    image_pointer = ctypes.POINTER(_sdk.OrthancPluginImage)

    def c_decode(target: Any, dicom: int | None, size: int, frame_index: int) -> int:
        image = callback(_capi.copy_memory(dicom, size), frame_index)
        if image is None:
            return _DECLINED
        address = _hand_over(image, "OrthancPluginImage", where, _with_own_pixels)
        if address is None:
            return PLUGIN_ERROR
        target[0] = ctypes.cast(address, image_pointer)
        return SUCCESS

    params = _sdk._OrthancPluginDecodeImageCallback()
    params.callback = _capi.trampoline(_sdk.OrthancPluginDecodeImageCallback, where, PLUGIN_ERROR)(c_decode)
    by = f"orthanc.{function}()"
    _hooks.decode_image.add(callback, by, where, once=True,
                            connect=lambda: _hooks.register(Service.RegisterDecodeImageCallback, params, by))


TranscoderCallback = Callable[[bytes, list[str], bool], Any]


def RegisterTranscoderCallback(callback: TranscoderCallback) -> None:
    """Registers ``callback(dicom, allowedSyntaxes, allowNewSopInstanceUid)``, which transcodes DICOM files.

    Orthanc asks it whenever it changes the transfer syntax of an instance
    (``/modify`` with ``"Transcode"``, C-STORE to a modality that needs
    another syntax, DICOMweb...). ``dicom`` is the DICOM file (``bytes``),
    ``allowedSyntaxes`` the transfer syntax UIDs the result may use (a
    ``list`` of ``str``: the callback chooses one), and
    ``allowNewSopInstanceUid`` (``bool``) whether the result may get a new
    SOP instance UID, as lossy compression requires. The callback returns
    the transcoded DICOM file (``bytes``), or ``None`` when it cannot
    transcode this one: Orthanc then uses its other transcoders (see the
    option ``BuiltinDecoderTranscoderOrder``).

    When the callback raises or returns something else, the reason goes to
    Orthanc's log and Orthanc goes on as for ``None``.

    :param callback: the transcoder.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a transcoder is already registered.
    """
    function = "RegisterTranscoderCallback"
    _check_callable(function, "callback", callback)
    where = f"the transcoder {_name(callback)}"
    c_strings = _capi.c_strings

    def c_transcode(transcoded: Any, dicom: int | None, size: int, syntaxes: Any, count: int,
                    allow_new_sop_instance_uid: int) -> int:
        result = callback(_capi.copy_memory(dicom, size), c_strings(syntaxes, count),
                          bool(allow_new_sop_instance_uid))
        if result is None:
            return _DECLINED
        if not isinstance(result, (bytes, bytearray, memoryview)):
            _capi.log_error(f"orthanc_py: {where} returned {type(result).__name__}, not bytes or None")
            return PLUGIN_ERROR
        size = memoryview(result).nbytes  # checked before a copy is made
        if size > 0xFFFFFFFF:
            _capi.log_error(f"orthanc_py: {where} returned {size} bytes; Orthanc takes at most {0xFFFFFFFF} "
                            "(a 32-bit size) from a transcoder")
            return PLUGIN_ERROR
        _capi.fill_memory_buffer(transcoded, bytes(result), wide=False)
        return SUCCESS

    params = _sdk._OrthancPluginTranscoderCallback()
    params.callback = _capi.trampoline(_sdk.OrthancPluginTranscoderCallback, where, PLUGIN_ERROR)(c_transcode)
    by = f"orthanc.{function}()"
    _hooks.transcoder.add(callback, by, where, once=True,
                          connect=lambda: _hooks.register(Service.RegisterTranscoderCallback, params, by))
