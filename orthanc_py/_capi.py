# SPDX-License-Identifier: GPL-3.0-or-later
"""The boundary with Orthanc: every SDK call and every callback passes here.

Every SDK call goes through :func:`call` (the generated functions of
``_sdk_calls``) or :func:`invoke` (hand-written calls with a ctypes params
structure): it calls ``context->InvokeService`` and turns a failing error
code into :class:`OrthancError`. Inside Orthanc, the call itself is made by
the loader's builtin ``invoke`` (a fraction of the cost of a ctypes foreign
call), which also counts the calls in flight for :func:`close`. Strings and
buffers that Orthanc hands out are copied into Python objects and freed
here, exactly once. Callback trampolines are built with :func:`trampoline`,
so that no Python exception ever reaches C.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from threading import get_ident as _get_ident
from typing import Any, Callable, TypeVar

from . import _sdk

ErrorCode = _sdk.OrthancPluginErrorCode
Service = _sdk._OrthancPluginService


class OrthancError(Exception):
    """An Orthanc SDK call failed (``orthanc.OrthancException``).

    ``args`` is ``(code, description)`` and the text of the exception is that
    pair, ``(17, 'Unknown resource')``, as with the official plugin: scripts
    that log or compare ``str(error)`` see the same text under both.

    :ivar code: the Orthanc error code (an :class:`int`).
    :ivar description: Orthanc's text for that code.
    """

    def __init__(self, code: int, description: str) -> None:
        super().__init__(int(code), description)
        self.code = int(code)
        self.description = description


class SdkVersionError(OrthancError):
    """The running Orthanc is older than the SDK function needs."""


class NotInOrthancError(RuntimeError):
    """An SDK function was called while no Orthanc server is attached.

    That happens in code that runs outside Orthanc (a ``multiprocessing``
    worker, a plain ``python`` session) and after Orthanc has stopped.
    """


_InvokeRaw = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p)


class _Context:
    """The plugin context Orthanc gave the loader."""

    def __init__(self, address: int) -> None:
        self.pointer = ctypes.cast(address, ctypes.POINTER(_sdk.OrthancPluginContext))
        contents = self.pointer.contents
        self.invoke_service = contents.InvokeService
        self.free = contents.Free
        version = contents.orthancVersion
        self.address = address
        # The same function, called with plain addresses: no conversion of a
        # ctypes pointer on each call.
        function = ctypes.cast(contents.InvokeService, ctypes.c_void_p).value or 0
        # Called with the params as an address, or bytes (c_void_p takes both).
        self.invoke = _InvokeRaw(function)
        self.orthanc_version = version.decode("utf-8", "replace") if version else "unknown"
        self.release = _release(self.orthanc_version)


# Any SDK function is offered by a development build, or by one whose version cannot be read.
_NEWEST = (1 << 30, 0, 0)


def _release(version: str) -> tuple[int, int, int]:
    """``"1.12.7"`` -> ``(1, 12, 7)``; :data:`_NEWEST` for ``"mainline"`` and anything unreadable."""
    try:
        major, minor, revision = (int(part) for part in version.split(".")[:3])
    except ValueError:
        return _NEWEST
    return major, minor, revision


_context: _Context | None = None
release: tuple[int, int, int] = _NEWEST
"""The running Orthanc's version as numbers (see :func:`_release`); outside Orthanc, any SDK call
passes this check and fails on the missing server instead."""
_context_lock = threading.Lock()
# Set once Orthanc has announced that it stops (ORTHANC_STOPPED delivered):
# only Orthanc's own threads may still call in, since Orthanc goes on to tear
# down its HTTP server, DICOM server and database under any other caller.
_closing = False
_closer = 0
# Threads inside an SDK call right now (thread id -> nesting depth): close()
# waits for them, so that no call is in flight when Orthanc tears itself down.
# Calls through the loader's invoke() are counted by the loader instead.
_in_flight: dict[int, int] = {}


def attach(address: int) -> None:
    """Makes the context at ``address`` the one every SDK call uses."""
    global _context, _closing, release
    with _context_lock:
        _context = _Context(address)
        _closing = False
        release = _context.release
        rest_routes.clear()  # a new run of the script registers its routes again


def close(timeout: float) -> bool:
    """Refuses SDK calls from every thread but Orthanc's own and this one, then waits for calls in flight.

    Called when Orthanc has announced its stop, while its REST API still
    works: a script thread that calls in afterwards gets
    :class:`NotInOrthancError` instead of reaching a server that is tearing
    itself down. Logging stays open until :func:`detach`.

    :returns: ``False`` when calls were still in flight after ``timeout`` seconds.
    """
    global _closing, _closer
    me = threading.get_ident()
    with _context_lock:
        _closer = me
        _closing = True
    deadline = time.monotonic() + timeout
    while any(ident != me for ident in list(_in_flight)) or (_in_flight_elsewhere and _in_flight_elsewhere()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def detach() -> None:
    """Forgets the context: from now on SDK calls raise :class:`NotInOrthancError`.

    Called when Orthanc has stopped, so that a thread the script left behind
    fails cleanly instead of calling into a server that is gone.
    """
    global _context, release
    with _context_lock:
        _context = None
        release = _NEWEST


def _detach_in_fork_child() -> None:
    """Detaches a process forked from Orthanc (``multiprocessing``'s ``fork`` start method, ``os.fork``).

    The child has a copy of Orthanc's memory but none of its threads: an SDK
    call there would work on a frozen copy, or wait forever on a lock whose
    owner did not come along. It must raise :class:`NotInOrthancError`, as in
    any process outside Orthanc.
    """
    global _context_lock
    # A thread of the parent may have held the lock at the fork; it does not
    # exist in the child and would never release it.
    _context_lock = threading.Lock()
    detach()


os.register_at_fork(after_in_child=_detach_in_fork_child)


def is_attached() -> bool:
    """Whether this interpreter runs inside Orthanc right now."""
    return _context is not None


def _may_call_while_closing() -> bool:
    return bool(getattr(thread_state, "orthanc", False)) or threading.get_ident() == _closer


def _require(what: str) -> _Context:
    context = _context
    if context is None or (_closing and not _may_call_while_closing()):
        if context is not None:
            raise NotInOrthancError(
                f"{what}: Orthanc is stopping, and only its own callbacks may still call it; end the "
                "script's threads when Orthanc stops (@on_shutdown or ORTHANC_STOPPED)"
            )
        raise NotInOrthancError(
            f"{what} needs the Orthanc server, but this code runs outside Orthanc "
            "(in a worker process, a plain Python session, or after Orthanc stopped)"
        )
    return context


def orthanc_version() -> str:
    """The version string of the running Orthanc (``"mainline"`` for a development build)."""
    return _require("orthanc_version()").orthanc_version


MAX_NESTING = 16
"""How many callbacks may run nested in one another on one thread when a call of the REST API is made.

A callback that calls Orthanc's REST API runs Orthanc's code on its own
thread, and that code may call callbacks again (a stored-instance handler
that uploads an instance, a route calling a route): a script whose calls
trigger themselves would go on until the stack ends. At this depth the REST
call is refused with :class:`NestingError` instead, before Orthanc does
anything: an upload refused there is not stored. Sixteen levels use well
under half of the loader's Python stack, measured with uploads nested
through stored-instance callbacks."""

# The services that may run callbacks of the script again, on the calling thread.
_REENTRANT = frozenset(
    int(getattr(Service, name)) for name in (
        "RestApiGet", "RestApiPost", "RestApiPut", "RestApiDelete", "RestApiGet2", "CallRestApi",
        "RestApiGetAfterPlugins", "RestApiPostAfterPlugins", "RestApiPutAfterPlugins", "RestApiDeleteAfterPlugins",
    ) if hasattr(Service, name)
)


class NestingError(OrthancError):
    """A call of the REST API was refused: too many callbacks already run nested on this thread.

    An :class:`OrthancError` (code ``Plugin``), so that scripts catching
    ``orthanc.OrthancException`` catch it too.
    """

    def __init__(self, what: str, depth: int) -> None:
        super().__init__(int(ErrorCode.Plugin), (
            f"{what} refused: {depth} callbacks already run nested in one another on this thread "
            f"(the limit is {MAX_NESTING}); a callback whose REST calls trigger it again (a "
            "stored-instance handler uploading instances, a route calling itself) must stop before that"
        ))


def invoke(service: Service, params: Any, what: str = "") -> None:
    """Calls one SDK service with a ctypes params structure; raises :class:`OrthancError` when Orthanc refuses it.

    For hand-written calls; the generated ones (``_sdk_calls``) use :func:`call`.

    :param service: the ``_OrthancPluginService`` number.
    :param params: a ctypes structure (passed by reference), ``bytes``, or ``None``.
    :param what: the name to use in error messages (defaults to the service name).
    :raises NestingError: for a call of the REST API from :data:`MAX_NESTING` nested callbacks.
    """
    name = what or Service(service).name
    uri = getattr(params, "uri", None)
    # The structure stays alive in the caller's frame; bytes are passed as they are.
    address = ctypes.addressof(params) if isinstance(params, ctypes.Structure) else params
    if service in _REENTRANT:
        call_reentrant(int(service), address, name, uri if isinstance(uri, bytes) else None)
    else:
        call(int(service), address, name)


def call(service: int, params: int | bytes | None, what: str) -> None:
    """Calls one SDK service: ``params`` is the address of its params struct (or the ``bytes`` it takes).

    The path of every SDK call: kept short on purpose. It counts the call
    in flight (see :func:`close`) and raises :class:`OrthancError` (or
    :class:`SdkVersionError` for a service this Orthanc lacks) when Orthanc
    refuses it.
    """
    context = _context
    if context is None or _closing:
        context = _require(what)
    if _invoke is not None:
        code = _invoke(service, params)  # the loader counts it in flight
    else:
        ident = _get_ident()
        flight = _in_flight
        flight[ident] = flight.get(ident, 0) + 1
        try:
            code = context.invoke(context.address, service, params)
        finally:
            depth = flight.pop(ident) - 1
            if depth:
                flight[ident] = depth
    if code:
        raise call_error(code, what)


def call_reentrant(service: int, params: int | bytes | None, what: str, uri: bytes | None) -> None:
    """:func:`call` for the services that may run the script's callbacks again on this thread (the REST API).

    :raises NestingError: from :data:`MAX_NESTING` nested callbacks on, before Orthanc does anything.
    """
    depth = python_depth()
    if depth >= MAX_NESTING:
        raise NestingError(f"{what} {uri.decode('utf-8', 'replace')}" if uri is not None else what, depth)
    call(service, params, what)


def call_error(code: int, what: str) -> OrthancError:
    """The exception for a failed call of ``what``."""
    if code == ErrorCode.UnknownPluginService:
        call_text = what if what.endswith(")") else f"{what}()"  # hand-written calls name "orthanc.X()"
        return SdkVersionError(code, f"{call_text} is not offered by this Orthanc ({orthanc_version()})")
    return OrthancError(code, error_description(code))


def error_description(code: int) -> str:
    """Orthanc's own text for an error code."""
    context = _context
    if context is None:
        return f"Orthanc error {code}"
    target = ctypes.c_char_p()
    params = _sdk._OrthancPluginGetErrorDescription()
    set_out_pointer(params, "target", target)
    params.error = code
    status = context.invoke_service(context.pointer, int(Service.GetErrorDescription), ctypes.byref(params))
    if status != ErrorCode.Success or not target.value:
        return "Unknown error code"
    # The description is a static string of Orthanc's: not to be freed.
    return target.value.decode("utf-8", "replace")


def set_out_pointer(params: ctypes.Structure, field: str, target: Any) -> None:
    """Points ``params.<field>`` (a ``T**`` out-parameter) at ``target``."""
    field_type: Any = next(entry[1] for entry in params._fields_ if entry[0] == field)
    setattr(params, field, ctypes.cast(ctypes.pointer(target), field_type))


def _take_bytes(address: int | None, size: int) -> bytes:
    """Copies ``size`` bytes Orthanc allocated for the plugin (a memory buffer), then frees them."""
    if not address:
        return b""
    try:
        return copy_memory(address, size)
    finally:
        free(address)


def _take_text(address: int | None) -> str | None:
    """Copies a C string Orthanc allocated for the plugin, then frees it; ``None`` for NULL."""
    if not address:
        return None
    try:
        return ctypes.string_at(address).decode("utf-8", "replace")
    finally:
        free(address)


# The loader's builtins replace both (use_loader()): one call each instead of two ctypes calls.
take_bytes: Callable[[int | None, int], bytes] = _take_bytes
take_text: Callable[[int | None], str | None] = _take_text


def free(address: int) -> None:
    """Frees memory that Orthanc allocated for the plugin (``context->Free``)."""
    context = _context
    if context is not None and address:
        if _free is not None:
            _free(address)
        else:
            context.free(address)


_STRING_AT_LIMIT = 1 << 31


def copy_memory(address: int | None, size: int) -> bytes:
    """Copies ``size`` bytes that Orthanc owns (and keeps) into a ``bytes``; ``b""`` for NULL."""
    if not address or size <= 0:
        return b""
    if size < _STRING_AT_LIMIT:
        return ctypes.string_at(address, size)
    # ctypes.string_at takes its size as a C int: from 2 GiB on, it would be negative.
    # (An array type per size would do the same, but ctypes caches every array type made, forever.)
    return (ctypes.c_char * size).from_address(address).raw


def fill_memory_buffer(target: Any, data: bytes, wide: bool = True) -> None:
    """Allocates an Orthanc memory buffer at ``target`` through Orthanc and copies ``data`` into it.

    ``target`` points to an ``OrthancPluginMemoryBuffer64`` (``wide``) or an
    ``OrthancPluginMemoryBuffer`` (32-bit size) that Orthanc passed to a
    callback: Orthanc frees it itself, so it must come from Orthanc's allocator.

    :raises ValueError: when ``data`` does not fit a 32-bit size (not ``wide``):
        the buffer would be allocated short and the copy would run past its end.
    """
    if wide:
        params: Any = _sdk._OrthancPluginCreateMemoryBuffer64()
        params.target = ctypes.cast(target, ctypes.POINTER(_sdk.OrthancPluginMemoryBuffer64))
        service = Service.CreateMemoryBuffer64
    else:
        if len(data) > 0xFFFFFFFF:
            raise ValueError(f"{len(data)} bytes do not fit an Orthanc memory buffer of 32-bit size "
                             f"(at most {0xFFFFFFFF} bytes)")
        params = _sdk._OrthancPluginCreateMemoryBuffer()
        params.target = ctypes.cast(target, ctypes.POINTER(_sdk.OrthancPluginMemoryBuffer))
        service = Service.CreateMemoryBuffer
    params.size = len(data)
    invoke(service, params, service.name)
    if data:
        ctypes.memmove(params.target.contents.data, data, len(data))


def copy_rows(target: int, target_pitch: int, source: bytes, source_pitch: int, rows: int, row_size: int) -> None:
    """Copies ``rows`` rows of ``row_size`` bytes of pixels into memory Orthanc owns (an image buffer).

    :raises ValueError: when a row does not fit (the caller checked the sizes; this is the last guard).
    """
    if row_size < 0 or row_size > min(target_pitch, source_pitch) or source_pitch * (rows - 1) + row_size > len(source):
        raise ValueError(f"cannot copy {rows} rows of {row_size} bytes from a buffer of {len(source)} bytes "
                         f"(pitch {source_pitch}) to an image of pitch {target_pitch}")
    for row in range(rows):
        start = row * source_pitch
        ctypes.memmove(target + row * target_pitch, source[start:start + row_size], row_size)


def retrieve_dynamic_string(service: Service, argument: bytes | None = None) -> str | None:
    """Calls a service of the ``_OrthancPluginRetrieveDynamicString`` family."""
    result = ctypes.c_void_p()
    params = _sdk._OrthancPluginRetrieveDynamicString()
    set_out_pointer(params, "result", result)
    params.argument = argument
    invoke(service, params)
    return take_text(result.value)


# --- logging ---------------------------------------------------------------

def _log(service: Service, message: str) -> None:
    # Orthanc's log works until the process ends: it stays open to every
    # thread while Orthanc stops, up to detach().
    context = _context
    if context is None:
        _require(service.name)
        return
    # Orthanc's log takes a C string: drop NULs rather than cut the message.
    text = message.replace("\0", "\\0").encode("utf-8", "replace")
    if _invoke is not None:
        _invoke(int(service), text)
    else:
        context.invoke_service(context.pointer, int(service), text)


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


def get_configuration_path() -> str | None:
    """The configuration file (or folder of files) Orthanc was started with."""
    return retrieve_dynamic_string(Service.GetConfigurationPath)


# --- memory Orthanc lends for one callback ------------------------------------

class ExpiredError(RuntimeError):
    """An object that Orthanc lent to a callback was used after the callback returned.

    Orthanc frees what it lends (a request, a ``RestOutput``, a DICOM
    instance...) once the callback returns; the wrapper then refuses any use
    instead of reading freed memory. The message says how to keep the data.
    """


class Borrowed:
    """Base of the wrappers of memory that Orthanc lends for the duration of one callback.

    The code that calls the script's handler calls :func:`expire` on each such
    wrapper when the handler returns, whatever happened; from then on the
    wrapper raises :class:`ExpiredError` (modelled on llvmlite's
    ``ObjectRef.close()``). Expiring costs nothing on the way in: a wrapper
    checks nothing while valid.
    """

    __slots__ = ()

    def _expire(self, message: str | None = None) -> None:
        """Makes every later use raise :class:`ExpiredError` (with ``message`` when given)."""
        raise NotImplementedError


def expire(*borrowed: Borrowed | None) -> None:
    """Ends the loan of each object: call it when the callback that received them returns."""
    for each in borrowed:
        if each is not None:
            each._expire()


class Expired:
    """Stands in for a C structure that Orthanc has taken back: reading any field raises :class:`ExpiredError`."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str) -> Any:
        raise ExpiredError(self.message)


# --- callbacks ---------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])

# Orthanc keeps the addresses of registered callbacks for the life of the
# process: the CFUNCTYPE objects and params structs must never be collected.
_keep_alive: list[Any] = []


_LEASES_MADE = threading.Lock()


def lease_of(holder: Any) -> Any:
    """``holder._lease``, a lock made on first use (two threads may ask at once): for objects Orthanc lends.

    A thread other than the callback's takes it around each use of the
    object; the end of the callback takes it too, so that Orthanc never
    frees the object under a use in progress.
    """
    lease = holder._lease
    if lease is None:
        with _LEASES_MADE:
            lease = holder._lease
            if lease is None:
                lease = holder._lease = threading.RLock()
    return lease


def keep_alive(obj: Any) -> Any:
    """Holds ``obj`` for the life of the process and returns it."""
    _keep_alive.append(obj)
    return obj


def _original_stderr() -> Any:
    """The process's standard error, or a sink when Python has none (an embedded interpreter may not)."""
    return sys.__stderr__ if sys.__stderr__ is not None else open(os.devnull, "w")


# How much of a long traceback report_exception() writes: its first and last lines.
_REPORT_HEAD = 150
_REPORT_TAIL = 50


def name_of(function: Any) -> str:
    """A callable's name for messages and the log: its qualified name, else its ``repr``."""
    return getattr(function, "__qualname__", None) or repr(function)


def report_exception(where: str) -> None:
    """Writes the exception being handled, with its traceback, to Orthanc's log.

    Never raises: it runs in callbacks that must return an error code to
    Orthanc whatever happens. When Orthanc's log fails, the report goes to
    the process's standard error; when that fails too, it is lost.
    """
    try:
        lines = "".join(traceback.format_exception(*sys.exc_info())).rstrip().split("\n")
        if len(lines) > _REPORT_HEAD + _REPORT_TAIL:
            # A RecursionError from json.dumps carries a note per level: one
            # client's nested JSON must not write 30,000 lines to the log.
            left_out = len(lines) - _REPORT_HEAD - _REPORT_TAIL
            lines[_REPORT_HEAD:-_REPORT_TAIL] = [f"[... {left_out} lines left out ...]"]
        text = "\n".join(lines)
        message = f"orthanc_py: exception in {where}:\n{text}"
    except BaseException:  # even formatting may fail (MemoryError...)
        message = f"orthanc_py: exception in {where} (its traceback could not be formatted)"
    try:
        log_error(message)
        return
    except BaseException:  # fall back on standard error
        pass
    with contextlib.suppress(BaseException):  # nowhere left to report; the caller still returns its code
        _original_stderr().write(message + "\n")


thread_state = threading.local()
"""What :func:`enter_thread` learnt of the calling thread (``entered``, and whether it is one of Orthanc's)."""
_pin: Callable[[], int] | None = None
_register_rest: Callable[[bytes, Any, bytes], int] | None = None
_register_rest_overflow: Callable[[bytes, Any], int] | None = None


def _call_here(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def _no_depth() -> int:
    return 0


# The loader's built-in module (see "Python on a stack of its own" in
# loader.c), or stand-ins outside Orthanc: ``call(function, *args)`` runs
# the function on the thread's Python stack, ``depth()`` counts this
# thread's entries into Python that are running.
call_on_python_stack: Callable[..., Any] = _call_here
python_depth: Callable[[], int] = _no_depth
# Its InvokeService and Free for Python: builtins, cheaper than ctypes foreign calls (see call()).
_invoke: Callable[[int, Any], int] | None = None
_free: Callable[[int], None] | None = None
_in_flight_elsewhere: Callable[[], int] | None = None


def use_loader(path: str) -> None:
    """Reaches the loader's own functions (the thread-state pinning, the REST routes' entry, its Python stacks)."""
    global _pin, _register_rest, _register_rest_overflow, call_on_python_stack, python_depth
    global _invoke, _free, _in_flight_elsewhere
    global take_bytes, take_text, _register_on_change_in_loader, _want_changes
    loader = ctypes.PyDLL(path)  # PyDLL: called with the GIL held, as the functions expect
    pin = loader.orthanc_py_pin_thread
    pin.restype, pin.argtypes = ctypes.c_int, []
    _pin = pin
    register = loader.orthanc_py_register_rest
    register.restype, register.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.py_object, ctypes.c_char_p]
    _register_rest = register
    overflow = loader.orthanc_py_register_rest_overflow
    overflow.restype, overflow.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.py_object]
    _register_rest_overflow = overflow
    import _orthanc_py_loader  # type: ignore[import-not-found]  # built into the loader

    call_on_python_stack = _orthanc_py_loader.call
    python_depth = _orthanc_py_loader.depth
    _invoke = _orthanc_py_loader.invoke
    _free = _orthanc_py_loader.free
    _in_flight_elsewhere = _orthanc_py_loader.in_flight
    take_bytes = _orthanc_py_loader.take_bytes
    take_text = _orthanc_py_loader.take_text
    register_changes = loader.orthanc_py_register_on_change
    register_changes.restype, register_changes.argtypes = ctypes.c_int, [ctypes.py_object]
    _register_on_change_in_loader = register_changes
    _want_changes = _orthanc_py_loader.want_changes


def enter_thread() -> None:
    """The first call of this thread into a callback: learn whose thread it is, and pin it.

    ctypes creates a thread state when a thread Python has never seen calls
    in, and destroys it on return: on Orthanc's HTTP threads that would be
    paid on every request. The loader keeps the state for the life of the
    thread and releases it when the thread ends.
    """
    known = threading._active.get(threading.get_ident())  # type: ignore[attr-defined]
    foreign = known is None or isinstance(known, threading._DummyThread)
    if foreign and _pin is not None:
        _pin()
    # Orthanc's threads may call it while it stops (they answer the requests
    # and events it still waits for); threads of the script may not.
    thread_state.orthanc = foreign or known is threading.main_thread()
    thread_state.entered = True


def _guard(function: Callable[..., Any], where: str, on_error: Any, switch_stack: bool) -> Callable[..., Any]:
    """``function`` as Orthanc may call it: never raising (errors are logged, ``on_error`` returned).

    :param switch_stack: run ``function`` on the thread's Python stack (see
        ``loader.c``); not needed when the loader's C entry has switched already.
    """

    def guarded(*args: Any) -> Any:
        try:
            if not getattr(thread_state, "entered", False):
                enter_thread()
            if switch_stack:
                # On Orthanc's small-stacked threads, the callback runs on a
                # stack of the loader's, deep enough for Python's recursion limit.
                return call_on_python_stack(function, *args)
            return function(*args)
        except BaseException:
            with contextlib.suppress(BaseException):  # the error code must reach Orthanc regardless
                report_exception(where)
            return on_error

    return guarded


def trampoline(c_type: Any, where: str, on_error: int = ErrorCode.Plugin) -> Callable[[F], Any]:
    """Wraps a Python function as a C callback of type ``c_type``.

    The wrapper catches every exception, logs it with its traceback and
    returns ``on_error`` to Orthanc: an exception never escapes into C. The
    returned CFUNCTYPE object is kept alive for the life of the process.
    """

    def wrap(function: F) -> Any:
        return keep_alive(c_type(_guard(function, where, on_error, switch_stack=True)))

    return wrap


_register_on_change_in_loader: Callable[[Any], int] | None = None
_want_changes: Callable[[int], None] | None = None


def register_rest(regex: bytes, entry: Callable[[int, bytes | None, int], Any], where: str,
                  overflow_entry: Callable[[int, bytes | None, int], Any]) -> bool:
    """Registers a REST route's entry with the loader (``rest_call()`` in ``loader.c``).

    ``entry(output, url, request)`` returns Orthanc's error code, or ``(code,
    body, mime type)``: the answer, sent by the loader without the GIL. The
    loader has a C entry for each of the first 1000 routes; the routes past
    them share one, which calls ``overflow_entry`` (the same for all):
    returns ``True`` when this route is one of those.

    :raises OrthancError: outside Orthanc, or when the loader cannot register it.
    """
    _require("RegisterRestCallback")
    if _register_rest is None or _register_rest_overflow is None:
        raise OrthancError(ErrorCode.Plugin, "REST routes are served through the orthanc_py loader, not loaded here")
    overflow = _register_rest(regex, entry, where.encode("utf-8", "replace").replace(b"\0", b"?")) != 0
    if overflow and _register_rest_overflow(regex, overflow_entry) != 0:
        raise OrthancError(ErrorCode.Plugin, f"the loader could not register {where}")
    rest_routes.append((regex.decode("utf-8", "replace"), where))
    return overflow


rest_routes: list[tuple[str, str]] = []
"""The REST routes registered since :func:`attach`, in order: ``(path regular expression, where)``."""


def register_on_change(callback: Callable[[int, int, bytes | None], int]) -> None:
    """Registers the process-wide on-change callback (once per run, during start-up).

    Inside Orthanc the loader receives the changes and enters Python only
    for the types :func:`want_changes` asked for.
    """
    if _register_on_change_in_loader is not None:
        entry = _guard(callback, "the on-change callback", int(ErrorCode.Plugin), switch_stack=False)
        if _register_on_change_in_loader(entry) != 0:
            raise OrthancError(ErrorCode.Plugin, "the loader could not register the on-change callback")
        return
    c_callback = trampoline(_sdk.OrthancPluginOnChangeCallback, "the on-change callback")(callback)
    params = keep_alive(_sdk._OrthancPluginOnChangeCallback())
    params.callback = c_callback
    invoke(Service.RegisterOnChangeCallback, params)


def want_changes(change_types: Iterable[int] | None) -> None:
    """Which change types the on-change callback receives: ``None`` for all (the default of the ctypes path)."""
    if _want_changes is None:
        return
    mask = (1 << 64) - 1 if change_types is None else sum(1 << t for t in set(change_types) if 0 <= t < 64)
    _want_changes(mask)


# --- strings Orthanc passes ---------------------------------------------------

def c_strings(array: Any, count: int) -> list[str]:
    """``count`` C strings of an array Orthanc passed (a ctypes pointer, or its address), decoded.

    Never read past ``count``; a NULL item, which Orthanc does not send, reads as ``""``.
    """
    if not count or not array:
        return []
    if isinstance(array, int):
        array = _CStringArray.from_address(array)
    items: list[Any] = array[:count]
    try:
        return [text.decode("utf-8", "replace") for text in items]
    except AttributeError:  # a NULL item (None)
        return [(text or b"").decode("utf-8", "replace") for text in items]


# A view of any array of C strings Orthanc passes (c_strings() never reads past the count it gives).
_CStringArray = ctypes.c_char_p * (1 << 24)



def register_on_stored_instance(handler: Callable[[int, str], int], where: str) -> None:
    """Registers ``handler(instance_address, instance_id)`` for each stored instance."""

    def callback(instance: Any, instance_id: bytes | None) -> int:
        address = ctypes.cast(instance, ctypes.c_void_p).value or 0
        return handler(address, instance_id.decode("utf-8", "replace") if instance_id else "")

    c_callback = trampoline(_sdk.OrthancPluginOnStoredInstanceCallback, where)(callback)
    params = keep_alive(_sdk._OrthancPluginOnStoredInstanceCallback())
    params.callback = c_callback
    invoke(Service.RegisterOnStoredInstanceCallback, params)
