# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage area: where Orthanc keeps its files.

- :func:`RegisterStorageArea` -- ``create(uuid, contentType, data)``,
  ``read(uuid, contentType) -> bytes``, ``remove(uuid, contentType)``;
- :func:`RegisterStorageArea3` (Orthanc 1.12.8) -- the same with custom data
  per file, range reads and error codes: ``create(uuid, contentType,
  compressionType, data, dicomInstance) -> (errorCode, customData)``,
  ``read(uuid, contentType, rangeStart, size, customData) -> (errorCode,
  data)``, ``remove(uuid, contentType, customData) -> errorCode``;
- :func:`AdoptDicomInstance` -- indexes a DICOM file that such a storage
  area keeps where it already is.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Union

from .. import _capi, _hooks, _sdk
from .._calls import Handle
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    Service,
    _call,
    _check_callable,
    _decode,
    _is_int,
    _name,
    _require_sdk,
)

__all__ = [
    "AdoptDicomInstance",
    "RegisterStorageArea",
    "RegisterStorageArea3",
    "SetAttachmentCustomData",
]


# --- storage area ------------------------------------------------------------------------

StorageCreate = Callable[[str, int, bytes], Any]
StorageRead = Callable[[str, int], bytes]
StorageRemove = Callable[[str, int], Any]


def RegisterStorageArea(create: StorageCreate, read: StorageRead, remove: StorageRemove) -> None:
    """Makes Orthanc keep all its files (DICOM instances and attachments) through three callbacks.

    - ``create(uuid, contentType, data)`` keeps the file ``data`` (``bytes``) under ``uuid`` (``str``);
    - ``read(uuid, contentType)`` returns that file, as ``bytes`` (or ``bytearray``, ``memoryview``);
    - ``remove(uuid, contentType)`` deletes it.

    ``contentType`` is an :class:`orthanc.ContentType` value (an ``int``).
    Return values of ``create`` and ``remove`` are ignored. When a callback
    raises (or ``read`` returns something else), the traceback goes to
    Orthanc's log and Orthanc's operation fails: an upload answers HTTP 500
    and is not indexed, a download answers HTTP 500. A failing ``remove`` is
    logged by Orthanc, which still forgets the file.

    The callbacks run on Orthanc's threads, possibly several at once.

    :raises TypeError: when an argument is not callable.
    :raises RuntimeError: when a storage area is already registered.
    """
    function = "RegisterStorageArea"
    for argument, value in (("create", create), ("read", read), ("remove", remove)):
        _check_callable(function, argument, value)

    def c_create(uuid: bytes | None, content: int | None, size: int, content_type: int) -> int:
        create(_decode(uuid), content_type, _capi.copy_memory(content, size))
        return SUCCESS

    read_where = f"the storage area's read callback {_name(read)}"

    def c_read_whole(target: Any, uuid: bytes | None, content_type: int) -> int:
        data = read(_decode(uuid), content_type)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            _capi.log_error(f"orthanc_py: {read_where} returned {type(data).__name__}, not bytes")
            return PLUGIN_ERROR
        _capi.fill_memory_buffer(target, bytes(data))
        return SUCCESS

    def c_remove(uuid: bytes | None, content_type: int) -> int:
        remove(_decode(uuid), content_type)
        return SUCCESS

    params = _sdk._OrthancPluginRegisterStorageArea2()
    # Every failure is an error code: Orthanc then fails the operation rather
    # than index a file that was not kept, or serve one that was not read.
    params.create = _capi.trampoline(
        _sdk.OrthancPluginStorageCreate, f"the storage area's create callback {_name(create)}", PLUGIN_ERROR
    )(c_create)
    params.readWhole = _capi.trampoline(_sdk.OrthancPluginStorageReadWhole, read_where, PLUGIN_ERROR)(c_read_whole)
    # No range reads: Orthanc then reads whole files, the only thing read() offers.
    params.readRange = _sdk.OrthancPluginStorageReadRange()
    params.remove = _capi.trampoline(
        _sdk.OrthancPluginStorageRemove, f"the storage area's remove callback {_name(remove)}", PLUGIN_ERROR
    )(c_remove)
    by = f"orthanc.{function}()"
    _hooks.storage_area.add(create, by, f"the storage area of {_name(create)}", once=True,
                            connect=lambda: _hooks.register(Service.RegisterStorageArea2, params, by))


# --- storage area with custom data ------------------------------------------------------------

Buffer = Union[bytes, bytearray, memoryview]
StorageCreate3 = Callable[[str, int, int, bytes, Union[Handle, None]], "tuple[int, Buffer | None]"]
StorageReadRange3 = Callable[[str, int, int, int, bytes], "tuple[int, Buffer]"]
StorageRemove3 = Callable[[str, int, bytes], int]

_INT32 = (-(1 << 31), (1 << 31) - 1)


def _shape(value: Any) -> str:
    """What a callback returned, in a few words (never the data itself, which may be a whole file)."""
    if isinstance(value, tuple):
        return f"a tuple ({', '.join(type(item).__name__ for item in value)})"
    return type(value).__name__


def _error_code(value: Any) -> bool:
    return _is_int(value) and _INT32[0] <= value <= _INT32[1]


def _code_and_data(result: Any, where: str, what: str, optional: bool) -> tuple[int, Buffer | None] | None:
    """The ``(errorCode, data)`` a callback of the storage area returned; ``None``, once logged, for anything else.

    :param what: the name of the data in the message (``customData``...).
    :param optional: ``None`` may stand for the data.
    """
    if isinstance(result, tuple) and len(result) == 2 and _error_code(result[0]):
        code, data = result
        if isinstance(data, (bytes, bytearray, memoryview)) or (optional and data is None):
            return int(code), data
    expected = f"bytes{' or None' if optional else ''}"
    _capi.log_error(f"orthanc_py: {where} returned {_shape(result)}, not a tuple (errorCode, {what}): an "
                    f"orthanc.ErrorCode value and {expected}")
    return None


def RegisterStorageArea3(create: StorageCreate3, read: StorageReadRange3, remove: StorageRemove3) -> None:
    """Makes Orthanc keep all its files through three callbacks, with custom data per file (Orthanc 1.12.8 or newer).

    - ``create(uuid, contentType, compressionType, data, dicomInstance)``
      keeps the file ``data`` (``bytes``, compressed as ``compressionType``
      says: an :class:`orthanc.CompressionType`) under ``uuid``.
      ``dicomInstance`` is the :class:`orthanc.DicomInstance` being stored
      (valid during the call only), ``None`` for other attachments. It
      returns ``(errorCode, customData)``: an :class:`orthanc.ErrorCode`
      (``SUCCESS``, ``0``, when the file is kept) and ``bytes`` that Orthanc
      stores with the file and gives back to ``read`` and ``remove``
      (``None``: no custom data), e.g. where the file went;
    - ``read(uuid, contentType, rangeStart, size, customData)`` returns
      ``(errorCode, data)``: ``size`` bytes of the file from ``rangeStart``
      (Orthanc reads whole files with ``rangeStart`` 0 and their size);
    - ``remove(uuid, contentType, customData)`` deletes the file and returns
      an :class:`orthanc.ErrorCode`.

    ``contentType`` is an :class:`orthanc.ContentType` value; ``customData``
    is ``b""`` for a file without custom data. An error code other than
    ``SUCCESS`` is Orthanc's error for the operation (``UNKNOWN_RESOURCE``
    from ``read`` answers HTTP 404). When a callback raises or returns
    something else (``read`` included, with data of another size than asked),
    the reason goes to Orthanc's log and the operation fails: an upload is
    not indexed, a download answers HTTP 500. Orthanc logs a failed
    ``remove`` and still forgets the file. :func:`orthanc.GetAttachmentCustomData`
    and :func:`orthanc.SetAttachmentCustomData` read and change the custom
    data of a file afterwards.

    The callbacks run on Orthanc's threads, possibly several at once.

    :raises TypeError: when an argument is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.8.
    :raises RuntimeError: when a storage area is already registered (by this
        function or by :func:`RegisterStorageArea`).
    """
    function = "RegisterStorageArea3"
    for argument, value in (("create", create), ("read", read), ("remove", remove)):
        _check_callable(function, argument, value)
    _require_sdk(function, "RegisterStorageArea3")
    create_where = f"the storage area's create callback {_name(create)}"
    read_where = f"the storage area's read callback {_name(read)}"
    remove_where = f"the storage area's remove callback {_name(remove)}"

    def c_create(custom_data: Any, uuid: bytes | None, content: int | None, size: int, content_type: int,
                 compression_type: int, instance_pointer: Any) -> int:
        instance = _hooks.lend("OrthancPluginDicomInstance", instance_pointer) if instance_pointer else None
        try:
            result = create(_decode(uuid), content_type, compression_type, _capi.copy_memory(content, size), instance)
        finally:
            _capi.expire(instance)
        checked = _code_and_data(result, create_where, "customData", optional=True)
        if checked is None:
            return PLUGIN_ERROR
        code, custom = checked
        if code == SUCCESS and custom:
            # Orthanc frees the custom data: it must come from Orthanc's allocator.
            _capi.fill_memory_buffer(custom_data, bytes(custom), wide=False)
        return code

    def c_read_range(target: Any, uuid: bytes | None, content_type: int, range_start: int, custom_data: int | None,
                     custom_data_size: int) -> int:
        # Orthanc allocated the target: its size is the length of the range.
        buffer = target.contents
        size = int(buffer.size)
        result = read(_decode(uuid), content_type, range_start, size, _capi.copy_memory(custom_data, custom_data_size))
        checked = _code_and_data(result, read_where, "data", optional=False)
        if checked is None:
            return PLUGIN_ERROR
        code, data = checked
        if code != SUCCESS:
            return code
        data = data if isinstance(data, bytes) else bytes(data)  # type: ignore[arg-type]
        if len(data) != size:
            _capi.log_error(f"orthanc_py: {read_where} returned {len(data)} bytes, but Orthanc asked for {size} "
                            f"(from byte {range_start})")
            return PLUGIN_ERROR
        if size:
            ctypes.memmove(buffer.data, data, size)
        return SUCCESS

    def c_remove(uuid: bytes | None, content_type: int, custom_data: int | None, custom_data_size: int) -> int:
        code = remove(_decode(uuid), content_type, _capi.copy_memory(custom_data, custom_data_size))
        if not _error_code(code):
            _capi.log_error(f"orthanc_py: {remove_where} returned {_shape(code)}, not an orthanc.ErrorCode value")
            return PLUGIN_ERROR
        return int(code)

    params = _sdk._OrthancPluginRegisterStorageArea3()
    params.create = _capi.trampoline(_sdk.OrthancPluginStorageCreate2, create_where, PLUGIN_ERROR)(c_create)
    params.readRange = _capi.trampoline(_sdk.OrthancPluginStorageReadRange2, read_where, PLUGIN_ERROR)(c_read_range)
    params.remove = _capi.trampoline(_sdk.OrthancPluginStorageRemove2, remove_where, PLUGIN_ERROR)(c_remove)
    by = f"orthanc.{function}()"
    _hooks.storage_area.add(create, by, f"the storage area of {_name(create)}", once=True,
                            connect=lambda: _hooks.register(Service.RegisterStorageArea3, params, by))


def AdoptDicomInstance(dicom: Buffer | str, customData: Buffer | str, /) -> tuple[str, str, int]:
    """Indexes a DICOM file that the storage area keeps where it is already (Orthanc 1.12.8 or newer).

    Orthanc creates the instance in its database as for an upload, except
    that the file is not written to the storage area: its DICOM attachment
    gets ``customData`` (``bytes``), by which the storage area of
    :func:`RegisterStorageArea3` finds the file when Orthanc reads or removes
    it (a path, say). Returns ``(instanceId, attachmentUuid, storeStatus)``:
    the ID of the instance, the UUID of its DICOM attachment, and an
    :class:`orthanc.StoreStatus` (``SUCCESS``, ``ALREADY_STORED``,
    ``FAILURE``, ``FILTERED_OUT``, ``STORAGE_FULL``).

    :raises TypeError: when an argument is not bytes (or str).
    :raises SdkVersionError: on an Orthanc older than 1.12.8.
    :raises OrthancException: when Orthanc cannot read the file as DICOM.
    """
    instance_id, attachment_uuid, status = _call("AdoptDicomInstance", dicom, customData)
    return _buffer_text(instance_id), _buffer_text(attachment_uuid), int(status)


def SetAttachmentCustomData(attachmentUuid: str, customData: Buffer | str | None, /) -> None:
    """Replaces the custom data that Orthanc keeps with a file of the storage area (Orthanc 1.12.8 or newer).

    ``attachmentUuid`` is the UUID of the file (``/instances/{id}/attachments/dicom/info``
    gives an instance's); ``customData`` is what :func:`RegisterStorageArea3`'s
    ``read`` and ``remove`` get from now on: ``bytes`` (a ``str`` is sent as
    UTF-8), ``None`` or ``b""`` for none. :func:`orthanc.GetAttachmentCustomData`
    reads it back. A storage area that moves a file records its new place so.

    :raises TypeError: when ``customData`` is not bytes, str or None.
    :raises SdkVersionError: on an Orthanc older than 1.12.8.
    """
    # As the official plugin, None clears the custom data.
    _call("SetAttachmentCustomData", attachmentUuid, b"" if customData is None else customData)


def _buffer_text(data: bytes) -> str:
    # A text Orthanc returns in a memory buffer. Orthanc 1.13 copies it without its NUL;
    # should an Orthanc copy the NUL too, it must not end up in the ID.
    return data.rstrip(b"\0").decode("utf-8", "replace")
