# SPDX-License-Identifier: GPL-3.0-or-later
"""What the families of the ``orthanc`` module share.

Registering a callback with Orthanc (:func:`_claim`, :func:`_register`),
lending Orthanc's objects to the script (:func:`_lend`) and handing the
script's objects over to Orthanc (:func:`_hand_over`), filling Orthanc's
memory buffers, and the descriptor that makes a function a method of an
Orthanc object's class. Orthanc takes one handler of each kind; like the
official plugin, a second registration raises :class:`RuntimeError`.
"""

from __future__ import annotations

import ctypes
import inspect
import threading
import types
from typing import Any, Callable

from .. import _calls, _capi, _runtime, _sdk, _sdk_calls
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


def _call(c_name: str, *args: Any) -> Any:
    return _sdk_calls.sdk_function(c_name)(*args)


def _handler_name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


ErrorCode = _capi.ErrorCode
Service = _capi.Service
Action = _sdk.OrthancPluginReceivedInstanceAction

SUCCESS = int(ErrorCode.Success)
PLUGIN_ERROR = int(ErrorCode.Plugin)


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
