# SPDX-License-Identifier: GPL-3.0-or-later
"""The ctypes boundary: the only module that calls into Orthanc.

Every SDK call goes through :func:`invoke`, which calls
``context->InvokeService`` and turns a failing error code into
:class:`OrthancError`. Strings and buffers that Orthanc hands out are copied
into Python objects and freed here, exactly once. Callback trampolines are
built with :func:`trampoline`, so that no Python exception ever reaches C.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import traceback
from typing import Any, Callable, Optional, TypeVar

from . import _sdk

ErrorCode = _sdk.OrthancPluginErrorCode
Service = _sdk._OrthancPluginService


class OrthancError(Exception):
    """An Orthanc SDK call failed.

    :ivar code: the Orthanc error code (an :class:`int`).
    :ivar description: Orthanc's text for that code.
    """

    def __init__(self, code: int, description: str) -> None:
        super().__init__(code, description)
        self.code = int(code)
        self.description = description

    def __str__(self) -> str:
        return f"{self.description} (Orthanc error {self.code})"


class NotInOrthancError(RuntimeError):
    """An SDK function was called while no Orthanc server is attached.

    That happens in code that runs outside Orthanc (a ``multiprocessing``
    worker, a plain ``python`` session) and after Orthanc has stopped.
    """


class _Context:
    """The plugin context Orthanc gave the loader."""

    def __init__(self, address: int) -> None:
        self.pointer = ctypes.cast(address, ctypes.POINTER(_sdk.OrthancPluginContext))
        contents = self.pointer.contents
        self.invoke_service = contents.InvokeService
        self.free = contents.Free
        version = contents.orthancVersion
        self.orthanc_version = version.decode("utf-8", "replace") if version else "unknown"


_context: Optional[_Context] = None
_context_lock = threading.Lock()


def attach(address: int) -> None:
    """Makes the context at ``address`` the one every SDK call uses."""
    global _context
    with _context_lock:
        _context = _Context(address)


def detach() -> None:
    """Forgets the context: from now on SDK calls raise :class:`NotInOrthancError`.

    Called when Orthanc stops, so that a thread the script left behind fails
    cleanly instead of calling into a server that is shutting down.
    """
    global _context
    with _context_lock:
        _context = None


def is_attached() -> bool:
    """Whether this interpreter runs inside Orthanc right now."""
    return _context is not None


def _require(what: str) -> _Context:
    context = _context
    if context is None:
        raise NotInOrthancError(
            f"{what} needs the Orthanc server, but this code runs outside Orthanc "
            "(in a worker process, a plain Python session, or after Orthanc stopped)"
        )
    return context


def orthanc_version() -> str:
    """The version string of the running Orthanc (``"mainline"`` for a development build)."""
    return _require("orthanc_version()").orthanc_version


def invoke(service: Service, params: Any, what: str = "") -> None:
    """Calls one SDK service; raises :class:`OrthancError` when Orthanc refuses it.

    :param service: the ``_OrthancPluginService`` number.
    :param params: a ctypes structure (passed by reference), ``bytes``, or ``None``.
    :param what: the name to use in error messages (defaults to the service name).
    """
    context = _require(what or service.name)
    if isinstance(params, ctypes.Structure):
        params = ctypes.byref(params)
    code = context.invoke_service(context.pointer, int(service), params)
    if code != ErrorCode.Success:
        raise OrthancError(code, error_description(code))


def error_description(code: int) -> str:
    """Orthanc's own text for an error code."""
    context = _context
    if context is None:
        return f"Orthanc error {code}"
    target = ctypes.c_char_p()
    params = _sdk._OrthancPluginGetErrorDescription()
    _set_out_pointer(params, "target", target)
    params.error = code
    status = context.invoke_service(context.pointer, int(Service.GetErrorDescription), ctypes.byref(params))
    if status != ErrorCode.Success or not target.value:
        return "Unknown error code"
    # The description is a static string of Orthanc's: not to be freed.
    return target.value.decode("utf-8", "replace")


def _set_out_pointer(params: ctypes.Structure, field: str, target: Any) -> None:
    """Points ``params.<field>`` (a ``T**`` out-parameter) at ``target``."""
    field_type = dict(params._fields_)[field]
    setattr(params, field, ctypes.cast(ctypes.pointer(target), field_type))


def take_string(pointer: ctypes.c_void_p) -> Optional[str]:
    """Copies a string that Orthanc allocated for us, then frees it."""
    if not pointer.value:
        return None
    try:
        return ctypes.string_at(pointer.value).decode("utf-8", "replace")
    finally:
        context = _context
        if context is not None:
            context.free(pointer.value)


def retrieve_dynamic_string(service: Service, argument: Optional[bytes] = None) -> Optional[str]:
    """Calls a service of the ``_OrthancPluginRetrieveDynamicString`` family."""
    result = ctypes.c_void_p()
    params = _sdk._OrthancPluginRetrieveDynamicString()
    _set_out_pointer(params, "result", result)
    params.argument = argument
    invoke(service, params)
    return take_string(result)


# --- logging ---------------------------------------------------------------

def _log(service: Service, message: str) -> None:
    # Orthanc's log takes a C string: drop NULs rather than cut the message.
    invoke(service, message.replace("\0", "\\0").encode("utf-8", "replace"))


def log_info(message: str) -> None:
    """Writes an information line to Orthanc's log (shown with ``--verbose``)."""
    _log(Service.LogInfo, message)


def log_warning(message: str) -> None:
    """Writes a warning line to Orthanc's log (shown by default)."""
    _log(Service.LogWarning, message)


def log_error(message: str) -> None:
    """Writes an error line to Orthanc's log."""
    _log(Service.LogError, message)


# --- configuration -----------------------------------------------------------

def get_configuration() -> str:
    """Orthanc's whole configuration, as the JSON text Orthanc serialises."""
    return retrieve_dynamic_string(Service.GetConfiguration) or "{}"


def get_configuration_path() -> Optional[str]:
    """The configuration file (or folder of files) Orthanc was started with."""
    return retrieve_dynamic_string(Service.GetConfigurationPath)


# --- callbacks ---------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])

# Orthanc keeps the addresses of registered callbacks for the life of the
# process: the CFUNCTYPE objects and params structs must never be collected.
_keep_alive: list[Any] = []


def keep_alive(obj: Any) -> Any:
    """Holds ``obj`` for the life of the process and returns it."""
    _keep_alive.append(obj)
    return obj


def report_exception(where: str) -> None:
    """Writes the exception being handled, with its traceback, to Orthanc's log."""
    text = "".join(traceback.format_exception(*sys.exc_info())).rstrip()
    message = f"orthanc_py: exception in {where}:\n{text}"
    try:
        log_error(message)
    except Exception:
        sys.__stderr__.write(message + "\n")


def trampoline(c_type: Any, where: str, on_error: int = ErrorCode.Plugin) -> Callable[[F], Any]:
    """Wraps a Python function as a C callback of type ``c_type``.

    The wrapper catches every exception, logs it with its traceback and
    returns ``on_error`` to Orthanc: an exception never escapes into C. The
    returned CFUNCTYPE object is kept alive for the life of the process.
    """

    def wrap(function: F) -> Any:
        def guarded(*args: Any) -> Any:
            try:
                return function(*args)
            except BaseException:
                report_exception(where)
                return on_error

        return keep_alive(c_type(guarded))

    return wrap


def register_on_change(callback: Callable[[int, int, Optional[bytes]], int]) -> None:
    """Registers the process-wide on-change callback (once, during start-up)."""
    c_callback = trampoline(_sdk.OrthancPluginOnChangeCallback, "the on-change callback")(callback)
    params = keep_alive(_sdk._OrthancPluginOnChangeCallback())
    params.callback = c_callback
    invoke(Service.RegisterOnChangeCallback, params)
