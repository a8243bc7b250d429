# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module's filters, DICOM SCP handlers and storage area.

Each ``Register...`` function here has the Python-side signature, argument
types and return conventions of the official Python plugin 4.0, as observed
by running it (the tests run both plugins against the same scripts):

- :func:`RegisterIncomingHttpRequestFilter` -- ``callback(uri, method=, ip=,
  headers=[, get=])`` returns ``True`` (accept) or ``False`` (HTTP 403);
- :func:`RegisterReceivedInstanceCallback` -- ``callback(receivedDicom,
  origin)`` returns ``(ReceivedInstanceAction.X, modifiedDicom or None)``;
- :func:`RegisterIncomingCStoreInstanceFilter` -- ``callback(instance)``
  returns ``0`` (store) or the DIMSE status of the refusal;
- :func:`RegisterFindCallback` / :func:`RegisterWorklistCallback` --
  ``callback(answers, query, issuerAet, calledAet)``;
- :func:`RegisterMoveCallback` -- ``callback(**request)``;
- :func:`RegisterStorageArea` -- ``create(uuid, contentType, data)``,
  ``read(uuid, contentType) -> bytes``, ``remove(uuid, contentType)``.

Orthanc takes one handler of each kind; like the official plugin, a second
registration raises :class:`RuntimeError`. Every C trampoline is built with
:func:`_capi.trampoline`, so no exception ever reaches Orthanc.
"""

from __future__ import annotations

import collections
import ctypes
import datetime
import itertools
import json
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _calls, _capi, _runtime, _sdk
from ._calls import Handle
from ._official.registration import _SdkMethod

ErrorCode = _capi.ErrorCode
Service = _capi.Service
Action = _sdk.OrthancPluginReceivedInstanceAction

SUCCESS = int(ErrorCode.Success)
PLUGIN_ERROR = int(ErrorCode.Plugin)

__all__ = [
    "ChunkedHttpClient",
    "CreateJob",
    "EncodeDicomWebJson",
    "EncodeDicomWebJson2",
    "EncodeDicomWebXml",
    "EncodeDicomWebXml2",
    "RegisterChunkedRestCallback",
    "RegisterDecodeImageCallback",
    "RegisterFindCallback",
    "RegisterIncomingCStoreInstanceFilter",
    "RegisterIncomingDicomInstanceFilter",
    "RegisterIncomingHttpRequestFilter",
    "RegisterJobsUnserializer",
    "RegisterMoveCallback",
    "RegisterReceivedInstanceCallback",
    "RegisterRefreshMetricsCallback",
    "RegisterStorageArea",
    "RegisterStorageCommitmentScpCallback",
    "RegisterTranscoderCallback",
    "RegisterWebDavCollection",
    "RegisterWorklistCallback",
]


# --- shared helpers -------------------------------------------------------------

def _decode(value: bytes | None) -> str:
    # Orthanc passes NULL for an absent value; the official plugin gives "".
    return value.decode("utf-8", "replace") if value else ""


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", None) or repr(function)


def _check_callable(function: str, argument: str, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{function}() argument '{argument}' must be callable, not {type(value).__name__}")


_registered: set[str] = set()
_registered_lock = threading.Lock()
_runtime.on_new_run(_registered.clear)


def _claim(function: str, what: str) -> bool:
    """Whether to register with Orthanc now; raises when Orthanc would refuse.

    Outside Orthanc (a worker process re-running the script) registrations
    are silent no-ops, so the script runs unchanged there.
    """
    if not _capi.is_attached():
        return False
    _runtime.require_setup(f"orthanc.{function}()")
    with _registered_lock:
        if function in _registered:
            # Orthanc keeps only one handler of each kind: a second one would
            # silently replace the first, or be refused by Orthanc.
            raise RuntimeError(f"orthanc.{function}() was already called: only one {what} can be registered")
        _registered.add(function)
    return True


def _lend(c_type_name: str, pointer: Any) -> Handle:
    """Wraps an object that Orthanc lends for one call: never freed by Python.

    The caller expires it (:func:`_capi.expire`) after the call, so that a
    handle the script kept fails cleanly instead of touching freed memory.
    """
    address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
    return _calls.handle_class(c_type_name).lent(address)


def _register(service: Service, params: ctypes.Structure, function: str) -> None:
    try:
        _capi.invoke(service, _capi.keep_alive(params), f"orthanc.{function}()")
    except _capi.OrthancError:
        with _registered_lock:
            _registered.discard(function)
        raise


# --- HTTP request filter ------------------------------------------------------------

HttpRequestFilter = Callable[..., bool]


def RegisterIncomingHttpRequestFilter(callback: HttpRequestFilter) -> None:
    """Registers ``callback(uri, **request)``, asked before Orthanc serves any HTTP request.

    ``request`` holds ``method`` (an :class:`orthanc.HttpMethod` value, an
    ``int``), ``ip`` (the client's address), ``headers`` (a ``dict`` with
    lower-case names) and, for GET requests only, ``get`` (the query
    arguments, a ``dict``). The callback returns ``True`` to let the request
    through or ``False`` to refuse it: the client gets HTTP 403.

    Anything but a ``bool``, or an exception, refuses the request with HTTP
    500 and writes the reason to Orthanc's log: a filter that fails never
    lets a request through. The callback runs on Orthanc's HTTP threads,
    possibly several at once.

    :param callback: the filter.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a filter is already registered.
    """
    function = "RegisterIncomingHttpRequestFilter"
    _check_callable(function, "callback", callback)
    if not _claim(function, "incoming HTTP request filter"):
        return
    where = f"the incoming-HTTP-request filter {_name(callback)}"
    get_method = int(_sdk.OrthancPluginHttpMethod.Get)
    c_strings = _capi._c_strings

    def c_filter(method: int, uri: bytes | None, ip: bytes | None, headers_count: int, headers_keys: Any,
                 headers_values: Any, get_count: int, get_keys: Any, get_values: Any) -> int:
        request: dict[str, Any] = {
            "method": method,
            "ip": _decode(ip),
            "headers": dict(zip(c_strings(headers_keys, headers_count), c_strings(headers_values, headers_count))),
        }
        if method == get_method:  # Orthanc gives query arguments for GET only; so does the official plugin
            request["get"] = dict(zip(c_strings(get_keys, get_count), c_strings(get_values, get_count)))
        allowed = callback(_decode(uri), **request)
        if allowed is True:
            return 1
        if allowed is False:
            return 0
        _capi.log_error(
            f"orthanc_py: {where} returned {type(allowed).__name__}, not True or False; "
            "the request is refused (HTTP 500)"
        )
        return -1

    params = _sdk._OrthancPluginIncomingHttpRequestFilter2()
    # -1 is Orthanc's "error": the client gets HTTP 500, the request is not served.
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingHttpRequestFilter2, where, on_error=-1)(c_filter)
    _register(Service.RegisterIncomingHttpRequestFilter2, params, function)


# --- received instances ---------------------------------------------------------------

ReceivedInstanceCallback = Callable[[bytes, int], Any]


def RegisterReceivedInstanceCallback(callback: ReceivedInstanceCallback) -> None:
    """Registers ``callback(receivedDicom, origin)``, which may keep, change or drop each received instance.

    It runs for every instance Orthanc receives (C-STORE, REST API...),
    before it is stored. ``receivedDicom`` is the DICOM file (``bytes``),
    ``origin`` an :class:`orthanc.InstanceOrigin` value. The callback returns
    a tuple ``(action, modifiedDicom)``:

    - ``(orthanc.ReceivedInstanceAction.KEEP_AS_IS, None)`` stores the instance as received;
    - ``(orthanc.ReceivedInstanceAction.MODIFY, data)`` stores the DICOM file ``data``
      (``bytes``) instead;
    - ``(orthanc.ReceivedInstanceAction.DISCARD, None)`` drops it (the REST
      API answers ``"Status": "FilteredOut"``).

    When the callback raises or returns something else, the reason goes to
    Orthanc's log and the instance is stored as received, so that nothing a
    modality sent is lost.

    Orthanc runs this callback synchronously with its core: do not call the
    REST API from it.

    :param callback: the callback.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when such a callback is already registered.
    """
    function = "RegisterReceivedInstanceCallback"
    _check_callable(function, "callback", callback)
    if not _claim(function, "received-instance callback"):
        return
    where = f"the received-instance callback {_name(callback)}"
    actions = {int(action) for action in Action}

    def refuse(why: str) -> int:
        _capi.log_error(f"orthanc_py: {where} {why}; the instance is stored as received")
        return int(Action.KeepAsIs)

    def c_received(modified: Any, data: Any, size: int, origin: int) -> int:
        received = _capi.copy_memory(data, size)
        try:
            result = callback(received, origin)
        except BaseException:  # noqa: BLE001 - logged; the instance is kept (see below)
            _capi.report_exception(where)
            return int(Action.KeepAsIs)
        if not isinstance(result, (tuple, list)):
            return refuse(f"returned {type(result).__name__}, not a tuple (action, modifiedDicom)")
        if len(result) != 2:
            return refuse(f"returned {len(result)} value(s), not a tuple (action, modifiedDicom)")
        action, buffer = result
        if isinstance(action, bool) or not isinstance(action, int) or int(action) not in actions:
            return refuse(f"returned the action {action!r}, not an orthanc.ReceivedInstanceAction value")
        if action != Action.Modify:
            return int(action)
        if not isinstance(buffer, (bytes, bytearray, memoryview)):
            return refuse(f"returned MODIFY with {type(buffer).__name__}, not the modified DICOM file as bytes")
        _fill_buffer64(modified, bytes(buffer))
        return int(Action.Modify)

    params = _sdk._OrthancPluginReceivedInstanceCallback()
    # Why "keep as received" when the script fails, rather than refuse: the
    # bytes are exactly what the sender sent, so storing them loses nothing,
    # and the log says what went wrong; the instance can still be changed or
    # deleted through the REST API. Refusing would need an undocumented trick
    # (MODIFY with no buffer) and turn any bug of the script into failed
    # transfers, which some modalities never retry. The official plugin keeps
    # the instance too.
    params.callback = _capi.trampoline(
        _sdk.OrthancPluginReceivedInstanceCallback, where, on_error=int(Action.KeepAsIs)
    )(c_received)
    _register(Service.RegisterReceivedInstanceCallback, params, function)


def _fill_buffer64(target: Any, data: bytes) -> None:
    """Allocates ``target`` (an ``OrthancPluginMemoryBuffer64*``) through Orthanc and copies ``data`` in.

    Orthanc frees that buffer itself, so it must come from Orthanc's allocator.
    """
    params = _sdk._OrthancPluginCreateMemoryBuffer64()
    params.target = ctypes.cast(target, ctypes.POINTER(_sdk.OrthancPluginMemoryBuffer64))
    params.size = len(data)
    _capi.invoke(Service.CreateMemoryBuffer64, params, "CreateMemoryBuffer64")
    if data:
        ctypes.memmove(params.target.contents.data, data, len(data))


# --- C-STORE filter ----------------------------------------------------------------------

CStoreInstanceFilter = Callable[[Handle], int]


def RegisterIncomingCStoreInstanceFilter(callback: CStoreInstanceFilter) -> None:
    """Registers ``callback(instance)``, asked for each instance received by C-STORE.

    ``instance`` is an :class:`orthanc.DicomInstance`, valid during the call
    only (its metadata is not available yet). The callback returns ``0`` to
    store the instance, or a DIMSE status (1 to 0xFFFF, such as ``0xA700``,
    "out of resources") to refuse it: the modality gets that status and
    Orthanc stores nothing.

    When the callback raises or returns anything but such an ``int``, the
    reason goes to Orthanc's log and the C-STORE fails: the instance stays
    with the sender, which can send it again.

    :param callback: the filter.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when such a filter is already registered.
    """
    function = "RegisterIncomingCStoreInstanceFilter"
    _check_callable(function, "callback", callback)
    if not _claim(function, "incoming C-STORE instance filter"):
        return
    where = f"the incoming-C-STORE filter {_name(callback)}"

    def c_filter(dimse_status: Any, instance_pointer: Any) -> int:
        instance = _lend("OrthancPluginDicomInstance", instance_pointer)
        try:
            status = callback(instance)
        finally:
            _capi.expire(instance)
        # bool is an int here, as in the official plugin: True refuses with status 1.
        if not isinstance(status, int) or not 0 <= status <= 0xFFFF:
            _capi.log_error(
                f"orthanc_py: {where} returned {status!r}, not 0 (store) or a DIMSE status from 1 to 0xFFFF "
                "(refuse); the C-STORE fails"
            )
            return -1
        if status == 0:
            return 1  # Orthanc: 1 stores
        dimse_status[0] = status
        return 0  # Orthanc: 0 discards, answering dimse_status

    params = _sdk._OrthancPluginIncomingCStoreInstanceFilter()
    # -1 is Orthanc's "error": the C-STORE fails, nothing is stored.
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingCStoreInstanceFilter, where, on_error=-1)(c_filter)
    _register(Service.RegisterIncomingCStoreInstanceFilter, params, function)


# --- C-FIND: queries and worklists ------------------------------------------------------

FindCallback = Callable[[Handle, Handle, str, str], Any]


def _find_trampoline(c_type: Any, callback: FindCallback, where: str, answers_type: str, query_type: str) -> Any:
    def c_find(answers_pointer: Any, query_pointer: Any, issuer_aet: bytes | None, called_aet: bytes | None) -> int:
        answers = _lend(answers_type, answers_pointer)
        query = _lend(query_type, query_pointer)
        try:
            callback(answers, query, _decode(issuer_aet), _decode(called_aet))
        finally:
            _capi.expire(answers, query)
        return SUCCESS

    # An error code makes the C-FIND fail ("unable to process"): no partial answer looks complete.
    return _capi.trampoline(c_type, where, on_error=PLUGIN_ERROR)(c_find)


def RegisterFindCallback(callback: FindCallback) -> None:
    """Registers ``callback(answers, query, issuerAet, calledAet)``, which answers C-FIND requests.

    It replaces Orthanc's own C-FIND SCP (worklist queries excepted, see
    :func:`RegisterWorklistCallback`). ``query`` (:class:`orthanc.FindQuery`)
    holds the tags of the request: ``GetFindQuerySize()``,
    ``GetFindQueryTagName(i)``, ``GetFindQueryValue(i)``...; each answer is a
    DICOM file (``bytes``, e.g. from :func:`orthanc.CreateDicom`) given to
    ``answers.FindAddAnswer()`` (:class:`orthanc.FindAnswers`), and
    ``answers.FindMarkIncomplete()`` tells the modality that more matches
    exist. ``issuerAet`` and ``calledAet`` are the AE titles of the modality
    and of Orthanc. Both objects are valid during the call only; the return
    value is ignored.

    When the callback raises, the traceback goes to Orthanc's log and the
    modality gets a failed C-FIND.

    :param callback: the C-FIND handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a C-FIND handler is already registered.
    """
    function = "RegisterFindCallback"
    _check_callable(function, "callback", callback)
    if not _claim(function, "C-FIND handler"):
        return
    params = _sdk._OrthancPluginFindCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginFindCallback, callback, f"the C-FIND callback {_name(callback)}",
        "OrthancPluginFindAnswers", "OrthancPluginFindQuery",
    )
    _register(Service.RegisterFindCallback, params, function)


def RegisterWorklistCallback(callback: FindCallback) -> None:
    """Registers ``callback(answers, query, issuerAet, calledAet)``, which answers worklist C-FIND requests.

    ``query`` (:class:`orthanc.WorklistQuery`) gives the request as a DICOM
    file (``WorklistGetDicomQuery()``) and matches a candidate worklist item
    (``WorklistIsMatch(dicom)``); each matching item (``bytes``) goes to
    ``answers.WorklistAddAnswer(query, dicom)`` (:class:`orthanc.WorklistAnswers`).
    Both objects are valid during the call only; the return value is
    ignored. When the callback raises, the traceback goes to Orthanc's log
    and the modality gets a failed C-FIND.

    :param callback: the worklist handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a worklist handler is already registered.
    """
    function = "RegisterWorklistCallback"
    _check_callable(function, "callback", callback)
    if not _claim(function, "worklist handler"):
        return
    params = _sdk._OrthancPluginWorklistCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginWorklistCallback, callback, f"the worklist callback {_name(callback)}",
        "OrthancPluginWorklistAnswers", "OrthancPluginWorklistQuery",
    )
    _register(Service.RegisterWorklistCallback, params, function)


# --- C-MOVE -------------------------------------------------------------------------------

MoveCallback = Callable[..., Any]

_LEVELS = {
    int(_sdk.OrthancPluginResourceType.Patient): "PATIENT",
    int(_sdk.OrthancPluginResourceType.Study): "STUDY",
    int(_sdk.OrthancPluginResourceType.Series): "SERIES",
    int(_sdk.OrthancPluginResourceType.Instance): "INSTANCE",
}

# Pending C-MOVE requests, by the driver "pointer" Orthanc hands back to us:
# a counter, never 0 (NULL would tell Orthanc the request is refused).
_moves: dict[int, dict[str, Any]] = {}
_move_ids = itertools.count(1)


def RegisterMoveCallback(callback: MoveCallback) -> None:
    """Registers ``callback(**request)``, which carries out C-MOVE requests.

    It replaces Orthanc's own C-MOVE SCP. ``request`` holds ``Level``
    (``"PATIENT"``, ``"STUDY"``, ``"SERIES"``, ``"INSTANCE"``, or ``""`` when
    the modality sent no QueryRetrieveLevel), ``PatientID``,
    ``AccessionNumber``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
    ``SOPInstanceUID`` (``""`` when absent from the request),
    ``OriginatorAET`` (who asks), ``SourceAET`` (Orthanc), ``TargetAET``
    (where to send the instances) and ``OriginatorID`` (the request's
    message ID, an ``int``). The callback does the whole move, e.g. with
    :func:`orthanc.RestApiPost` on ``/modalities/.../store``; its return
    value is ignored.

    The C-MOVE counts as one sub-operation: when the callback raises, the
    traceback goes to Orthanc's log and the modality is told that it failed.

    :param callback: the C-MOVE handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a C-MOVE handler is already registered.
    """
    function = "RegisterMoveCallback"
    _check_callable(function, "callback", callback)
    if not _claim(function, "C-MOVE handler"):
        return
    where = f"the C-MOVE callback {_name(callback)}"

    def c_create(level: int, patient_id: bytes | None, accession_number: bytes | None,
                 study_uid: bytes | None, series_uid: bytes | None, sop_uid: bytes | None,
                 originator_aet: bytes | None, source_aet: bytes | None, target_aet: bytes | None,
                 originator_id: int) -> int:
        # Only record the request: Orthanc calls c_apply next, and a failure
        # there is reported to the modality as a failed sub-operation.
        driver = next(_move_ids)
        _moves[driver] = {
            # The official plugin fails the whole C-MOVE when the level is
            # missing; "" lets the script decide from the identifiers.
            "Level": _LEVELS.get(level, ""),
            "PatientID": _decode(patient_id),
            "AccessionNumber": _decode(accession_number),
            "StudyInstanceUID": _decode(study_uid),
            "SeriesInstanceUID": _decode(series_uid),
            "SOPInstanceUID": _decode(sop_uid),
            "OriginatorAET": _decode(originator_aet),
            "SourceAET": _decode(source_aet),
            "TargetAET": _decode(target_aet),
            "OriginatorID": originator_id,
        }
        return driver

    def c_size(driver: int | None) -> int:
        return 1  # the whole move is one call of the Python callback

    def c_apply(driver: int | None) -> int:
        request = _moves.get(driver or 0)
        if request is None:
            _capi.log_error(f"orthanc_py: {where}: unknown C-MOVE driver {driver}")
            return PLUGIN_ERROR
        callback(**request)
        return SUCCESS

    def c_free(driver: int | None) -> None:
        _moves.pop(driver or 0, None)

    params = _sdk._OrthancPluginMoveCallback()
    # NULL (0) from c_create makes Orthanc refuse the C-MOVE.
    params.callback = _capi.trampoline(_sdk.OrthancPluginMoveCallback, where, on_error=0)(c_create)
    params.getMoveSize = _capi.trampoline(_sdk.OrthancPluginGetMoveSize, where, on_error=0)(c_size)
    params.applyMove = _capi.trampoline(_sdk.OrthancPluginApplyMove, where, on_error=PLUGIN_ERROR)(c_apply)
    params.freeMove = _capi.trampoline(_sdk.OrthancPluginFreeMove, where, on_error=None)(c_free)  # type: ignore[arg-type]
    _register(Service.RegisterMoveCallback, params, function)


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
    if not _claim(function, "storage area"):
        return

    def c_create(uuid: bytes | None, content: int | None, size: int, content_type: int) -> int:
        create(_decode(uuid), content_type, _capi.copy_memory(content, size))
        return SUCCESS

    read_where = f"the storage area's read callback {_name(read)}"

    def c_read_whole(target: Any, uuid: bytes | None, content_type: int) -> int:
        data = read(_decode(uuid), content_type)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            _capi.log_error(f"orthanc_py: {read_where} returned {type(data).__name__}, not bytes")
            return PLUGIN_ERROR
        _fill_buffer64(target, bytes(data))
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
    _register(Service.RegisterStorageArea2, params, function)


# --- handing objects over to Orthanc ------------------------------------------------------

def _hand_over(value: Any, c_type_name: str, where: str) -> int | None:
    """The address of an object the script gives to Orthanc, which frees it from now on.

    The Python handle forgets it (closed, not owned): Python must never free
    what Orthanc now owns. Returns ``None`` (and logs why) when ``value`` is
    not such an object, owned by the script.
    """
    expected = _calls.handle_class(c_type_name)
    if not isinstance(value, Handle) or value.c_type_name != c_type_name:
        _capi.log_error(f"orthanc_py: {where} returned {type(value).__name__}, not orthanc.{expected.__name__}")
        return None
    if not value._address or not value._owned:
        _capi.log_error(
            f"orthanc_py: {where} returned an orthanc.{expected.__name__} that was closed or that Orthanc "
            "only lent to the script; return one the script created"
        )
        return None
    if getattr(value, "_pixels", None) is not None:
        # An accessor image points at memory this Python object owns, which
        # Orthanc would keep reading after the object is gone: hand over a
        # copy with pixels of Orthanc's own.
        from . import _compat

        copy = _compat._image_copy(value)  # type: ignore[arg-type]
        value.close()
        value = copy
    address: int = value._address
    value._owned = False
    value._address = 0
    return address


def _fill_buffer32(target: Any, data: bytes) -> None:
    """Allocates ``target`` (an ``OrthancPluginMemoryBuffer*``) through Orthanc and copies ``data`` in.

    :raises ValueError: when ``data`` does not fit a 32-bit size: the buffer
        would be allocated short and the copy would run past its end.
    """
    if len(data) > 0xFFFFFFFF:
        raise ValueError(f"{len(data)} bytes do not fit an Orthanc memory buffer of 32-bit size "
                         f"(at most {0xFFFFFFFF} bytes)")
    params = _sdk._OrthancPluginCreateMemoryBuffer()
    params.target = ctypes.cast(target, ctypes.POINTER(_sdk.OrthancPluginMemoryBuffer))
    params.size = len(data)
    _capi.invoke(Service.CreateMemoryBuffer, params, "CreateMemoryBuffer")
    if data:
        ctypes.memmove(params.target.contents.data, data, len(data))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- metrics ----------------------------------------------------------------------------------

RefreshMetricsCallback = Callable[[], Any]

_metrics_callbacks: list[RefreshMetricsCallback] = []
_runtime.on_new_run(_metrics_callbacks.clear)


def RegisterRefreshMetricsCallback(callback: RefreshMetricsCallback) -> None:
    """Registers ``callback()``, called each time Orthanc refreshes its metrics.

    Orthanc refreshes them when a monitoring tool reads them (``GET
    /tools/metrics-prometheus``, ``GET /tools/metrics``); the callback sets
    the values it is in charge of with :func:`orthanc.SetMetricsValue`. That
    suits values that are costly to compute: they are computed only when
    asked for. Several callbacks may be registered; each is called in
    registration order, and one that raises is logged (with its traceback)
    without stopping the others. The return value is ignored.

    :param callback: the function to call, with no argument.
    :raises TypeError: when ``callback`` is not callable.
    """
    function = "RegisterRefreshMetricsCallback"
    _check_callable(function, "callback", callback)
    if not _capi.is_attached():
        return
    _runtime.require_setup(f"orthanc.{function}()")
    with _registered_lock:
        first = not _metrics_callbacks
        _metrics_callbacks.append(callback)
    if not first:
        return  # the C callback registered with the first one calls them all

    def c_refresh() -> None:
        for each in _metrics_callbacks[:]:  # a snapshot: registrations may come from other threads
            try:
                each()
            except BaseException:  # noqa: BLE001 - logged; the other callbacks still run
                _capi.report_exception(f"the refresh-metrics callback {_name(each)}")

    params = _sdk._OrthancPluginRegisterRefreshMetricsCallback()
    params.callback = _capi.trampoline(
        _sdk.OrthancPluginRefreshMetricsCallback, "the refresh-metrics callbacks", on_error=None  # type: ignore[arg-type]
    )(c_refresh)
    try:
        _register(Service.RegisterRefreshMetricsCallback, params, function)
    except _capi.OrthancError:
        with _registered_lock:
            _metrics_callbacks.clear()
        raise


# --- DICOM instance filter --------------------------------------------------------------------

DicomInstanceFilter = Callable[[Handle], Any]


def RegisterIncomingDicomInstanceFilter(callback: DicomInstanceFilter) -> None:
    """Registers ``callback(instance)``, asked whether to store each instance Orthanc receives.

    It runs for every received instance, whatever the way (REST API, C-STORE,
    DICOMweb...), before it is stored. ``instance`` is an
    :class:`orthanc.DicomInstance`, valid during the call only (its metadata
    is not available yet). The callback returns ``True`` (or ``1``) to store
    the instance, ``False`` (or ``0``) to discard it: a REST upload then
    answers ``"Status": "FilteredOut"``, a C-STORE fails.

    When the callback raises or returns anything else, the reason goes to
    Orthanc's log and the instance is not stored (Orthanc reports an error to
    the sender): a filter that fails never lets an instance through.

    Orthanc runs this callback synchronously with its core: do not call the
    REST API from it.

    :param callback: the filter.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when such a filter is already registered.
    """
    function = "RegisterIncomingDicomInstanceFilter"
    _check_callable(function, "callback", callback)
    if not _claim(function, "incoming DICOM instance filter"):
        return
    where = f"the incoming-DICOM-instance filter {_name(callback)}"

    def c_filter(instance_pointer: Any) -> int:
        instance = _lend("OrthancPluginDicomInstance", instance_pointer)
        try:
            accepted = callback(instance)
        finally:
            _capi.expire(instance)
        if accepted is True or accepted is False or (_is_int(accepted) and accepted in (0, 1)):
            return int(accepted)  # Orthanc: 1 stores, 0 discards
        _capi.log_error(
            f"orthanc_py: {where} returned {accepted!r}, not True (store) or False (discard); "
            "the instance is not stored"
        )
        return -1

    params = _sdk._OrthancPluginIncomingDicomInstanceFilter()
    # -1 is Orthanc's "error": the instance is not stored and the sender is told.
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingDicomInstanceFilter, where, on_error=-1)(c_filter)
    _register(Service.RegisterIncomingDicomInstanceFilter, params, function)


# --- jobs -----------------------------------------------------------------------------------------

StepStatus = _sdk.OrthancPluginJobStepStatus
_STEP_STATUSES = {int(status) for status in StepStatus}


class _JobState:
    """What Orthanc's job callbacks need of one job created by :func:`CreateJob`."""

    def __init__(self, job_type: str, callbacks: dict[str, Any]) -> None:
        self.job_type = job_type
        self.type_bytes = job_type.encode("utf-8")
        self.callbacks = callbacks
        # getContent() and getSerialized() return "const char*" that stays
        # the plugin's: the text must outlive the call, and Orthanc does not
        # say when it is done reading. The last few texts of each kind are
        # kept (and all of them are dropped when Orthanc finalizes the job),
        # so that a text is never freed while another thread may still read
        # it, even when several REST requests ask for the job at once.
        self.kept: collections.deque[Any] = collections.deque(maxlen=16)
        # Orthanc throws on a text that is not a JSON object, from threads
        # where nothing catches it (the process aborts): a bad value is
        # replaced by the last good one. Before any, the content is "{}" and
        # the job is not saved (NULL).
        self.good: dict[str, Any] = {"content": _EMPTY_OBJECT, "serialized": None}
        self.progress = 0.0
        # What was last logged about each callback, so that a bad value that
        # every GET /jobs asks for again is reported once, not per request.
        self.complaints: dict[str, str] = {}

    def where(self, name: str) -> str:
        return f"the {name} callback {_name(self.callbacks[name])} of the job of type {self.job_type!r}"

    def complain(self, name: str, kind: str, message: str) -> None:
        if self.complaints.get(name) != kind:
            self.complaints[name] = kind
            _capi.log_error(f"orthanc_py: {self.where(name)} {message}")

    def remember(self, name: str, text: bytes | None) -> int | None:
        """Keeps ``text`` as the last good value of ``name``; returns the address to give Orthanc."""
        self.complaints.pop(name, None)
        if text is None:
            self.good[name] = None
            return None
        buffer = ctypes.create_string_buffer(text)
        self.kept.append(buffer)
        self.good[name] = buffer
        return ctypes.addressof(buffer)

    def last_good(self, name: str) -> int | None:
        buffer = self.good[name]
        return None if buffer is None else ctypes.addressof(buffer)

    def c_json(self, name: str) -> int | None:
        """The address of the JSON text of ``callbacks[name]()``, or of the last good one."""
        try:
            value = self.callbacks[name]()
        except BaseException:  # noqa: BLE001 - logged; the last good value stays
            _capi.report_exception(self.where(name))
            return self.last_good(name)
        if value is None and name == "serialized":
            return self.remember(name, None)  # NULL: the job is not saved
        try:
            text = _job_json(value)
        except _BadJobValue as error:
            keeps = "Orthanc shows the last valid content" if name == "content" else "Orthanc keeps the last valid state"
            self.complain(name, error.kind, f"{error}; {keeps} (return a dict of JSON values)")
            return self.last_good(name)
        return self.remember(name, text)

    def c_progress(self) -> float:
        try:
            value = float(self.callbacks["progress"]())
        except BaseException:  # noqa: BLE001 - logged; the last good progress stays
            _capi.report_exception(self.where("progress"))
            return self.progress
        if math.isnan(value):
            # Orthanc would write NaN into its JSON answers, which then fail
            # to parse: GET /jobs answers 400 to every client.
            self.complain("progress", "not a number",
                          f"returned {value}, not a fraction from 0.0 to 1.0; the last valid progress stays")
            return self.progress
        if not 0.0 <= value <= 1.0:
            self.complain("progress", "out of range",
                          f"returned {value}, outside 0.0 to 1.0 (a fraction, not a percentage); it is clamped")
            value = min(max(value, 0.0), 1.0)
        else:
            self.complaints.pop("progress", None)
        self.progress = value
        return value


class _BadJobValue(ValueError):
    """A job's content or state that Orthanc would refuse; ``kind`` names the problem, for the log."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _refuse_constant(name: str) -> Any:
    raise _BadJobValue("not finite", f"returned JSON text holding {name}, which JSON cannot carry")


def _job_json(value: Any) -> bytes:
    """The UTF-8 JSON text of ``value`` as Orthanc takes a job's content or state: an object of finite numbers.

    :raises _BadJobValue: saying what is wrong with ``value``.
    """
    if isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except _BadJobValue:
            raise
        except ValueError as error:
            raise _BadJobValue("not JSON", f"returned text that is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise _BadJobValue("not an object", f"returned {_describe(value)}, not a dict (or the JSON text of an object)")
    try:
        # Re-encoded even when given as text: what Orthanc reads is then
        # JSON without NaN/Infinity (1e999 parses as inf) nor lone surrogates.
        return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError:
        raise _BadJobValue("not finite", "returned a number that is NaN or Infinity, which JSON cannot carry") from None
    except TypeError as error:
        raise _BadJobValue("not JSON", f"returned a value JSON cannot carry ({error})") from None
    except UnicodeEncodeError:
        raise _BadJobValue("not UTF-8", "returned text holding a lone surrogate, which UTF-8 cannot carry") from None
    except RecursionError:
        raise _BadJobValue("too deep", "returned a value nested too deeply for JSON") from None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# Jobs alive in Orthanc, by the "job" pointer Orthanc hands back to the
# callbacks: a counter, never 0.
_jobs: dict[int, _JobState] = {}
_job_ids = itertools.count(1)
_jobs_lock = threading.Lock()
_EMPTY_OBJECT = ctypes.create_string_buffer(b"{}")
_job_thunks: dict[str, Any] = {}


def _job_callbacks() -> dict[str, Any]:
    """The C callbacks shared by every job (made once, kept for the life of the process)."""
    with _jobs_lock:
        if _job_thunks:
            return _job_thunks

    def state_of(job: int | None) -> _JobState | None:
        return _jobs.get(job or 0)

    def c_finalize(job: int | None) -> None:
        with _jobs_lock:
            _jobs.pop(job or 0, None)

    def c_progress(job: int | None) -> float:
        state = state_of(job)
        if state is None or state.callbacks.get("progress") is None:
            return 0.0
        return state.c_progress()

    def c_content(job: int | None) -> int | None:
        state = state_of(job)
        if state is None or state.callbacks.get("content") is None:
            return ctypes.addressof(_EMPTY_OBJECT)
        return state.c_json("content")

    def c_serialized(job: int | None) -> int | None:
        state = state_of(job)
        if state is None or state.callbacks.get("serialized") is None:
            return None  # NULL: the job is not saved in Orthanc's database
        return state.c_json("serialized")

    def c_step(job: int | None) -> int:
        state = state_of(job)
        if state is None:
            _capi.log_error(f"orthanc_py: unknown job {job}: it fails")
            return int(StepStatus.Failure)
        try:
            status = state.callbacks["step"]()
        except BaseException:  # noqa: BLE001 - logged; the job fails
            _capi.report_exception(state.where("step"))
            return int(StepStatus.Failure)
        if not _is_int(status) or status not in _STEP_STATUSES:
            _capi.log_error(
                f"orthanc_py: {state.where('step')} returned {status!r}, not an orthanc.JobStepStatus value; "
                "the job fails"
            )
            return int(StepStatus.Failure)
        return int(status)

    def c_stop(job: int | None, reason: int) -> int:
        state = state_of(job)
        if state is not None and state.callbacks.get("stop") is not None:
            try:
                state.callbacks["stop"](reason)
            except BaseException:  # noqa: BLE001 - logged, and reported to Orthanc
                _capi.report_exception(state.where("stop"))
                return PLUGIN_ERROR
        return SUCCESS

    def c_reset(job: int | None) -> int:
        state = state_of(job)
        if state is not None and state.callbacks.get("reset") is not None:
            try:
                state.callbacks["reset"]()
            except BaseException:  # noqa: BLE001 - logged, and reported to Orthanc
                _capi.report_exception(state.where("reset"))
                return PLUGIN_ERROR
        return SUCCESS

    # Each function handles its own errors, to name the job in the log; the
    # trampoline is the last guard.
    thunks = {
        "finalize": _capi.trampoline(_sdk.OrthancPluginJobFinalize, "a job's finalize callback", None)(c_finalize),  # type: ignore[arg-type]
        "getProgress": _capi.trampoline(_sdk.OrthancPluginJobGetProgress, "a job's progress callback", 0)(c_progress),
        "getContent": _capi.trampoline(
            _sdk.OrthancPluginJobGetContent, "a job's content callback", ctypes.addressof(_EMPTY_OBJECT)
        )(c_content),
        "getSerialized": _capi.trampoline(_sdk.OrthancPluginJobGetSerialized, "a job's serialize callback", 0)(
            c_serialized
        ),
        "step": _capi.trampoline(_sdk.OrthancPluginJobStep, "a job's step callback", int(StepStatus.Failure))(c_step),
        "stop": _capi.trampoline(_sdk.OrthancPluginJobStop, "a job's stop callback", PLUGIN_ERROR)(c_stop),
        "reset": _capi.trampoline(_sdk.OrthancPluginJobReset, "a job's reset callback", PLUGIN_ERROR)(c_reset),
    }
    with _jobs_lock:
        if not _job_thunks:
            _job_thunks.update(thunks)
        return _job_thunks


def CreateJob(jobType: str, step: Callable[[], int], *, progress: Callable[[], float] | None = None,
              content: Callable[[], Any] | None = None, serialized: Callable[[], Any] | None = None,
              stop: Callable[[int], Any] | None = None, reset: Callable[[], Any] | None = None) -> Handle:
    """Creates a job written in Python, for Orthanc's jobs engine; submit it with ``job.SubmitJob(priority)``.

    Orthanc runs each job on a thread of its own and calls its callbacks
    there, one at a time:

    - ``step()`` does a bit of the work and returns an
      :class:`orthanc.JobStepStatus`: ``CONTINUE`` (call me again),
      ``SUCCESS`` or ``FAILURE`` (the job is over);
    - ``progress()`` returns how far the job is, from 0.0 to 1.0 (default:
      0.0); a value outside is clamped, and NaN keeps the last valid one;
    - ``content()`` returns what ``GET /jobs/{id}`` shows as the job's
      ``"Content"``: a ``dict`` (made JSON here) or the JSON text of an
      object (default: ``{}``);
    - ``serialized()`` returns the job's state as a ``dict`` or JSON text, for
      Orthanc to save it in its database and recreate it when it restarts
      through :func:`orthanc.RegisterJobsUnserializer`; ``None`` (the
      default) means the job is not saved;
    - ``stop(reason)`` is told that the job leaves the running state, with an
      :class:`orthanc.JobStopReason` (``SUCCESS``, ``PAUSED``, ``FAILURE``,
      ``CANCELED``): the place to stop threads the job started;
    - ``reset()`` is called when a failed or canceled job is resubmitted.

    ``content()`` and ``serialized()`` must give JSON objects of finite
    numbers: ``SubmitJob`` raises :class:`ValueError` for another value, and
    later on such a value is logged and the last valid one kept.

    An exception in ``step`` fails the job; in any callback, it goes to
    Orthanc's log with its traceback and never reaches Orthanc.

    :param jobType: the job's type, shown by ``GET /jobs/{id}`` and given to the unserializer.
    :param step: the callback that does the work.
    :returns: an :class:`orthanc.Job`. Until it is submitted, it belongs to
        the script (closing or collecting it frees it); once submitted,
        Orthanc owns it and the Python object is closed.
    :raises TypeError: when ``jobType`` is not a ``str`` or a callback not callable.
    :raises OrthancError: when Orthanc refuses to create the job.
    """
    function = "CreateJob"
    if not isinstance(jobType, str):
        raise TypeError(f"CreateJob() argument 'jobType' must be str, not {type(jobType).__name__}")
    _check_callable(function, "step", step)
    callbacks: dict[str, Any] = {"step": step, "progress": progress, "content": content,
                                 "serialized": serialized, "stop": stop, "reset": reset}
    for argument, value in callbacks.items():
        if value is not None:
            _check_callable(function, argument, value)
    thunks = _job_callbacks()
    state = _JobState(jobType, callbacks)
    driver = next(_job_ids)
    with _jobs_lock:
        _jobs[driver] = state

    target = ctypes.POINTER(_sdk.OrthancPluginJob)()
    params = _sdk._OrthancPluginCreateJob()
    params.target = ctypes.pointer(target)
    params.job = driver
    params.type = state.type_bytes
    for field, thunk in thunks.items():
        setattr(params, field, thunk)
    try:
        _capi.invoke(Service.CreateJob, params, f"orthanc.{function}()")
    except BaseException:
        with _jobs_lock:
            _jobs.pop(driver, None)
        raise
    address = ctypes.cast(target, ctypes.c_void_p).value
    if not address:
        with _jobs_lock:
            _jobs.pop(driver, None)
        raise _capi.OrthancError(PLUGIN_ERROR, "Orthanc created no job")
    job = _calls.handle_class("OrthancPluginJob")(address, owned=True)
    _unsubmitted[job] = state
    return job


# The state of each job the script created and has not submitted yet, for
# SubmitJob's checks (weak: a job the script drops is freed as before).
_unsubmitted: weakref.WeakKeyDictionary[Handle, _JobState] = weakref.WeakKeyDictionary()


def _SubmitJob(self: Handle, priority: int) -> str:
    """Submits the job to Orthanc's jobs engine; returns its ID (as in ``GET /jobs/{id}``).

    The job's ``content()`` and ``serialized()`` are asked first: each must
    give a ``dict`` of JSON values (or its JSON text) without NaN or Infinity,
    as Orthanc refuses anything else. When they do, Orthanc owns the job from
    the call on, and this object is closed, even if Orthanc refuses the job.

    :param priority: the job's priority (higher runs first).
    :raises ValueError: when ``content()`` or ``serialized()`` gives a value
        Orthanc would refuse; the job is not submitted and stays the script's.
    :raises OrthancError: when Orthanc refuses the job; Orthanc has deleted it.
    """
    what = "orthanc.Job.SubmitJob()"
    if not _is_int(priority):
        raise TypeError(f"{what} argument 'priority' must be int, not {type(priority).__name__}")
    if not -2**31 <= priority < 2**31:
        raise ValueError(f"{what} argument 'priority' must fit in 32 bits, not {priority}")
    if not self._address or not self._owned:
        raise ValueError(f"{what}: this job was already submitted or closed; create a new one with orthanc.CreateJob()")
    state = _unsubmitted.get(self)
    if state is not None:
        _check_before_submit(state, what)
    # Orthanc takes the job at the call, and deletes it itself when it refuses
    # it: whatever happens now, Python must never free it again.
    self._owned = False
    _unsubmitted.pop(self, None)
    try:
        job_id = _calls.sdk_function("OrthancPluginSubmitJob")(self, priority)
    except _capi.OrthancError as error:
        raise _capi.OrthancError(
            error.code, f"{error.description}: Orthanc refused the job of type "
            f"{state.job_type if state else '?'!r} and deleted it"
        ) from None
    finally:
        self._address = 0
    if job_id is None:
        raise _capi.OrthancError(PLUGIN_ERROR, "Orthanc gave the submitted job no ID")
    return str(job_id)


def _check_before_submit(state: _JobState, what: str) -> None:
    """Raises ``ValueError`` when the job's content or state is one Orthanc would refuse at submission."""
    for name in ("content", "serialized"):
        callback = state.callbacks.get(name)
        if callback is None:
            continue
        value = callback()
        if value is None and name == "serialized":
            continue
        try:
            _job_json(value)
        except _BadJobValue as error:
            raise ValueError(
                f"{what}: {state.where(name)} {error}; Orthanc takes only a JSON object (a dict of JSON values, "
                "finite numbers): the job is not submitted"
            ) from None


JobsUnserializer = Callable[[str, str], Any]


def RegisterJobsUnserializer(callback: JobsUnserializer) -> None:
    """Registers ``callback(jobType, serialized)``, which recreates saved jobs when Orthanc starts.

    Orthanc saves in its database the jobs whose ``serialized()`` callback
    (see :func:`CreateJob`) gives a state. When it restarts, it calls this
    callback for each one, with the job's type and that state as JSON text
    (``str``; Orthanc adds the key ``"Type"`` to the object). The callback returns the recreated :class:`orthanc.Job` (made
    with :func:`CreateJob`, not submitted), which Orthanc takes over, or
    ``None`` when the type is not its own. When it raises or returns
    something else, the reason goes to Orthanc's log and the job is not
    recreated.

    :param callback: the unserializer.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when an unserializer is already registered.
    """
    function = "RegisterJobsUnserializer"
    _check_callable(function, "callback", callback)
    if not _claim(function, "jobs unserializer"):
        return
    where = f"the jobs unserializer {_name(callback)}"

    def c_unserialize(job_type: bytes | None, serialized: bytes | None) -> int | None:
        job = callback(_decode(job_type), _decode(serialized))
        if job is None:
            return None  # not ours: Orthanc asks its other unserializers
        return _hand_over(job, "OrthancPluginJob", where)

    params = _sdk._OrthancPluginJobsUnserializer()
    params.unserializer = _capi.trampoline(_sdk.OrthancPluginJobsUnserializer, where, on_error=0)(c_unserialize)
    _register(Service.RegisterJobsUnserializer, params, function)


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
    if not _claim(function, "image decoder"):
        return
    where = f"the image decoder {_name(callback)}"
    image_pointer = ctypes.POINTER(_sdk.OrthancPluginImage)

    def c_decode(target: Any, dicom: int | None, size: int, frame_index: int) -> int:
        image = callback(_capi.copy_memory(dicom, size), frame_index)
        if image is None:
            return _DECLINED
        address = _hand_over(image, "OrthancPluginImage", where)
        if address is None:
            return PLUGIN_ERROR
        target[0] = ctypes.cast(address, image_pointer)
        return SUCCESS

    params = _sdk._OrthancPluginDecodeImageCallback()
    params.callback = _capi.trampoline(_sdk.OrthancPluginDecodeImageCallback, where, PLUGIN_ERROR)(c_decode)
    _register(Service.RegisterDecodeImageCallback, params, function)


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
    if not _claim(function, "transcoder"):
        return
    where = f"the transcoder {_name(callback)}"
    c_strings = _capi._c_strings

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
        _fill_buffer32(transcoded, bytes(result))
        return SUCCESS

    params = _sdk._OrthancPluginTranscoderCallback()
    params.callback = _capi.trampoline(_sdk.OrthancPluginTranscoderCallback, where, PLUGIN_ERROR)(c_transcode)
    _register(Service.RegisterTranscoderCallback, params, function)


# --- storage commitment SCP ------------------------------------------------------------------

FailureReason = _sdk.OrthancPluginStorageCommitmentFailureReason
_FAILURE_REASONS = {int(reason) for reason in FailureReason}

StorageCommitmentFactory = Callable[[str, str, list[str], list[str], str, str], Any]
StorageCommitmentDestructor = Callable[[Any], Any]
StorageCommitmentLookup = Callable[[Any, str, str], int]

# Pending storage commitment requests, by the handler "pointer" given to
# Orthanc: a counter, never 0.
_commitments: dict[int, Any] = {}
_commitment_ids = itertools.count(1)


def RegisterStorageCommitmentScpCallback(factory: StorageCommitmentFactory,
                                         destructor: StorageCommitmentDestructor | None,
                                         lookup: StorageCommitmentLookup) -> None:
    """Makes the script answer the storage commitment requests Orthanc receives (its N-ACTION SCP).

    For each request, Orthanc starts a job that calls:

    - ``factory(jobId, transactionUid, sopClassUids, sopInstanceUids,
      remoteAet, calledAet)`` once: the ID of that Orthanc job, the
      transaction UID (0008,1195), the SOP class and instance UIDs the SCU
      asks about (two ``list`` of ``str`` of the same length), and the AE
      titles of the SCU and of Orthanc. It returns a handler: any Python
      object (``None`` too), given back to the two other callbacks; the
      place to start fetching the answers in the background;
    - ``lookup(handler, sopClassUid, sopInstanceUid)`` for each instance in
      turn: it returns an :class:`orthanc.StorageCommitmentFailureReason`,
      ``SUCCESS`` (``0``) when the instance is safely stored;
    - ``destructor(handler)`` when Orthanc drops the request's job, which
      may be long after the answer: once the job leaves Orthanc's jobs
      history (option ``JobsHistorySize``), or when Orthanc stops
      (``destructor`` may be ``None``).

    Orthanc then sends the answers to the SCU (N-EVENT-REPORT). When
    ``factory`` raises, the request fails; when ``lookup`` raises or returns
    something else, the instance is reported as ``PROCESSING_FAILURE``. The
    reason goes to Orthanc's log either way.

    :raises TypeError: when an argument is not callable (``destructor`` may be ``None``).
    :raises RuntimeError: when a storage commitment SCP is already registered.
    """
    function = "RegisterStorageCommitmentScpCallback"
    _check_callable(function, "factory", factory)
    if destructor is not None:
        _check_callable(function, "destructor", destructor)
    _check_callable(function, "lookup", lookup)
    if not _claim(function, "storage commitment SCP"):
        return
    c_strings = _capi._c_strings
    lookup_where = f"the storage commitment lookup callback {_name(lookup)}"

    def c_factory(handler: Any, job_id: bytes | None, transaction_uid: bytes | None, sop_class_uids: Any,
                  sop_instance_uids: Any, count: int, remote_aet: bytes | None, called_aet: bytes | None) -> int:
        created = factory(_decode(job_id), _decode(transaction_uid), c_strings(sop_class_uids, count),
                          c_strings(sop_instance_uids, count), _decode(remote_aet), _decode(called_aet))
        driver = next(_commitment_ids)
        _commitments[driver] = created
        handler[0] = driver
        return SUCCESS

    def c_destructor(driver: int | None) -> None:
        created = _commitments.pop(driver or 0, None)
        if destructor is not None:
            destructor(created)

    def c_lookup(target: Any, driver: int | None, sop_class_uid: bytes | None, sop_instance_uid: bytes | None) -> int:
        target[0] = int(FailureReason.ProcessingFailure)
        try:
            reason = lookup(_commitments.get(driver or 0), _decode(sop_class_uid), _decode(sop_instance_uid))
        except BaseException:  # noqa: BLE001 - logged; the SCU is told this instance failed
            _capi.report_exception(lookup_where)
            return SUCCESS
        if not _is_int(reason) or reason not in _FAILURE_REASONS:
            _capi.log_error(
                f"orthanc_py: {lookup_where} returned {reason!r}, not an orthanc.StorageCommitmentFailureReason "
                "value; the instance is reported as PROCESSING_FAILURE"
            )
            return SUCCESS
        target[0] = int(reason)
        return SUCCESS

    params = _sdk._OrthancPluginRegisterStorageCommitmentScpCallback()
    params.factory = _capi.trampoline(
        _sdk.OrthancPluginStorageCommitmentFactory, f"the storage commitment factory {_name(factory)}", PLUGIN_ERROR
    )(c_factory)
    params.destructor = _capi.trampoline(
        _sdk.OrthancPluginStorageCommitmentDestructor,
        f"the storage commitment destructor {_name(destructor) if destructor else ''}", None,  # type: ignore[arg-type]
    )(c_destructor)
    params.lookup = _capi.trampoline(_sdk.OrthancPluginStorageCommitmentLookup, lookup_where, PLUGIN_ERROR)(c_lookup)
    _register(Service.RegisterStorageCommitmentScpCallback, params, function)


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
            except BaseException as error:  # noqa: BLE001 - raised again to the caller
                self.error = error

        return c_type(c_binary)

    def finish(self, result: ctypes.c_void_p) -> str:
        text = _capi.take_string(result)
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
    _capi._set_out_pointer(params, "target", result)
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
    _capi._set_out_pointer(params, "targetStringToFree", result)
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



# --- HTTP client with chunked transfers ---------------------------------------------------------------

class _ChunkedTransfer:
    """The request body (an iterator over chunks) and the answer of one chunked HTTP call.

    Orthanc calls back during the SDK call, on the caller's thread: an
    exception of the script's is kept, the transfer stopped (error code), and
    the exception raised again to the caller once Orthanc returns.
    """

    _DONE = object()

    def __init__(self, body: Any, answer_chunk: Callable[[bytes], Any] | None) -> None:
        if body is None:
            body = []
        elif isinstance(body, (bytes, bytearray, memoryview, str)):
            body = [body]
        self.chunks = iter(body)
        self.current: Any = None
        self.answer_chunk = answer_chunk
        self.answer: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.error: BaseException | None = None
        self.advance()

    def advance(self) -> int:
        try:
            chunk = next(self.chunks, self._DONE)
            if chunk is not self._DONE:
                # Orthanc takes each chunk's size as 32 bits.
                data = _calls._to_bytes(chunk, "orthanc.ChunkedHttpClient(): a chunk of the body", 0xFFFFFFFF)
                chunk = (ctypes.create_string_buffer(data, len(data)), len(data))
        except BaseException as error:  # noqa: BLE001 - raised again to the caller
            self.error = error
            self.current = self._DONE
            return PLUGIN_ERROR
        self.current = chunk  # kept until the next chunk: Orthanc reads it meanwhile
        return SUCCESS

    def c_callbacks(self) -> dict[str, Any]:
        def add_header(_answer: Any, key: bytes | None, value: bytes | None) -> int:
            self.headers[_decode(key)] = _decode(value)
            return SUCCESS

        def add_chunk(_answer: Any, data: int | None, size: int) -> int:
            chunk = _capi.copy_memory(data, size)
            if self.answer_chunk is None:
                self.answer.append(chunk)
                return SUCCESS
            try:
                self.answer_chunk(chunk)
            except BaseException as error:  # noqa: BLE001 - raised again to the caller
                self.error = error
                return PLUGIN_ERROR
            return SUCCESS

        def is_done(_request: Any) -> int:
            return int(self.current is self._DONE)

        def chunk_data(_request: Any) -> int | None:
            return None if self.current is self._DONE else ctypes.addressof(self.current[0])

        def chunk_size(_request: Any) -> int:
            return 0 if self.current is self._DONE else self.current[1]

        def next_chunk(_request: Any) -> int:
            return self.advance()

        where = "orthanc.ChunkedHttpClient()"
        return {
            "answerAddHeader": _sdk.OrthancPluginChunkedClientAnswerAddHeader(_guard(add_header, where, PLUGIN_ERROR)),
            "answerAddChunk": _sdk.OrthancPluginChunkedClientAnswerAddChunk(_guard(add_chunk, where, PLUGIN_ERROR)),
            "requestIsDone": _sdk.OrthancPluginChunkedClientRequestIsDone(_guard(is_done, where, 1)),
            "requestChunkData": _sdk.OrthancPluginChunkedClientRequestGetChunkData(_guard(chunk_data, where, 0)),
            "requestChunkSize": _sdk.OrthancPluginChunkedClientRequestGetChunkSize(_guard(chunk_size, where, 0)),
            "requestNext": _sdk.OrthancPluginChunkedClientRequestNext(_guard(next_chunk, where, PLUGIN_ERROR)),
        }


def _guard(function: Callable[..., Any], where: str, on_error: Any) -> Callable[..., Any]:
    """Like :func:`_capi.trampoline`, for a C callback that lives during one SDK call only (not kept)."""
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except BaseException:  # noqa: BLE001 - logged; never reaches C
            try:
                _capi.report_exception(where)
            except BaseException:  # noqa: BLE001 - the error code must reach Orthanc regardless
                pass
            return on_error

    return guarded


def ChunkedHttpClient(method: int, url: str, headers: Any = None, body: Any = None, username: str | None = None,
                      password: str | None = None, timeout: int = 0, certificateFile: str | None = None,
                      certificateKeyFile: str | None = None, certificateKeyPassword: str | None = None,
                      pkcs11: bool = False, *, answerChunk: Callable[[bytes], Any] | None = None) -> tuple[bytes, dict[str, str], int]:
    """Makes an HTTP call with chunked transfers: the body is sent, and the answer read, piece by piece.

    Unlike :func:`orthanc.HttpClient`, neither the body nor the answer needs
    to be in memory as a whole. Orthanc's options ``HttpProxy``,
    ``HttpTimeout``, ``HttpsVerifyPeers``, ``HttpsCACertificates`` and
    ``Pkcs11`` apply. Orthanc 1.5.6 and older, as a server, do not take
    chunked transfers.

    :param method: an :class:`orthanc.HttpMethod` value.
    :param url: the URL to call.
    :param headers: the request's headers (a ``dict`` of ``str``), or ``None``.
    :param body: the request's body: ``bytes``, any iterable of ``bytes``
        chunks (a generator streams it), or ``None``.
    :param username: for HTTP basic authentication (or ``None``).
    :param password: its password (or ``None``).
    :param timeout: in seconds (``0``: Orthanc's ``HttpTimeout``).
    :param certificateFile: the client certificate for HTTPS, PEM (or ``None``).
    :param certificateKeyFile: its key, PEM (or ``None``).
    :param certificateKeyPassword: the key's password (or ``None``).
    :param pkcs11: whether to use PKCS#11 for the client certificate.
    :param answerChunk: when given, ``answerChunk(chunk)`` receives each
        piece of the answer's body (``bytes``) as it arrives, and the
        returned body is ``b""``.
    :returns: ``(answerBody, answerHeaders, httpStatus)``: ``bytes``, a
        ``dict`` of ``str`` and an ``int``.
    :raises OrthancError: when Orthanc reports that the call failed.
    :raises TypeError: when an argument has the wrong type.
    """
    function = "ChunkedHttpClient"
    if answerChunk is not None:
        _check_callable(function, "answerChunk", answerChunk)
    transfer = _ChunkedTransfer(body, answerChunk)
    pairs = _calls._to_string_pairs(headers, f"{function}() argument 'headers'")
    status = ctypes.c_uint16()
    params = _sdk._OrthancPluginChunkedHttpClient()
    thunks = transfer.c_callbacks()  # kept alive by this local until Orthanc returns
    for field, thunk in thunks.items():
        setattr(params, field, thunk)
    params.answer = params.request = None
    params.httpStatus = ctypes.pointer(status)
    params.method = _calls._to_int(method, f"{function}() argument 'method'")
    params.url = _calls._to_required_c_string(url, f"{function}() argument 'url'")
    params.headersCount = len(pairs)
    params.headersKeys = (ctypes.c_char_p * len(pairs))(*(k for k, _ in pairs))
    params.headersValues = (ctypes.c_char_p * len(pairs))(*(v for _, v in pairs))
    params.username = _calls._to_c_string(username, f"{function}() argument 'username'")
    params.password = _calls._to_c_string(password, f"{function}() argument 'password'")
    params.timeout = _calls._to_int(timeout, f"{function}() argument 'timeout'")
    params.certificateFile = _calls._to_c_string(certificateFile, f"{function}() argument 'certificateFile'")
    params.certificateKeyFile = _calls._to_c_string(certificateKeyFile, f"{function}() argument 'certificateKeyFile'")
    params.certificateKeyPassword = _calls._to_c_string(
        certificateKeyPassword, f"{function}() argument 'certificateKeyPassword'"
    )
    params.pkcs11 = 1 if pkcs11 else 0
    try:
        _capi.invoke(Service.ChunkedHttpClient, params, f"orthanc.{function}()")
    except _capi.OrthancError:
        if transfer.error is None:
            raise
    del thunks
    if transfer.error is not None:
        raise transfer.error
    return b"".join(transfer.answer), transfer.headers, status.value


# --- methods of the orthanc module's classes -----------------------------------------------------

def _attach_methods() -> None:
    """Puts the hand-written methods above on the ``orthanc`` module's classes.

    Imported here, at the end, so that it works whichever of the two modules
    is imported first: when ``_compat`` imports this module, it is part-way
    through and its classes exist (its SDK-built methods come after, and
    leave these alone); when this module comes first (the decorator API
    registers filters through it), ``_compat`` imports completely here.
    """
    from . import _compat

    for cls, method in (
        (_calls.handle_class("OrthancPluginJob"), _SubmitJob),
        (_compat.DicomInstance, GetInstanceDicomWebJson),
        (_compat.DicomInstance, GetInstanceDicomWebXml),
    ):
        name = method.__name__.lstrip("_")
        method.__name__ = method.__qualname__ = name
        method.__module__ = "orthanc"
        setattr(cls, name, _SdkMethod(method))
        _compat.UNSUPPORTED.pop(f"OrthancPlugin{name}", None)


# --- REST callbacks with chunked uploads -----------------------------------------------------------

ChunkedRestHandler = Callable[..., Any]
ChunkedReaderFactory = Callable[..., Any]

# The SDK's callback types, with every Orthanc object as a plain address:
# ctypes then builds no pointer objects, and the reader "pointer" is our ID.
_RawChunkedFactory = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
_RawChunkedAddChunk = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)
_RawChunkedExecute = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
_RawChunkedFinalize = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _ChunkedUpload:
    """One POST or PUT being received: the script's reader, until Orthanc finalizes it."""

    __slots__ = ("reader", "where", "method", "uri", "failed")

    def __init__(self, reader: Any, where: str, method: str, uri: str) -> None:
        self.reader = reader
        self.where = where
        self.method = method
        self.uri = uri
        self.failed = False  # AddChunk() raised: the body is incomplete


# Uploads in progress, by the reader "pointer" given to Orthanc: a counter, never 0.
_uploads: dict[int, _ChunkedUpload] = {}
_upload_ids = itertools.count(1)
_uploads_lock = threading.Lock()


def _rest_request(request: _capi.HttpRequestView) -> dict[str, Any]:
    """The keyword arguments of a REST handler, as :func:`orthanc.RegisterRestCallback` gives them (no body)."""
    return {
        "method": request.method,
        "groups": request.groups,
        "get": dict(request.get),
        "headers": dict(request.headers),
    }


def _nested(where: str, uri: str, call: Callable[[], int]) -> int:
    """Runs ``call()`` one REST nesting level deeper; refuses past :data:`_capi.MAX_REST_NESTING`."""
    depth = getattr(_capi._nesting, "depth", 0)
    if depth >= _capi.MAX_REST_NESTING:
        _capi.log_error(f"orthanc_py: {where}: {depth} REST calls nested in one another on one thread "
                        f"(a route calling itself through the REST API?); refusing {uri}")
        return PLUGIN_ERROR
    _capi._nesting.depth = depth + 1
    try:
        return call()
    finally:
        _capi._nesting.depth = depth


def _answered(output: Any, where: str, method: str, uri: str) -> int:
    _capi.expire(output)  # lent by Orthanc for the call only
    if output.answered:
        return SUCCESS
    _capi.log_error(
        f"orthanc_py: {where} returned without answering {method} {uri}; the client gets HTTP 500 "
        "(answer with output.AnswerBuffer(), output.SendHttpStatusCode()...)"
    )
    return PLUGIN_ERROR


def RegisterChunkedRestCallback(pathRegularExpression: str, getHandler: ChunkedRestHandler | None = None,
                                postFactory: ChunkedReaderFactory | None = None,
                                deleteHandler: ChunkedRestHandler | None = None,
                                putFactory: ChunkedReaderFactory | None = None) -> None:
    """Serves the URIs matching a regular expression, receiving POST and PUT bodies chunk by chunk.

    Unlike :func:`orthanc.RegisterRestCallback`, the body of an upload is
    never in memory as a whole: it streams into a *reader* object as the
    client sends it, which suits large uploads (``Transfer-Encoding:
    chunked`` or not).

    - ``getHandler(output, uri, **request)`` and ``deleteHandler(output,
      uri, **request)`` answer GET and DELETE requests exactly like the
      handler of :func:`orthanc.RegisterRestCallback`: ``request`` holds
      ``method``, ``groups``, ``get`` and ``headers``, and the handler
      answers through ``output`` (:class:`orthanc.RestOutput`);
    - ``postFactory(uri, **request)`` and ``putFactory(uri, **request)``
      are called when a POST or PUT request arrives, with the same
      ``request`` (no ``body``). Each returns a new reader, an object with
      the methods ``AddChunk(data)``, called with each piece of the body
      (``bytes``) in order, and ``Execute(output)``, called once the whole
      body is received, which answers through ``output``. When the reader
      also has a ``Finalize()`` method, it is called last, once Orthanc
      drops the request: after ``Execute``, or instead of it when the
      client went away or something failed.

    Orthanc 1.10 hands a chunked body (``Transfer-Encoding: chunked``) over
    in pieces of up to 1 MiB, whatever the client's chunks, and a body sent
    with ``Content-Length`` in one piece.

    A method without a handler answers HTTP 405. When a handler, factory or
    reader method raises (or the handler or ``Execute`` returns without
    answering), the reason goes to Orthanc's log and the client gets HTTP
    500; once ``AddChunk`` has raised, ``Execute`` is not called. Orthanc
    runs these callbacks on its HTTP threads, several requests at once; each
    reader sees the calls of one request only, one at a time.

    Unlike :func:`orthanc.RegisterRestCallback`, Orthanc gives a chunked
    route no request body: register POST and PUT through the factories.

    :param pathRegularExpression: the URIs to serve (Perl syntax, case
        sensitive, groups allowed), e.g. ``"/upload/(.*)"``.
    :param getHandler: the GET handler, or ``None``.
    :param postFactory: the factory of POST readers, or ``None``.
    :param deleteHandler: the DELETE handler, or ``None``.
    :param putFactory: the factory of PUT readers, or ``None``.
    :raises TypeError: when ``pathRegularExpression`` is not a ``str`` or a
        handler is neither callable nor ``None``.
    """
    function = "RegisterChunkedRestCallback"
    if not isinstance(pathRegularExpression, str):
        raise TypeError(f"{function}() argument 'pathRegularExpression' must be str, "
                        f"not {type(pathRegularExpression).__name__}")
    handlers = {"getHandler": getHandler, "postFactory": postFactory, "deleteHandler": deleteHandler,
                "putFactory": putFactory}
    for argument, value in handlers.items():
        if value is not None:
            _check_callable(function, argument, value)
    if not _capi.is_attached():
        return  # a worker process re-running the script: nothing to serve
    _runtime.require_setup(f"orthanc.{function}()")
    from ._official.rest import RestOutput

    def rest_handler(handler: ChunkedRestHandler | None) -> Any:
        if handler is None:
            return _sdk.OrthancPluginRestCallback()  # NULL: Orthanc answers HTTP 405
        where = f"the chunked REST callback {_name(handler)} for {pathRegularExpression}"

        def c_handler(output_address: int | None, url: bytes | None, request_address: int | None) -> int:
            uri = _decode(url)
            request = _capi.HttpRequestView(_capi._HttpRequest.from_address(request_address or 0))

            def call() -> int:
                output = RestOutput.lent(output_address or 0)
                kwargs = _rest_request(request)
                try:
                    handler(output, uri, **kwargs)
                except BaseException:  # noqa: BLE001 - logged; the client gets HTTP 500
                    _capi.expire(output)
                    _capi.report_exception(where)
                    return PLUGIN_ERROR
                return _answered(output, where, kwargs["method"], uri)

            try:
                return _nested(where, uri, call)
            finally:
                _capi.expire(request)

        thunk = _capi.trampoline(_RawChunkedFactory, where)(c_handler)
        return ctypes.cast(thunk, _sdk.OrthancPluginRestCallback)

    def reader_factory(factory: ChunkedReaderFactory | None) -> Any:
        if factory is None:
            return _sdk.OrthancPluginServerChunkedRequestReaderFactory()  # NULL: HTTP 405
        where = f"the chunked-upload reader factory {_name(factory)} for {pathRegularExpression}"

        def c_factory(target: int | None, url: bytes | None, request_address: int | None) -> int:
            uri = _decode(url)
            view = _capi.HttpRequestView(_capi._HttpRequest.from_address(request_address or 0))
            try:
                request = _rest_request(view)
            finally:
                _capi.expire(view)
            reader = factory(uri, **request)
            for method in ("AddChunk", "Execute"):
                if not callable(getattr(reader, method, None)):
                    _capi.log_error(
                        f"orthanc_py: {where} returned {type(reader).__name__}, which has no {method}() method; "
                        "the client gets HTTP 500 (return a reader with AddChunk(data) and Execute(output))"
                    )
                    return PLUGIN_ERROR
            upload = _ChunkedUpload(reader, f"the chunked-upload reader {type(reader).__qualname__} for "
                                            f"{request['method']} {uri}", request["method"], uri)
            with _uploads_lock:
                driver = next(_upload_ids)
                _uploads[driver] = upload
            ctypes.c_void_p.from_address(target or 0).value = driver
            return SUCCESS

        thunk = _capi.trampoline(_RawChunkedFactory, where)(c_factory)
        return ctypes.cast(thunk, _sdk.OrthancPluginServerChunkedRequestReaderFactory)

    def upload_of(driver: int | None) -> _ChunkedUpload | None:
        with _uploads_lock:
            upload = _uploads.get(driver or 0)
        if upload is None:
            _capi.log_error(f"orthanc_py: unknown chunked-upload reader {driver}")
        return upload

    def c_add_chunk(driver: int | None, data: int | None, size: int) -> int:
        upload = upload_of(driver)
        if upload is None or upload.failed:
            return PLUGIN_ERROR
        try:
            upload.reader.AddChunk(_capi.copy_memory(data, size))
        except BaseException:  # noqa: BLE001 - logged; the upload fails (HTTP 500)
            # Orthanc 1.10.1 goes on to execute() whatever addChunk() returns:
            # remembered, so that Execute() never sees a partial body.
            upload.failed = True
            _capi.report_exception(upload.where)
            return PLUGIN_ERROR
        return SUCCESS

    def c_execute(driver: int | None, output_address: int | None) -> int:
        upload = upload_of(driver)
        if upload is None:
            return PLUGIN_ERROR
        if upload.failed:
            _capi.log_error(f"orthanc_py: {upload.where}: AddChunk() failed, so Execute() is not called; "
                            f"the client gets HTTP 500")
            return PLUGIN_ERROR

        def call() -> int:
            output = RestOutput.lent(output_address or 0)
            try:
                upload.reader.Execute(output)
            except BaseException:  # noqa: BLE001 - logged; the client gets HTTP 500
                _capi.expire(output)
                _capi.report_exception(upload.where)
                return PLUGIN_ERROR
            return _answered(output, upload.where, upload.method, upload.uri)

        return _nested(upload.where, upload.uri, call)

    def c_finalize(driver: int | None) -> None:
        with _uploads_lock:
            upload = _uploads.pop(driver or 0, None)
        finalize = getattr(upload.reader, "Finalize", None) if upload is not None else None
        if upload is not None and callable(finalize):
            try:
                finalize()
            except BaseException:  # noqa: BLE001 - logged; nothing to report to Orthanc
                _capi.report_exception(upload.where)

    where = f"the chunked REST callbacks for {pathRegularExpression}"
    params = _sdk._OrthancPluginChunkedRestCallback()
    params.pathRegularExpression = _calls._to_required_c_string(
        pathRegularExpression, f"{function}() argument 'pathRegularExpression'")
    params.getHandler = rest_handler(getHandler)
    params.postHandler = reader_factory(postFactory)
    params.deleteHandler = rest_handler(deleteHandler)
    params.putHandler = reader_factory(putFactory)
    params.addChunk = ctypes.cast(_capi.trampoline(_RawChunkedAddChunk, where)(c_add_chunk),
                                  _sdk.OrthancPluginServerChunkedRequestReaderAddChunk)
    params.execute = ctypes.cast(_capi.trampoline(_RawChunkedExecute, where)(c_execute),
                                 _sdk.OrthancPluginServerChunkedRequestReaderExecute)
    params.finalize = ctypes.cast(
        _capi.trampoline(_RawChunkedFinalize, where, None)(c_finalize),  # type: ignore[arg-type]
        _sdk.OrthancPluginServerChunkedRequestReaderFinalize,
    )
    _capi.invoke(Service.RegisterChunkedRestCallback, _capi.keep_alive(params), f"orthanc.{function}()")


# --- WebDAV collections ---------------------------------------------------------------------------

WebDavPath = list[str]


def _webdav_time(value: Any, what: str) -> bytes:
    """A date and time as Orthanc's WebDAV wants it: ``YYYYMMDDTHHMMSS`` in UTC."""
    if value is None:
        value = datetime.datetime.now(datetime.timezone.utc)
    if isinstance(value, datetime.datetime):
        stamp: datetime.datetime = value
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(datetime.timezone.utc)
        return stamp.strftime("%Y%m%dT%H%M%S").encode("ascii")  # WebDAV clients show whole seconds
    if isinstance(value, str):
        return bytes(value.encode("utf-8"))
    raise TypeError(f"{what}: the date and time must be a datetime.datetime, a str such as "
                    f"'20220314T153000' (UTC) or None, not {type(value).__name__}")


def _webdav_mime(value: Any, what: str) -> bytes | None:
    if value is None:
        return None  # Orthanc guesses from the file's extension
    if not isinstance(value, str):
        raise TypeError(f"{what}: the MIME type must be a str or None, not {type(value).__name__}")
    return value.encode("utf-8")


def _webdav_name(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value or "/" in value:
        raise TypeError(f"{what}: a name must be a non-empty str without '/', not {value!r}")
    return value.encode("utf-8")


def _webdav_listing(listing: Any, where: str) -> tuple[list[tuple[bytes, int, bytes | None, bytes]],
                                                       list[tuple[bytes, bytes]]]:
    """Checks what ``listFolder`` returned; the entries, ready for Orthanc."""
    what = f"{where} returned {type(listing).__name__}"
    if not isinstance(listing, (tuple, list)) or len(listing) != 2:
        raise TypeError(f"{what}, not None or (files, folders)")
    files: list[tuple[bytes, int, bytes | None, bytes]] = []
    for entry in listing[0]:
        if isinstance(entry, (tuple, list)) and 2 <= len(entry) <= 4:
            name, size, mime, when = (*entry, None, None)[:4]
            if _is_int(size) and size >= 0:
                files.append((_webdav_name(name, where), size, _webdav_mime(mime, where), _webdav_time(when, where)))
                continue
        raise TypeError(f"{where}: the file {entry!r} is not (name, size[, mimeType[, dateTime]])")
    folders: list[tuple[bytes, bytes]] = []
    for entry in listing[1]:
        name, when = (entry, None) if isinstance(entry, str) else (*entry, None)[:2]
        folders.append((_webdav_name(name, where), _webdav_time(when, where)))
    return files, folders


def _webdav_content(result: Any, where: str) -> tuple[bytes, bytes | None, bytes]:
    """Checks what ``retrieveFile`` returned: ``content`` or ``(content[, mimeType[, dateTime]])``."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = (result,)
    if isinstance(result, (tuple, list)) and 1 <= len(result) <= 3:
        content, mime, when = (*result, None, None)[:3]
        if isinstance(content, (bytes, bytearray, memoryview)):
            return bytes(content), _webdav_mime(mime, where), _webdav_time(when, where)
    raise TypeError(f"{where} returned {type(result).__name__}, not None, bytes or (content, mimeType, dateTime)")


def RegisterWebDavCollection(uri: str, isExistingFolder: Callable[[WebDavPath], Any],
                             listFolder: Callable[[WebDavPath], Any], retrieveFile: Callable[[WebDavPath], Any],
                             storeFile: Callable[[WebDavPath, bytes], Any] | None,
                             createFolder: Callable[[WebDavPath], Any] | None,
                             deleteItem: Callable[[WebDavPath], Any] | None) -> None:
    """Serves a virtual tree of folders and files through WebDAV, at ``uri``.

    WebDAV clients (file managers, ``davfs2``, ``cadaver``, Windows' network
    drives...) then browse, read and possibly write the tree the script
    describes. Each callback gets the ``path`` asked for, relative to
    ``uri``, as a ``list`` of ``str`` (``[]`` for ``uri`` itself):

    - ``isExistingFolder(path)`` returns ``True`` when ``path`` is a folder;
    - ``listFolder(path)`` returns ``(files, folders)``, or ``None`` when
      there is no such folder. ``files`` lists ``(name, size, mimeType,
      dateTime)`` tuples (``mimeType`` and ``dateTime`` may be left out or
      ``None``: Orthanc then guesses the type from the extension), and
      ``folders`` lists names, or ``(name, dateTime)`` tuples;
    - ``retrieveFile(path)`` returns the file's content (``bytes``), or
      ``(content, mimeType, dateTime)``, or ``None`` when there is no such
      file (the client gets HTTP 404);
    - ``storeFile(path, content)`` stores ``content`` (``bytes``) as the
      file ``path``, and returns ``True``, or ``False`` to refuse (the
      collection is read-only there);
    - ``createFolder(path)`` creates a folder and ``deleteItem(path)``
      deletes a file or a folder; both return ``True``, or ``False`` to
      refuse.

    ``storeFile``, ``createFolder`` and ``deleteItem`` may be ``None``: the
    collection is then read-only for that operation. A ``dateTime`` is a
    :class:`datetime.datetime` (naive ones are taken as UTC), a ``str`` in
    Orthanc's format ``YYYYMMDDTHHMMSS`` (UTC), or ``None`` for now. When a
    callback raises or returns something else, the reason goes to Orthanc's
    log and the client's request fails (HTTP 500). The callbacks run on
    Orthanc's HTTP threads, possibly several at once.

    The collection is served whatever the option ``WebDavEnabled``, which
    only concerns Orthanc's own WebDAV tree (``/webdav``). Several
    collections may be registered, at different URIs.

    :param uri: where to serve the collection, starting with ``/`` (e.g.
        ``"/my-files"``).
    :param isExistingFolder: tells whether a path is a folder.
    :param listFolder: lists a folder.
    :param retrieveFile: reads a file.
    :param storeFile: writes a file, or ``None``.
    :param createFolder: creates a folder, or ``None``.
    :param deleteItem: deletes a file or a folder, or ``None``.
    :raises TypeError: when ``uri`` is not a ``str`` or a callback is not callable.
    :raises ValueError: when ``uri`` does not start with ``/``.
    :raises OrthancError: when Orthanc refuses the collection.
    """
    function = "RegisterWebDavCollection"
    if not isinstance(uri, str):
        raise TypeError(f"{function}() argument 'uri' must be str, not {type(uri).__name__}")
    if not uri.startswith("/"):
        raise ValueError(f"{function}() argument 'uri' must start with '/', not {uri!r}")
    for argument, value in (("isExistingFolder", isExistingFolder), ("listFolder", listFolder),
                            ("retrieveFile", retrieveFile)):
        _check_callable(function, argument, value)
    for argument, optional in (("storeFile", storeFile), ("createFolder", createFolder), ("deleteItem", deleteItem)):
        if optional is not None:
            _check_callable(function, argument, optional)
    if not _capi.is_attached():
        return
    _runtime.require_setup(f"orthanc.{function}()")
    c_strings = _capi._c_strings

    def where(name: str, callback: Callable[..., Any] | None) -> str:
        return f"the WebDAV callback {name} {_name(callback) if callback else ''} of {uri}".replace("  ", " ")

    def yes_or_no(answer: Any, what: str) -> bool:
        if answer is True or answer is False:
            return answer
        raise TypeError(f"{what} returned {answer!r}, not True or False")

    existing_where = where("isExistingFolder", isExistingFolder)

    def c_is_existing(is_existing: Any, size: int, items: Any, _payload: Any) -> int:
        is_existing[0] = int(yes_or_no(isExistingFolder(c_strings(items, size)), existing_where))
        return SUCCESS

    list_where = where("listFolder", listFolder)

    def c_list(is_existing: Any, collection: Any, add_file: Any, add_folder: Any, size: int, items: Any,
               _payload: Any) -> int:
        is_existing[0] = 0
        listing = listFolder(c_strings(items, size))
        if listing is None:
            return SUCCESS
        files, folders = _webdav_listing(listing, list_where)
        for name, file_size, mime, when in files:
            code = add_file(collection, name, file_size, mime, when)
            if code != SUCCESS:
                return int(code)
        for name, when in folders:
            code = add_folder(collection, name, when)
            if code != SUCCESS:
                return int(code)
        is_existing[0] = 1
        return SUCCESS

    retrieve_where = where("retrieveFile", retrieveFile)

    def c_retrieve(collection: Any, retrieve: Any, size: int, items: Any, _payload: Any) -> int:
        result = retrieveFile(c_strings(items, size))
        if result is None:
            return int(ErrorCode.UnknownResource)  # HTTP 404
        content, mime, when = _webdav_content(result, retrieve_where)
        buffer = ctypes.create_string_buffer(content, len(content))
        return int(retrieve(collection, ctypes.addressof(buffer), len(content), mime, when))

    def writer(name: str, callback: Callable[..., Any] | None, with_content: bool) -> Any:
        what = where(name, callback)

        # The flag Orthanc calls "isReadOnly" is, in Orthanc 1.10.1, read as
        # "done": 0 makes it answer HTTP 403 (even though the file was
        # stored), 1 makes it answer 201 or 204. Measured, and pinned by the
        # tests (tests/test_compat_chunked_webdav.py), so that an Orthanc
        # that reads it the other way shows up at once.
        def c_write(done_flag: Any, size: int, items: Any, *rest: Any) -> int:
            done_flag[0] = 0
            if callback is None:
                return SUCCESS  # read-only: HTTP 403
            path = c_strings(items, size)
            if with_content:
                data, data_size = rest[0], rest[1]
                done = callback(path, _capi.copy_memory(data, data_size))
            else:
                done = callback(path)
            done_flag[0] = int(yes_or_no(done, what))
            return SUCCESS

        return what, c_write

    params = _sdk._OrthancPluginRegisterWebDavCollection()
    params.uri = _calls._to_required_c_string(uri, f"{function}() argument 'uri'")
    params.isExistingFolder = _capi.trampoline(_sdk.OrthancPluginWebDavIsExistingFolderCallback, existing_where)(
        c_is_existing
    )
    params.listFolder = _capi.trampoline(_sdk.OrthancPluginWebDavListFolderCallback, list_where)(c_list)
    params.retrieveFile = _capi.trampoline(_sdk.OrthancPluginWebDavRetrieveFileCallback, retrieve_where)(c_retrieve)
    writers: tuple[tuple[str, Callable[..., Any] | None, bool, Any], ...] = (
        ("storeFile", storeFile, True, _sdk.OrthancPluginWebDavStoreFileCallback),
        ("createFolder", createFolder, False, _sdk.OrthancPluginWebDavCreateFolderCallback),
        ("deleteItem", deleteItem, False, _sdk.OrthancPluginWebDavDeleteItemCallback),
    )
    for field, callback, with_content, c_type in writers:
        what, c_write = writer(field, callback, with_content)
        setattr(params, field, _capi.trampoline(c_type, what)(c_write))
    params.payload = None
    _capi.invoke(Service.RegisterWebDavCollection, _capi.keep_alive(params), f"orthanc.{function}()")


# Last: _compat, which this may import, imports every name defined above.
_attach_methods()
