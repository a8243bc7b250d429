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

import ctypes
import itertools
import threading
from collections.abc import Callable
from typing import Any

from . import _calls, _capi, _runtime, _sdk
from ._calls import Handle

ErrorCode = _capi.ErrorCode
Service = _capi.Service
Action = _sdk.OrthancPluginReceivedInstanceAction

SUCCESS = int(ErrorCode.Success)
PLUGIN_ERROR = int(ErrorCode.Plugin)

__all__ = [
    "RegisterFindCallback",
    "RegisterIncomingCStoreInstanceFilter",
    "RegisterIncomingHttpRequestFilter",
    "RegisterMoveCallback",
    "RegisterReceivedInstanceCallback",
    "RegisterStorageArea",
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

    The caller sets ``_address = 0`` after the call, so that a handle the
    script kept fails cleanly instead of touching freed memory.
    """
    address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
    return _calls.handle_class(c_type_name)(address, owned=False)


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
        received = ctypes.string_at(data, size) if data and size else b""
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
            instance._address = 0
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
            answers._address = query._address = 0
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
        create(_decode(uuid), content_type, ctypes.string_at(content, size) if content and size > 0 else b"")
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
