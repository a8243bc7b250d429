# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters: HTTP requests, received instances, C-STORE and DICOM instances.

- :func:`RegisterIncomingHttpRequestFilter` -- ``callback(uri, method=, ip=,
  headers=[, get=])`` returns ``True`` (accept) or ``False`` (HTTP 403);
- :func:`RegisterReceivedInstanceCallback` -- ``callback(receivedDicom,
  origin)`` returns ``(ReceivedInstanceAction.X, modifiedDicom or None)``;
- :func:`RegisterIncomingCStoreInstanceFilter` -- ``callback(instance)``
  returns ``0`` (store) or the DIMSE status of the refusal;
- :func:`RegisterIncomingDicomInstanceFilter` -- ``callback(instance)``
  returns whether Orthanc stores the instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _capi, _sdk
from .._calls import Handle
from .registration import (
    Action,
    Service,
    _check_callable,
    _claim,
    _decode,
    _fill_buffer64,
    _is_int,
    _lend,
    _name,
    _register,
)

__all__ = [
    "RegisterIncomingCStoreInstanceFilter",
    "RegisterIncomingDicomInstanceFilter",
    "RegisterIncomingHttpRequestFilter",
    "RegisterReceivedInstanceCallback",
]


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
    c_strings = _capi.c_strings

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

REFUSE_INSTANCE = 0
"""What a failed received-instance callback returns to Orthanc: no action at all.

Orthanc refuses the instance for any value that is not a
``ReceivedInstanceAction`` ("The ReceivedInstanceCallback has returned an
invalid value"): the upload or C-STORE fails and nothing is stored. A
callback that transforms what is stored (de-identification, say) must not
let the original through when it breaks."""


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
    Orthanc's log, with the callback's name and what it returned, and the
    instance is refused: nothing is stored, the REST API answers an error and
    a C-STORE fails, so that the sender keeps the instance and can send it
    again. A hook that guards data fails closed: a de-identification
    callback that breaks must never let the original through.

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
        _capi.log_error(f"orthanc_py: {where} {why}; the instance is refused")
        return REFUSE_INSTANCE

    def c_received(modified: Any, data: Any, size: int, origin: int) -> int:
        received = _capi.copy_memory(data, size)
        try:
            result = callback(received, origin)
        except BaseException:  # logged; the instance is refused (see below)
            _capi.report_exception(f"{where}; the instance is refused")
            return REFUSE_INSTANCE
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
        if not buffer:
            return refuse("returned MODIFY with an empty file, not the modified DICOM file")
        _fill_buffer64(modified, bytes(buffer))
        return int(Action.Modify)

    params = _sdk._OrthancPluginReceivedInstanceCallback()
    params.callback = _capi.trampoline(
        _sdk.OrthancPluginReceivedInstanceCallback, where, on_error=REFUSE_INSTANCE
    )(c_received)
    _register(Service.RegisterReceivedInstanceCallback, params, function)


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
