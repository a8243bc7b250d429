# SPDX-License-Identifier: GPL-3.0-or-later
"""Routes in the Flask style: ``@route``, :class:`Request`, :class:`Response`, :func:`abort`.

>>> @route("/studies/<study_id>/summary")
... def summary(request, study_id):
...     study = rest.get_json(f"/studies/{study_id}")
...     return {"patient": study["PatientMainDicomTags"].get("PatientName")}

Each distinct rule becomes one Orthanc REST callback: Orthanc matches the
path, Python only picks the handler for the method and converts the result.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import functools
import json
import multiprocessing
import os
import pickle
import re
import select
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Callable, NoReturn, TypeVar, Union

from . import _calls, _capi, _capi_rest, _hooks, _runtime, _sdk_calls
from ._routing import CompiledRule, RuleError, allow_header, compile_path
from .rest import RestError

__all__ = [
    "FilterRequest", "HTTPError", "Request", "Response", "RuleError", "WorkerCrashed", "abort", "add_route",
    "http_filter", "route", "run_in_worker",
]

F = TypeVar("F", bound=Callable[..., Any])
METHODS = ("GET", "POST", "PUT", "DELETE")
Offload = Union[bool, concurrent.futures.Executor]


class Headers(dict):  # type: ignore[type-arg]
    """HTTP headers; names are matched without regard to case."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, name: str) -> str:
        return str(super().__getitem__(name.lower()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Request:
    """An HTTP request to a route.

    ``args``, ``headers`` and ``body`` are read from Orthanc when first used.
    The request is valid while the handler runs (an offloaded handler gets a
    complete copy).
    """

    # What was read from Orthanc so far: class-level until read, so that
    # making a Request (once per request) sets only what every one has.
    _args: dict[str, str] | None = None
    _headers: Headers | None = None
    _body: bytes | None = None
    _groups: tuple[str, ...] | None = None

    def __init__(self, view: _capi_rest.HttpRequestView | None, path: str, path_params: dict[str, Any],
                 method: str | None = None) -> None:
        self._view = view
        self.path = path
        """The path of the request, without the query string."""
        self.path_params = path_params
        """The values taken from the path by the rule's ``<converters>``."""
        self.method = method or (view.method if view is not None else "GET")
        """``"GET"``, ``"POST"``, ``"PUT"`` or ``"DELETE"``."""

    def _from_view(self) -> _capi_rest.HttpRequestView:
        if self._view is None:
            raise RuntimeError("this request is over: read it while the handler runs")
        return self._view

    @property
    def args(self) -> dict[str, str]:
        """The query arguments, decoded (``?name=J%C3%B6rg`` gives ``{"name": "Jörg"}``)."""
        if self._args is None:
            self._args = {k: urllib.parse.unquote_plus(v) for k, v in self._from_view().get}
        return self._args

    @property
    def headers(self) -> Headers:
        """The HTTP headers; ``request.headers["Content-Type"]`` ignores case."""
        if self._headers is None:
            self._headers = Headers(self._from_view().headers)
        return self._headers

    @property
    def body(self) -> bytes:
        """The body of a POST or PUT request (``b""`` otherwise)."""
        if self._body is None:
            self._body = self._from_view().body if self.method in ("POST", "PUT") else b""
        return self._body

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups of the rule's regular expression, as Orthanc matched them."""
        if self._groups is None:
            self._groups = self._from_view().groups
        return self._groups

    def json(self) -> Any:
        """The body parsed as JSON.

        :raises HTTPError: 400, with the parser's message, when the body is not JSON,
            or is nested deeper than Python's recursion limit lets it parse.
        """
        if not self.body:
            raise HTTPError(400, "the body is empty: JSON expected")
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise HTTPError(400, f"the body is not valid JSON: {error}") from None
        except RecursionError:
            # A client's input, not a fault of the server: a few KB of
            # brackets reach the limit.
            raise HTTPError(400, "the JSON body is nested too deeply to be parsed") from None

    def detached(self) -> Request:
        """A complete copy that outlives the handler (and pickles)."""
        copy = Request(None, self.path, self.path_params, self.method)
        copy._args, copy._headers, copy._body, copy._groups = self.args, self.headers, self.body, self.groups
        return copy

    def __getstate__(self) -> dict[str, Any]:
        state = self.detached().__dict__.copy()
        state["_view"] = None
        return state

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An HTTP answer with a status, headers and a content type of one's choosing.

    :param body: ``str`` (sent as UTF-8), ``bytes``, or a ``dict``/``list`` sent as JSON.
    :param status: the HTTP status (default 200).
    :param headers: extra headers (``str`` values; ``int`` values are turned into text); a
        ``Content-Type`` among them, in any case, becomes the content type. A redirect
        (``302``, ``303``, ``307``) or a ``201`` sends its ``Location`` with the other headers;
        a ``301`` and a ``405`` go through Orthanc's own answers, which send only ``Location``
        (respectively ``Allow``) and drop the other headers (logged).
    :param content_type: the content type; by default ``text/plain; charset=utf-8`` for
        ``str``, ``application/json`` for ``dict``/``list``, ``application/octet-stream`` for ``bytes``.
    :raises ValueError: when a header name is not an HTTP token, or a header value (or
        ``content_type``) holds CR, LF or NUL: text taken from a client must not be able
        to add headers of its own (header injection).
    """

    def __init__(self, body: str | bytes | dict[str, Any] | list[Any] | None = b"", status: int = 200,
                 headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                 content_type: str | None = None) -> None:
        if isinstance(body, (dict, list)):
            data, default_type = json.dumps(body).encode("utf-8"), "application/json"
        elif isinstance(body, str):
            data, default_type = body.encode("utf-8"), "text/plain; charset=utf-8"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data, default_type = bytes(body), "application/octet-stream"
        elif body is None:
            data, default_type = b"", "application/octet-stream"
        else:
            raise TypeError(f"Response body must be str, bytes, dict, list or None, not {type(body).__name__}")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"Response status must be an HTTP status between 200 and 599, not {status!r}")
        self.body = data
        self.status = status
        self.headers = _checked_headers(headers or {})
        given_type = _pop_content_type(self.headers)
        self.content_type = _checked_header_value("Content-Type", content_type or given_type or default_type)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type} {len(self.body)} bytes>"


class HTTPError(Exception):
    """Raised to answer an HTTP error; :func:`abort` raises it.

    :ivar status: the HTTP status to answer.
    :ivar message: the message of the JSON body, or ``None``.
    """

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        """The answer: ``status``, with the JSON body ``{"status": ..., "message": ...}``."""
        body = {"status": self.status, "message": self.message} if self.message else {"status": self.status}
        return Response(body, self.status)


def abort(status: int, message: str | None = None) -> NoReturn:
    """Stops the handler and answers ``status`` with a small JSON body ``{"status", "message"}``."""
    raise HTTPError(status, message)


def make_response(result: Any) -> Response:
    """Turns what a handler returned into a :class:`Response`.

    ``str`` is text, ``bytes`` binary, ``dict``/``list`` JSON, ``None`` an
    empty 204; ``(body, status)`` and ``(body, status, headers)`` set those.
    """
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(b"", 204)
    if isinstance(result, tuple):
        if len(result) == 2:
            return Response(result[0], result[1])
        if len(result) == 3:
            return Response(result[0], result[1], result[2])
        raise TypeError(f"a handler may return (body, status) or (body, status, headers), not a tuple of {len(result)}")
    return Response(result)


# A header name is an HTTP token (RFC 9110): no separators, spaces or controls.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _checked_header_value(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"the value of the response header {name!r} must be str, not {type(value).__name__}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(
            f"the value of the response header {name!r} holds CR, LF or NUL ({value!r}): it could add headers "
            "of its own (header injection); remove line breaks from text taken from the request"
        )
    return value


def _checked_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, str]:
    """A copy of ``headers`` whose names and values are safe to send; raises otherwise."""
    try:
        pairs = list(headers.items() if isinstance(headers, Mapping) else headers)
        if not all(isinstance(pair, tuple) and len(pair) == 2 for pair in pairs):
            raise TypeError
    except TypeError:
        raise TypeError(f"Response headers must be a dict of names to values (or a list of pairs), "
                        f"not {type(headers).__name__}") from None
    checked = {}
    for name, value in pairs:
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(
                f"the response header name {name!r} is not an HTTP header name (letters, digits and "
                "!#$%&'*+-.^_`|~, with no spaces, colons or line breaks)"
            )
        checked[name] = _checked_header_value(name, value)
    return checked


def _pop_content_type(headers: dict[str, str]) -> str | None:
    """Removes every ``Content-Type`` of ``headers``, whatever its case; returns the last one."""
    found = None
    for name in [n for n in headers if n.lower() == "content-type"]:
        found = headers.pop(name)
    return found


# What Orthanc sends for these statuses, whatever headers were set before.
_ONLY_HEADER = {301: "location", 405: "allow"}
_dropped_warned: set[tuple[int, tuple[str, ...]]] = set()


def _send(output: int, response: Response) -> None:
    """Answers the request through Orthanc, choosing the SDK call the status needs.

    Orthanc has two answers of its own, which clear the headers: ``Redirect``
    (always 301) and ``SendMethodNotAllowed`` (405); every other status is
    sent with the response's headers (SetHttpHeader, then the answer call).
    """
    status = response.status
    headers = _checked_headers(response.headers)  # again: the dict may have changed since
    content_type = _checked_header_value("Content-Type", _pop_content_type(headers) or response.content_type)
    only = _ONLY_HEADER.get(status)
    if only is not None:
        value = next((v for n, v in headers.items() if n.lower() == only), None)
        dropped = tuple(sorted(n for n in headers if n.lower() != only))
        if dropped and (status, dropped) not in _dropped_warned:
            _dropped_warned.add((status, dropped))
            _capi.log_warning(f"orthanc_py: Orthanc sends a {status} with its {only.title()} header only; "
                              f"dropped: {', '.join(dropped)} (use 302, 303 or 307 to keep headers on a redirect)")
        if status == 301:
            if value is None:
                raise ValueError("a 301 response needs a Location header (the address to redirect to)")
            _sdk_call("Redirect", output, value)
        else:
            _sdk_call("SendMethodNotAllowed", output, value or "")
        return
    for name, value in headers.items():
        _sdk_call("SetHttpHeader", output, name, value)
    try:
        if status == 200:
            _capi_rest.answer_buffer(output, response.body, content_type.encode("utf-8"))
        elif not response.body or status in (204, 304):
            # 204 and 304 have no body in HTTP: one sent anyway would be read
            # by the client as the start of the next answer on the connection.
            _sdk_call("SendHttpStatusCode", output, status)
        else:
            _sdk_call("SetHttpHeader", output, "Content-Type", content_type)
            _sdk_call("SendHttpStatus", output, status, response.body, len(response.body))
    except _capi.OrthancError as error:
        if error.code == _capi.ErrorCode.ParameterOutOfRange:
            # Orthanc's HTTP server knows a fixed list of statuses (1.10: no
            # 308, 418, 429...): say which one, rather than Orthanc's words.
            raise ValueError(
                f"Orthanc {_capi.orthanc_version()} cannot send the HTTP status {status}; choose another "
                f"(for a redirect: 301, 302, 303 or 307)"
            ) from None
        raise


def _sdk_call(name: str, output: int, *args: Any) -> None:
    rest_output = _calls.handle_class("OrthancPluginRestOutput")(output)
    try:
        _sdk_calls.sdk_function("OrthancPlugin" + name)(rest_output, *args)
    finally:
        rest_output._address = 0  # Orthanc's, not ours to free


# --- offloading to worker processes -------------------------------------------

_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


class WorkerCrashed(RuntimeError):
    """A worker process of the offload pool died (``os._exit``, a signal, a crash in a C extension).

    Only the calls that were running in the pool at that moment fail; the
    pool is replaced and the next call runs in a fresh worker.
    """


def _default_pool() -> concurrent.futures.ProcessPoolExecutor:
    """The process pool of offloaded routes, started on first use, replaced when a worker died.

    ``forkserver`` (``spawn`` where missing) rather than ``fork``: forking the
    multi-threaded Orthanc process could copy locks held by other threads.
    """
    global _pool, _stop_hooks_set
    with _pool_lock:
        if _pool is not None and getattr(_pool, "_broken", False):
            # A dead worker breaks a ProcessPoolExecutor for good: start anew.
            _end_pool(_pool, grace=0)
            _pool = None
        if _pool is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            workers = _runtime.settings.offload_workers or os.cpu_count() or 1
            _pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                                           initializer=_end_with_orthanc, initargs=(os.getpid(),))
            if not _stop_hooks_set:  # once per run: each run starts with no stop hooks
                _stop_hooks_set = True
                _runtime.when_stopping(_arm_stop_deadline)
                _runtime.on_stop(_stop_pool)
        return _pool


_stop_hooks_set = False


def _end_with_orthanc(orthanc_pid: int) -> None:
    """Runs in each worker process: end the worker as soon as Orthanc's process ends.

    Once Orthanc is gone (killed, or crashed) nobody waits for the worker's
    result; a worker busy with a long task would run on, at full CPU, and
    keep the forkserver alive with it.
    """
    try:
        handle = os.pidfd_open(orthanc_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (an old kernel): ask every second
        def watch() -> None:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(orthanc_pid, 0)
                except ProcessLookupError:
                    os._exit(1)
    else:
        def watch() -> None:
            select.select([handle], [], [])  # readable once the process has ended
            os._exit(1)

    threading.Thread(target=watch, name="orthanc_py-watch-orthanc", daemon=True).start()


def _submit(executor: concurrent.futures.Executor, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``function`` on ``executor`` and waits; a worker's death becomes :class:`WorkerCrashed`.

    The call is submitted as one object (``functools.partial``), so that the
    function's own keyword arguments never reach ``submit()``: a dask
    ``ClientExecutor`` would take ``workers=`` or ``pure=`` for itself.
    """
    call = functools.partial(function, *args, **kwargs)
    try:
        if _is_dask(executor):
            # dask takes a task with the same function and arguments for the
            # same result (pure=True by default): two identical requests
            # would run once. Each call of a handler is a new task.
            return executor.submit(call, pure=False).result()
        return executor.submit(call).result()
    except concurrent.futures.process.BrokenProcessPool as error:
        raise WorkerCrashed(f"a worker process of the offload pool died while running {_name(function)} "
                            "(killed, out of memory, or crashed in a C extension); the pool is replaced") from error
    except Exception as error:
        if type(error).__name__ == "KilledWorker":  # dask gave up after the workers running it died
            raise WorkerCrashed(f"the dask workers died while running {_name(function)}: {error}") from error
        raise


def _is_dask(executor: concurrent.futures.Executor) -> bool:
    """Whether ``executor`` is a ``dask.distributed`` one (``Client.get_executor()``), without importing dask."""
    return type(executor).__module__.split(".")[0] == "distributed"


def _arm_stop_deadline() -> None:
    """Orthanc is stopping: work still running in the pool after the grace is ended by force."""

    def end_running_work() -> None:
        with _pool_lock:
            pool = _pool
        if pool is not None and _busy(pool):
            _capi.log_warning(f"orthanc_py: offloaded work still runs {_runtime.settings.shutdown_grace:g} s after "
                              "Orthanc began to stop: ending its worker processes")
            _terminate_workers(pool)

    timer = threading.Timer(_runtime.settings.shutdown_grace, end_running_work)
    timer.name = "orthanc_py-offload-deadline"
    timer.daemon = True
    timer.start()


def _busy(pool: concurrent.futures.ProcessPoolExecutor) -> bool:
    return bool(getattr(pool, "_pending_work_items", None))


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)


def _end_pool(pool: concurrent.futures.ProcessPoolExecutor, grace: float) -> None:
    """Shuts ``pool`` down: running work gets ``grace`` seconds, then its workers are ended."""
    # Wait (a bounded time) for the pool's manager thread: left running, it
    # may close its wake-up pipe while Python's exit hook writes to it (a race
    # of CPython 3.11's concurrent.futures), which prints a traceback.
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(grace)
    _terminate_workers(pool)
    if manager is not None:
        manager.join(_POOL_STOP_SECONDS)


def _stop_pool() -> None:
    global _pool, _stop_hooks_set
    with _pool_lock:
        pool, _pool = _pool, None
        _stop_hooks_set = False
    if pool is not None:
        _end_pool(pool, grace=0 if _runtime.phase is _runtime.Phase.STOPPED else _runtime.settings.shutdown_grace)


_POOL_STOP_SECONDS = 5.0


def run_in_worker(function: Callable[..., Any], *args: Any, executor: concurrent.futures.Executor | None = None,
                  **kwargs: Any) -> Any:
    """Runs ``function(*args, **kwargs)`` in orthanc_py's pool of worker processes; returns its result.

    For the CPU-bound part of a handler that must also call Orthanc: fetch
    with :mod:`orthanc_py.rest` here, compute in the worker (which has no
    access to Orthanc), answer here. ``function`` must be defined at the top
    level of the script; arguments and result must pickle.

    :param executor: where to run it instead of orthanc_py's pool: any
        :class:`concurrent.futures.Executor`, such as a ``dask.distributed``
        cluster's (``Client(address).get_executor()``), whose workers may be
        other machines. (A keyword argument of ``function`` itself named
        ``executor`` goes through ``functools.partial``.)
    :raises WorkerCrashed: when the worker process died while running it.
    """
    return _submit(executor if executor is not None else _default_pool(), function, *args, **kwargs)


def _run_offloaded(handler: Callable[..., Any], request: Request, params: dict[str, Any]) -> Any:
    """Runs in a worker process: the handler, then the value to answer with."""
    return make_response(handler(request, **params))


# --- routes -------------------------------------------------------------------

class _Endpoint:
    """One rule: one Orthanc callback, a handler per method."""

    def __init__(self, compiled: CompiledRule) -> None:
        self.compiled = compiled
        self.handlers: dict[str, tuple[Callable[..., Any], Offload]] = {}
        self.where = f"route {compiled.rule}"

    def handle(self, output: int, uri: str, view: _capi_rest.HttpRequestView) -> int:
        method = view.method
        target = self.handlers.get(method)
        if target is None:
            _sdk_call("SendMethodNotAllowed", output, allow_header(list(self.handlers)))
            return 0
        handler, offload = target
        params: dict[str, Any] = {}
        if self.compiled.names:
            try:
                params = self.compiled.parameters(view.groups)
            except ValueError:
                _sdk_call("SendHttpStatusCode", output, 404)
                return 0
        request = Request(view, uri, params, method)
        try:
            try:
                if offload:
                    executor = _default_pool() if offload is True else offload
                    result = _submit(executor, _run_offloaded, handler, request.detached(), params)
                else:
                    result = handler(request, **params)
                if type(result) is str:  # the common cases, answered without a Response object
                    _capi_rest.answer_buffer(output, result.encode("utf-8"), _TEXT)
                    return 0
                if type(result) is dict or type(result) is list:  # as Response(result) would answer
                    _capi_rest.answer_buffer(output, json.dumps(result).encode("utf-8"), _JSON)
                    return 0
                response = make_response(result)
            except HTTPError as error:
                response = error.response()
            except RestError as error:
                if error.status >= 500:
                    raise
                # A resource the handler looked up is missing (404) or was
                # refused (400...): the client gets that status, and the
                # details, which name internal URIs, stay in the log.
                _capi.log_info(f"orthanc_py: {self.where} ({_name(handler)}): {error}")
                response = HTTPError(error.status, HTTPStatus(error.status).phrase).response()
            except WorkerCrashed as error:
                # Only this request fails: the pool is replaced for the next one.
                _capi.log_error(f"orthanc_py: {self.where} ({_name(handler)}) for {method} {uri}: {error}")
                response = HTTPError(503, "Service Unavailable: a worker process died; try again").response()
            _send(output, response)
        except _capi.OrthancError as error:
            if error.code != _capi.ErrorCode.NetworkProtocol:
                _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
                return int(_capi.ErrorCode.Plugin)
            # The client went away before the answer was sent: nothing to fix.
            # The same words and level as the loader's (send_answer() in loader.c).
            _capi.log_info(f"orthanc_py: {self.where}: the client closed the connection before its answer")
        except Exception:
            _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
            return int(_capi.ErrorCode.Plugin)
        return 0


_TEXT = b"text/plain; charset=utf-8"
_JSON = b"application/json"
_endpoints: dict[str, _Endpoint] = {}
_runtime.on_new_run(_endpoints.clear)


def add_route(rule: str, handler: Callable[..., Any], methods: Sequence[str] = ("GET",),
              offload: Offload = False) -> None:
    """Registers ``handler(request, **path_params)`` for ``rule`` and ``methods``.

    What :func:`route` does, without a decorator: for lists of routes built
    at load time.

    :param offload: ``True`` runs the handler in orthanc_py's pool of worker
        processes, past the GIL; a :class:`concurrent.futures.Executor` runs it there,
        for one a ``dask.distributed`` cluster's (``Client(address).get_executor()``).
        A worker process has no access to Orthanc (:mod:`orthanc_py.rest`
        raises there): to combine both, use :func:`run_in_worker` inside an
        ordinary route.
    :raises RuleError: for a malformed rule, an unknown method, or a method
        that another handler already serves on the same rule.
    :raises SetupError: after Orthanc has started: routes are declared while the script loads.
    """
    if not callable(handler):
        raise TypeError(f"add_route({rule!r}): the handler must be callable, not {type(handler).__name__}")
    if isinstance(methods, str):
        raise TypeError(
            f"add_route({rule!r}): methods must be a list such as ['GET', 'POST'], not the string {methods!r}"
        )
    wanted = [m.upper() for m in methods]
    for method in wanted:
        if method not in METHODS:
            raise RuleError(
                f"route {rule!r}: method {method!r} is not one Orthanc hands to plugins ({', '.join(METHODS)})"
            )
    if not (offload is False or offload is True or isinstance(offload, concurrent.futures.Executor)):
        raise TypeError(f"route {rule!r}: offload must be True, False or a concurrent.futures.Executor")
    compiled = compile_path(rule)
    endpoint = _endpoints.get(compiled.regex)
    if endpoint is not None:
        for method in wanted:
            if method in endpoint.handlers:
                other = _name(endpoint.handlers[method][0])
                raise RuleError(f"route {rule!r}: {method} is already handled by {other}")
    if _capi.is_attached():
        _runtime.require_setup(f"the route {rule!r}")
        if offload:
            _runtime.after_load(lambda: _check_picklable(rule, handler))
    if endpoint is None:
        endpoint = _endpoints[compiled.regex] = _Endpoint(compiled)
        if _capi.is_attached():
            _capi_rest.register_rest_callback(compiled.regex, endpoint.handle, endpoint.where)
    for method in wanted:
        endpoint.handlers[method] = (handler, offload)


def route(rule: str, methods: Sequence[str] = ("GET",), offload: Offload = False) -> Callable[[F], F]:
    """Registers the decorated function as the handler of ``rule``; see :func:`add_route`.

    Rules are Flask-style: ``/studies/<study_id>``, ``<int:n>``, ``<float:x>``,
    ``<path:rest>``, ``<uuid:u>``; a rule holding regular-expression syntax and
    no ``<...>`` is taken as a raw Orthanc regular expression.
    """

    def decorator(function: F) -> F:
        add_route(rule, function, methods, offload)
        return function

    return decorator


def _check_picklable(rule: str, handler: Callable[..., Any]) -> None:
    try:
        pickle.dumps(handler)
    except Exception as error:
        raise TypeError(
            f"route {rule!r}: offload=True needs a handler that worker processes can import by name "
            f"(a function defined at the top level of the script), but {_name(handler)} cannot be pickled: {error}"
        ) from None


_name = _capi.name_of


# --- filtering incoming requests ----------------------------------------------------

class FilterRequest:
    """What an :func:`http_filter` knows of a request Orthanc is about to serve."""

    def __init__(self, method: str, path: str, ip: str, headers: Headers, args: dict[str, str]) -> None:
        self.method = method
        """``"GET"``, ``"POST"``, ``"PUT"`` or ``"DELETE"``."""
        self.path = path
        """The path asked for (any route: Orthanc's own and the script's)."""
        self.ip = ip
        """The client's IP address."""
        self.headers = headers
        """The HTTP headers (names match without regard to case)."""
        self.args = args
        """The query arguments of a GET request, decoded (empty for other methods)."""

    def __repr__(self) -> str:
        return f"<FilterRequest {self.method} {self.path} from {self.ip}>"


def http_filter(function: F) -> F:
    """Asks the decorated ``handler(request)`` about every HTTP request before Orthanc serves it.

    ``request`` is a :class:`FilterRequest`. The handler returns ``True`` to let
    the request through, ``False`` to refuse it (HTTP 403). Several filters
    may be declared, with this decorator or ``orthanc.RegisterIncomingHttpRequestFilter``:
    a request goes through when every one lets it, asked in the order declared.
    A filter that raises or returns something else refuses the request (HTTP
    500) and the reason goes to Orthanc's log. Filters run on Orthanc's HTTP
    threads, for every request: keep them quick.
    """
    if not callable(function):
        raise TypeError(f"@http_filter: the handler must be callable, not {type(function).__name__}")

    def check(method: int, uri: str, ip: str, headers: dict[str, str], get: dict[str, str] | None) -> int:
        args = {k: urllib.parse.unquote_plus(v) for k, v in get.items()} if get else {}
        verdict = function(FilterRequest(_capi_rest.HTTP_METHODS.get(method, "GET"), uri, ip, Headers(headers.items()), args))
        if verdict is True:
            return 1
        if verdict is False:
            return 0
        raise _hooks.Refused(f"returned {type(verdict).__name__}, not True or False")

    _hooks.http_filters.add(check, "@http_filter", f"the HTTP filter {_name(function)}")
    return function
