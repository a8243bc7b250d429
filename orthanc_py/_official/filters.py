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

from .. import _hooks
from .._calls import Handle
from .._hooks import Refused
from .registration import Action, _check_callable, _is_int, _name

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
    :raises RuntimeError: when this function was already called (``@http_filter`` adds more filters;
        they all run, in the order declared).
    """
    function = "RegisterIncomingHttpRequestFilter"
    _check_callable(function, "callback", callback)

    def check(method: int, uri: str, ip: str, headers: dict[str, str], get: dict[str, str] | None) -> int:
        request: dict[str, Any] = {"method": method, "ip": ip, "headers": headers}
        if get is not None:  # GET only, as Orthanc and the official plugin give them
            request["get"] = get
        allowed = callback(uri, **request)
        if allowed is True:
            return 1
        if allowed is False:
            return 0
        raise Refused(f"returned {type(allowed).__name__}, not True or False")

    _hooks.http_filters.add(check, f"orthanc.{function}()",
                            f"the incoming-HTTP-request filter {_name(callback)}", once=True)


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
    Orthanc's log, with the callback's name and what it returned, and the
    instance is refused: nothing is stored, the REST API answers an error and
    a C-STORE fails, so that the sender keeps the instance and can send it
    again. A hook that guards data fails closed: a de-identification
    callback that breaks must never let the original through.

    Orthanc runs this callback synchronously with its core: do not call the
    REST API from it.

    :param callback: the callback.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when this function was already called (``@on_received_instance`` adds
        more handlers; they all run, in the order declared, each seeing what the one before kept).
    """
    function = "RegisterReceivedInstanceCallback"
    _check_callable(function, "callback", callback)
    actions = {int(action) for action in Action}

    def transform(received: bytes, origin: int) -> tuple[int, bytes | None]:
        result = callback(received, origin)
        if not isinstance(result, (tuple, list)):
            raise Refused(f"returned {type(result).__name__}, not a tuple (action, modifiedDicom)")
        if len(result) != 2:
            raise Refused(f"returned {len(result)} value(s), not a tuple (action, modifiedDicom)")
        action, buffer = result
        if isinstance(action, bool) or not isinstance(action, int) or int(action) not in actions:
            raise Refused(f"returned the action {action!r}, not an orthanc.ReceivedInstanceAction value")
        if action != Action.Modify:
            return int(action), None
        if not isinstance(buffer, (bytes, bytearray, memoryview)):
            raise Refused(f"returned MODIFY with {type(buffer).__name__}, not the modified DICOM file as bytes")
        if not buffer:
            raise Refused("returned MODIFY with an empty file, not the modified DICOM file")
        return int(Action.Modify), bytes(buffer)

    _hooks.received_instances.add(transform, f"orthanc.{function}()",
                                  f"the received-instance callback {_name(callback)}", once=True)


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
    :raises RuntimeError: when this function was already called.
    """
    function = "RegisterIncomingCStoreInstanceFilter"
    _check_callable(function, "callback", callback)

    def check(instance: Handle) -> int:
        status = callback(instance)
        # bool is an int here, as in the official plugin: True refuses with status 1.
        if not isinstance(status, int) or not 0 <= status <= 0xFFFF:
            raise Refused(f"returned {status!r}, not 0 (store) or a DIMSE status from 1 to 0xFFFF (refuse)")
        return int(status)

    _hooks.cstore_filters.add(check, f"orthanc.{function}()",
                              f"the incoming-C-STORE filter {_name(callback)}", once=True)


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
    :raises RuntimeError: when this function was already called.
    """
    function = "RegisterIncomingDicomInstanceFilter"
    _check_callable(function, "callback", callback)

    def check(instance: Handle) -> int:
        accepted = callback(instance)
        if accepted is True or accepted is False or (_is_int(accepted) and accepted in (0, 1)):
            return int(accepted)  # Orthanc: 1 stores, 0 discards
        raise Refused(f"returned {accepted!r}, not True (store) or False (discard)")

    _hooks.dicom_filters.add(check, f"orthanc.{function}()",
                             f"the incoming-DICOM-instance filter {_name(callback)}", once=True)
