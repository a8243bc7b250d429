# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc's hooks, each with one dispatcher that both APIs add their handlers to.

A hook is one kind of callback Orthanc calls: an HTTP request filter, the
received-instance callback, a C-STORE filter... The plugin registers each
hook with Orthanc once per run, when the first handler comes, and the C
callback it registers runs every handler, whichever API declared it
(``orthanc.RegisterIncomingHttpRequestFilter`` and ``@http_filter`` mix, in
the order the script declared them). The C side of these hooks lives here:
reading what Orthanc passes, combining the handlers' verdicts and answering
Orthanc. The APIs only adapt their handlers' arguments and results.

Two rules, checked by :meth:`Hook.add`:

- an official ``orthanc.RegisterXxx()`` function takes one handler, as in
  the official plugin: a second call raises :class:`RuntimeError`;
- a hook that holds one handler by nature (the storage area, the C-FIND
  handler...) refuses a second, from either API, naming the first.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _calls, _capi, _metrics, _runtime, _sdk

Service = _capi.Service


class Entry(NamedTuple):
    """A handler of a hook, and who declared it (for errors and the log)."""

    handler: Callable[..., Any]
    by: str
    """What declared it: ``orthanc.RegisterIncomingHttpRequestFilter()``, ``@http_filter``..."""
    where: str
    """The handler as the log names it: ``the incoming-HTTP-request filter check_token``."""
    stats: _metrics.HandlerStats | None = None
    """Its figures (deliveries, failures), for the hooks whose dispatcher runs it here (:func:`_run`)."""


class Refused(Exception):
    """Raised by a handler's adapter for a result that is not one the hook takes.

    Logged without a traceback (``where`` and the message say it all), and
    Orthanc gets the hook's failure value.
    """


class Hook:
    """One kind of Orthanc callback, registered with Orthanc once per run.

    :param what: the hook in words, for messages ("incoming HTTP request filter").
    :param connect: registers the hook's C callback, which runs every handler,
        with Orthanc; called with the first handler of a run (``None`` for hooks
        that hold one handler: :meth:`add` registers that handler's callback).
    :param single: the hook holds one handler: a second one is refused.
    :param kind: the hook's name in the metrics (``kind="http_filter"``): each
        handler's deliveries and failures are counted; ``None``: not counted.
    """

    def __init__(self, what: str, connect: Callable[[Hook], None] | None = None, single: bool = False,
                 kind: str | None = None) -> None:
        self.what = what
        self.single = single
        self.kind = kind
        self._connect = connect
        self._lock = threading.Lock()
        # Replaced, never changed in place: a C callback iterates it without a lock.
        self.handlers: tuple[Entry, ...] = ()
        _runtime.on_new_run(self._forget)

    def _forget(self) -> None:
        self.handlers = ()

    def add(self, handler: Callable[..., Any], by: str, where: str, once: bool = False,
            connect: Callable[[], None] | None = None) -> bool:
        """Adds ``handler``; registers the hook with Orthanc when it is the run's first.

        Outside Orthanc (a worker process re-running the script) nothing is
        registered, so the script runs unchanged there. Returns whether the
        handler was added.

        :param once: ``by`` may add one handler only (the official API's rule).
        :param connect: registers this handler's own C callback with Orthanc (hooks
            that hold one handler, whose C callback is made for it).
        :raises RuntimeError: for a second handler where one is allowed.
        :raises SetupError: after Orthanc has started.
        """
        if not _capi.is_attached():
            return False
        _runtime.require_setup(by)
        # Every caller ends ``where`` with the handler's name: the metrics' label.
        stats = None if self.kind is None else _metrics.handler(self.kind, where.rsplit(" ", 1)[-1])
        entry = Entry(handler, by, where, stats)
        with self._lock:
            for other in self.handlers:
                if once and other.by == by:
                    raise RuntimeError(f"{by} was already called: it takes one {self.what} ({other.where}); "
                                       "combine them in one function")
                if self.single:
                    raise RuntimeError(f"{by}: Orthanc takes one {self.what}, and {other.by} registered one "
                                       f"already ({other.where}); remove one of them")
            first = not self.handlers
            self.handlers = (*self.handlers, entry)
        if connect is None and first and self._connect is not None:
            connect = functools.partial(self._connect, self)
        if connect is not None:
            try:
                connect()
            except BaseException:
                with self._lock:
                    self.handlers = tuple(e for e in self.handlers if e is not entry)
                raise
        return True


def register(service: Service, params: Any, what: str) -> None:
    """Registers a C callback with Orthanc: ``params`` (a ctypes struct) is kept for the life of the process."""
    _capi.invoke(service, _capi.keep_alive(params), what)


def lend(c_type_name: str, pointer: Any) -> _calls.Handle:
    """Wraps an object that Orthanc lends for one call: never freed by Python.

    The caller expires it (:func:`_capi.expire`) after the call, so that a
    handle the script kept fails cleanly instead of touching freed memory.
    """
    address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
    return _calls.handle_class(c_type_name).lent(address)


# --- incoming HTTP requests ---------------------------------------------------------

HttpFilter = Callable[[int, str, str, "dict[str, str]", "dict[str, str] | None"], int]
"""``check(method, uri, ip, headers, get)``: 1 lets the request through, 0 refuses it (403), -1 fails (500).

``get`` is ``None`` but for GET requests (Orthanc gives query arguments for GET only)."""

HTTP_ERROR = -1  # Orthanc's "error" for a filter: HTTP 500, the request is not served


def _connect_http_filters(hook: Hook) -> None:
    get_method = int(_sdk.OrthancPluginHttpMethod.Get)
    strings = _capi.c_strings

    def c_filter(method: int, uri: bytes | None, ip: bytes | None, headers_count: int, headers_keys: Any,
                 headers_values: Any, get_count: int, get_keys: Any, get_values: Any) -> int:
        path = _decode(uri)
        address = _decode(ip)
        headers = dict(zip(strings(headers_keys, headers_count), strings(headers_values, headers_count)))
        get = dict(zip(strings(get_keys, get_count), strings(get_values, get_count))) if method == get_method else None
        for entry in hook.handlers:
            verdict = _run(entry, HTTP_ERROR, "the request is refused (HTTP 500)",
                           method, path, address, headers, get)
            if verdict != 1:
                return verdict  # type: ignore[no-any-return]
        return 1

    params = _sdk._OrthancPluginIncomingHttpRequestFilter2()
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingHttpRequestFilter2, "the incoming-HTTP-request "
                                       "filters", on_error=HTTP_ERROR)(c_filter)
    register(Service.RegisterIncomingHttpRequestFilter2, params, "the incoming-HTTP-request filters")


http_filters = Hook("incoming HTTP request filter", _connect_http_filters, kind="http_filter")
"""Asked before Orthanc serves any HTTP request; a request goes through when every filter lets it."""


# --- received instances ----------------------------------------------------------------

Action = _sdk.OrthancPluginReceivedInstanceAction

ReceivedInstanceHandler = Callable[[bytes, int], "tuple[int, bytes | None]"]
"""``transform(data, origin)`` returns ``(action, new data or None)`` or raises :class:`Refused`."""

REFUSE_INSTANCE = 0
"""What a failed received-instance hook returns to Orthanc: no action at all.

Orthanc refuses the instance for any value that is not a
``ReceivedInstanceAction`` ("The ReceivedInstanceCallback has returned an
invalid value"): the upload or C-STORE fails and nothing is stored. A
handler that transforms what is stored (de-identification, say) must not
let the original through when it breaks."""


def _connect_received_instances(hook: Hook) -> None:
    modify, discard = int(Action.Modify), int(Action.Discard)

    def c_received(modified: Any, data: Any, size: int, origin: int) -> int:
        current = _capi.copy_memory(data, size)
        changed = False
        # Each handler sees what the one before kept; the first to drop the instance ends it.
        for entry in hook.handlers:
            result = _run(entry, None, "the instance is refused", current, origin)
            if result is None:
                return REFUSE_INSTANCE
            action, new_data = result
            if action == discard:
                return discard
            if action == modify:
                current, changed = new_data, True
        if not changed:
            return int(Action.KeepAsIs)
        _capi.fill_memory_buffer(modified, current)
        return modify

    params = _sdk._OrthancPluginReceivedInstanceCallback()
    params.callback = _capi.trampoline(_sdk.OrthancPluginReceivedInstanceCallback, "the received-instance "
                                       "handlers", on_error=REFUSE_INSTANCE)(c_received)
    register(Service.RegisterReceivedInstanceCallback, params, "the received-instance handlers")


received_instances = Hook("received-instance callback", _connect_received_instances, kind="received_instance")
"""Keeps, changes or drops each instance Orthanc receives, before it is stored (Orthanc takes one such callback:
the plugin's runs every handler in turn)."""


# --- instances Orthanc is about to store --------------------------------------------------

DicomFilter = Callable[[_calls.Handle], int]
"""``check(instance)``: 1 stores the instance, 0 discards it, -1 fails (the sender is told)."""


def _connect_dicom_filters(hook: Hook) -> None:
    def c_filter(instance_pointer: Any) -> int:
        instance = lend("OrthancPluginDicomInstance", instance_pointer)
        try:
            for entry in hook.handlers:
                verdict = _run(entry, -1, "the instance is not stored", instance)
                if verdict != 1:
                    return verdict  # type: ignore[no-any-return]
            return 1
        finally:
            _capi.expire(instance)

    params = _sdk._OrthancPluginIncomingDicomInstanceFilter()
    # -1 is Orthanc's "error": the instance is not stored and the sender is told.
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingDicomInstanceFilter, "the incoming-DICOM-instance "
                                       "filters", on_error=-1)(c_filter)
    register(Service.RegisterIncomingDicomInstanceFilter, params, "the incoming-DICOM-instance filters")


dicom_filters = Hook("incoming DICOM instance filter", _connect_dicom_filters, kind="instance_filter")
"""Asked whether to store each instance Orthanc receives, whatever the way; all must accept it."""


CStoreFilter = Callable[[_calls.Handle], int]
"""``check(instance)``: 0 stores the instance, a DIMSE status (1 to 0xFFFF) refuses it; raises :class:`Refused`."""


def _connect_cstore_filters(hook: Hook) -> None:
    def c_filter(dimse_status: Any, instance_pointer: Any) -> int:
        instance = lend("OrthancPluginDicomInstance", instance_pointer)
        try:
            for entry in hook.handlers:
                status = _run(entry, None, "the C-STORE fails", instance)
                if status is None:
                    return -1  # Orthanc: the C-STORE fails, nothing is stored
                if status != 0:
                    dimse_status[0] = status
                    return 0  # Orthanc: 0 discards, answering dimse_status
            return 1  # Orthanc: 1 stores
        finally:
            _capi.expire(instance)

    params = _sdk._OrthancPluginIncomingCStoreInstanceFilter()
    params.callback = _capi.trampoline(_sdk.OrthancPluginIncomingCStoreInstanceFilter, "the incoming-C-STORE "
                                       "filters", on_error=-1)(c_filter)
    register(Service.RegisterIncomingCStoreInstanceFilter, params, "the incoming-C-STORE filters")


cstore_filters = Hook("incoming C-STORE instance filter", _connect_cstore_filters, kind="cstore_filter")
"""Asked for each instance received by C-STORE; the first refusal answers the modality."""


# --- metrics ------------------------------------------------------------------------------

def _connect_metrics(hook: Hook) -> None:
    def c_refresh() -> None:
        for entry in hook.handlers:
            _run(entry, None, "the other refresh-metrics callbacks still run")

    params = _sdk._OrthancPluginRegisterRefreshMetricsCallback()
    params.callback = _capi.trampoline(
        _sdk.OrthancPluginRefreshMetricsCallback, "the refresh-metrics callbacks", on_error=None  # type: ignore[arg-type]
    )(c_refresh)
    register(Service.RegisterRefreshMetricsCallback, params, "the refresh-metrics callbacks")


metrics = Hook("refresh-metrics callback", _connect_metrics)
"""Called each time Orthanc refreshes its metrics (a monitoring tool reads them); every handler runs.

orthanc_py's own figures (:mod:`._metrics`) are its first handler, added at each run
(unless ``"Python": {"Metrics": false}``)."""


def _add_own_metrics() -> None:
    if _metrics.enabled:
        metrics.add(_metrics.refresh, "orthanc_py", "orthanc_py's metrics (routes, handlers, queues)")


_runtime.at_each_run(_add_own_metrics)


# --- HTTP authentication (Orthanc 1.12.9) --------------------------------------------------

AuthStatus = _sdk.OrthancPluginHttpAuthenticationStatus

Authenticate = Callable[[str, str, "dict[str, str]", "dict[str, str]"], "tuple[int, bytes | None]"]
"""``authenticate(uri, ip, headers, get)`` returns ``(status, payload or redirection path)``, or raises
:class:`Refused`."""


def _connect_http_authentication(hook: Hook) -> None:
    strings = _capi.c_strings
    granted, redirect = int(AuthStatus.Granted), int(AuthStatus.Redirect)

    def c_authenticate(status: Any, payload: Any, redirection: Any, uri: bytes | None, ip: bytes | None,
                       headers_count: int, headers_keys: Any, headers_values: Any, get_count: int, get_keys: Any,
                       get_values: Any) -> int:
        headers = dict(zip(strings(headers_keys, headers_count), strings(headers_values, headers_count)))
        get = dict(zip(strings(get_keys, get_count), strings(get_values, get_count)))
        entry = hook.handlers[0]
        result = _run(entry, None, "the request is refused (HTTP 403)", _decode(uri), _decode(ip), headers, get)
        # A handler that breaks refuses: access is never granted by accident.
        verdict, data = result if result is not None else (int(AuthStatus.Forbidden), None)
        status[0] = verdict
        if data and verdict == granted:
            _capi.fill_memory_buffer(payload, data, wide=False)
        elif data and verdict == redirect:
            _capi.fill_memory_buffer(redirection, data, wide=False)
        return 0

    params = _sdk._OrthancPluginHttpAuthentication()
    params.callback = _capi.trampoline(_sdk.OrthancPluginHttpAuthentication, "the HTTP authentication")(c_authenticate)
    register(Service.RegisterHttpAuthentication, params, "the HTTP authentication")


http_authentication = Hook("HTTP authentication handler", _connect_http_authentication, single=True,
                           kind="http_auth")
"""Authenticates every HTTP request (Orthanc 1.12.9): Orthanc takes one for all its plugins."""


# --- audit logs (Orthanc 1.12.9) ------------------------------------------------------------

AuditLogHandler = Callable[[str, str, int, str, str, bytes], None]
"""``handler(source_plugin, user_id, resource_type, resource_id, action, data)``."""


def _connect_audit_logs(hook: Hook) -> None:
    def c_audit(source: bytes | None, user: bytes | None, resource_type: int, resource_id: bytes | None,
                action: bytes | None, data: Any, size: int) -> int:
        args = (_decode(source), _decode(user), resource_type, _decode(resource_id), _decode(action),
                _capi.copy_memory(data, size))
        for entry in hook.handlers:
            _run(entry, None, "the other audit-log handlers still run", *args)
        return 0

    params = _sdk._OrthancPluginAuditLogHandler()
    params.handler = _capi.trampoline(_sdk.OrthancPluginAuditLogHandler, "the audit-log handlers")(c_audit)
    register(Service.RegisterAuditLogHandler, params, "the audit-log handlers")


audit_logs = Hook("audit-log handler", _connect_audit_logs, kind="audit_log")
"""Told each audit log a plugin emits (Orthanc 1.12.9); every handler runs."""


# --- hooks that hold one handler ----------------------------------------------------------

# Orthanc keeps one of each of these (or the official plugin does, and
# nothing would combine two answers to one query): their families register
# the C callback themselves once :meth:`Hook.add` has accepted the handler.
storage_area = Hook("storage area", single=True)
find = Hook("C-FIND handler", single=True)
worklist = Hook("worklist handler", single=True)
move = Hook("C-MOVE handler", single=True)
storage_commitment = Hook("storage commitment SCP", single=True)
jobs_unserializer = Hook("jobs unserializer", single=True)
decode_image = Hook("image decoder", single=True)
transcoder = Hook("transcoder", single=True)


# --- shared ---------------------------------------------------------------------------

def _decode(value: bytes | None) -> str:
    # Orthanc passes NULL for an absent value; handlers get "".
    return value.decode("utf-8", "replace") if value else ""


def _run(entry: Entry, failure: Any, consequence: str, *args: Any) -> Any:
    """One handler of a hook: its result, or ``failure`` once the reason is in Orthanc's log.

    Each handler is run on its own, so that the log names the one that failed,
    and its figures count it.
    """
    stats = entry.stats
    if stats is not None:
        stats.deliveries += 1
    try:
        return entry.handler(*args)
    except Refused as refusal:
        _capi.log_error(f"orthanc_py: {entry.where} {refusal}; {consequence}")
    except Exception:
        _capi.report_exception(f"{entry.where}; {consequence}")
    if stats is not None:
        stats.failures += 1
    return failure
