# SPDX-License-Identifier: GPL-3.0-or-later
"""What the families of the ``orthanc`` module share.

Handing the script's objects over to Orthanc (:func:`_hand_over`), checking
arguments, and the descriptor that makes a function a method of an Orthanc
object's class. Registering callbacks with Orthanc is :mod:`orthanc_py._hooks`'s
job: each hook there has one dispatcher, which both APIs add handlers to; like
the official plugin, an ``orthanc.RegisterXxx()`` function takes one handler.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

from .. import _calls, _capi, _sdk, _sdk_calls
from .._calls import Handle


class _SdkMethod:
    """A method built from an SDK function.

    A descriptor rather than a plain function, so that ``inspect`` reports it
    as a method descriptor, as it does for the official plugin's methods.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__
        self.__signature__ = inspect.signature(function)

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self.function, instance)


_call = _sdk_calls.call


ErrorCode = _capi.ErrorCode
Service = _capi.Service
Action = _sdk.OrthancPluginReceivedInstanceAction

SUCCESS = int(ErrorCode.Success)
PLUGIN_ERROR = int(ErrorCode.Plugin)


# --- shared helpers -------------------------------------------------------------

def _decode(value: bytes | None) -> str:
    # Orthanc passes NULL for an absent value; the official plugin gives "".
    return value.decode("utf-8", "replace") if value else ""


_name = _capi.name_of


def _check_callable(function: str, argument: str, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{function}() argument '{argument}' must be callable, not {type(value).__name__}")


def _require_sdk(function: str, service_function: str) -> None:
    """Refuses a registration that the running Orthanc cannot take, before anything is registered.

    Orthanc older than the SDK function ``OrthancPlugin<service_function>``
    does not know its service: the script learns it here, from the function
    it called (``function``), rather than from a handler that never runs.
    Outside Orthanc nothing is checked (:data:`_capi.release` is then the newest).

    :raises SdkVersionError: ``"RegisterFindCallback2() needs Orthanc 1.12.10 or newer; this Orthanc is 1.10.1"``.
    """
    since = _sdk.FUNCTIONS[f"OrthancPlugin{service_function}"].since
    if since is not None and _capi.release < since:
        raise _calls.too_old(f"OrthancPlugin{function}", since)


# --- handing objects over to Orthanc ------------------------------------------------------

def _hand_over(value: Any, c_type_name: str, where: str,
               prepare: Callable[[Any], Any] | None = None) -> int | None:
    """The address of an object the script gives to Orthanc, which frees it from now on.

    The Python handle forgets it (closed, not owned): Python must never free
    what Orthanc now owns. Returns ``None`` (and logs why) when ``value`` is
    not such an object, owned by the script.

    :param prepare: once ``value`` is known to be the script's, turns it into
        the object Orthanc gets (the family of the object knows what that takes).
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
    if prepare is not None:
        value = prepare(value)
    address: int = value.detach()  # Orthanc frees it from now on
    return address


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
