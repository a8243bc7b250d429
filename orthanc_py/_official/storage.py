# SPDX-License-Identifier: GPL-3.0-or-later
"""The storage area: where Orthanc keeps its files.

:func:`RegisterStorageArea` -- ``create(uuid, contentType, data)``,
``read(uuid, contentType) -> bytes``, ``remove(uuid, contentType)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _capi, _hooks, _sdk
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    Service,
    _check_callable,
    _decode,
    _name,
)

__all__ = [
    "RegisterStorageArea",
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
