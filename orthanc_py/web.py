# SPDX-License-Identifier: GPL-3.0-or-later
"""Routes and filters in the Flask style: ``@route``, ``@http_filter``, and how a route's answer is sent.

>>> @route("/studies/<study_id>/summary")
... def summary(request, study_id):
...     study = rest.get_json(f"/studies/{study_id}")
...     return {"patient": study["PatientMainDicomTags"].get("PatientName")}

Each distinct rule becomes one Orthanc REST callback: Orthanc matches the
path, Python only picks the handler for the method and converts the result.
A request goes one way: Orthanc, the route's entry (:mod:`._capi_rest`),
its endpoint here, the handler, and back: the endpoint returns the answer,
which the loader sends. The messages are in :mod:`.http_messages`, the
worker processes in :mod:`.offload`.
"""

from __future__ import annotations

import concurrent.futures
import json
import pickle
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Callable, TypeVar, Union

from . import _calls, _capi, _capi_rest, _hooks, _runtime, _sdk_calls
from ._routing import CompiledRule, RuleError, allow_header, compile_path
from .http_messages import (
    FilterRequest,
    Headers,
    HTTPError,
    Request,
    Response,
    abort,
    checked_header_value,
    checked_headers,
    make_response,
    pop_content_type,
)
from .offload import WorkerCrashed, default_pool, run_in_worker, submit
from .rest import RestError

__all__ = [
    "FilterRequest", "HTTPError", "Request", "Response", "RuleError", "WorkerCrashed", "abort", "add_route",
    "http_filter", "route", "run_in_worker",
]

F = TypeVar("F", bound=Callable[..., Any])
METHODS = ("GET", "POST", "PUT", "DELETE")
Offload = Union[bool, concurrent.futures.Executor]


# What Orthanc sends for these statuses, whatever headers were set before.
_ONLY_HEADER = {301: "location", 405: "allow"}
_dropped_warned: set[tuple[int, tuple[str, ...]]] = set()


def _answer(output: int, response: Response) -> _capi_rest.RouteResult:
    """The answer to return to the loader, or the SDK calls that answer first when the status needs them.

    A 200 is returned, ``(0, body, content type)``, for the loader to send
    without the GIL, after the headers set here. Orthanc has two answers of
    its own, which clear the headers: ``Redirect`` (always 301) and
    ``SendMethodNotAllowed`` (405); every other status is sent here with the
    response's headers.
    """
    status = response.status
    headers = checked_headers(response.headers)  # again: the dict may have changed since
    content_type = checked_header_value("Content-Type", pop_content_type(headers) or response.content_type)
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
        return 0
    for name, value in headers.items():
        _sdk_call("SetHttpHeader", output, name, value)
    if status == 200:
        _capi_rest.check_answer_size(len(response.body))
        return 0, response.body, content_type.encode("utf-8")
    try:
        if not response.body or status in (204, 304):
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
    return 0


def _sdk_call(name: str, output: int, *args: Any) -> None:
    rest_output = _calls.handle_class("OrthancPluginRestOutput")(output)
    try:
        _sdk_calls.call(name, rest_output, *args)
    finally:
        rest_output.detach()  # Orthanc's, not ours to free


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

    def handle(self, output: int, uri: str, view: _capi_rest.HttpRequestView) -> _capi_rest.RouteResult:
        """Runs the handler of the request's method; returns the answer for the loader to send."""
        method = view.method
        handler: Callable[..., Any] | None = None
        try:
            try:
                target = self.handlers.get(method)
                if target is None:
                    raise HTTPError(405, headers={"Allow": allow_header(list(self.handlers))})
                handler, offload = target
                params: dict[str, Any] = {}
                if self.compiled.names:
                    try:
                        params = self.compiled.parameters(view.groups)
                    except ValueError:  # a converter refused the segment: no such resource
                        raise HTTPError(404) from None
                request = Request(view, uri, params, method)
                if offload:
                    executor = default_pool() if offload is True else offload
                    result = submit(executor, _run_offloaded, handler, request.detached(), params)
                else:
                    result = handler(request, **params)
                if type(result) is str:  # the common cases, answered without a Response object
                    body = result.encode("utf-8")
                    _capi_rest.check_answer_size(len(body))
                    return 0, body, _TEXT
                if type(result) is dict or type(result) is list:  # as Response(result) would answer
                    return 0, json.dumps(result).encode("utf-8"), _JSON
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
            return _answer(output, response)
        except _capi.OrthancError as error:
            if error.code != _capi.ErrorCode.NetworkProtocol:
                _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
                return int(_capi.ErrorCode.Plugin)
            # The client went away before the answer was sent: nothing to fix.
            # The same words and level as the loader's (send_answer() in loader.c).
            _capi.log_info(f"orthanc_py: {self.where}: the client closed the connection before its answer")
            return 0
        except Exception:
            _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
            return int(_capi.ErrorCode.Plugin)


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
        method_name = _capi_rest.HTTP_METHODS.get(method, "GET")
        verdict = function(FilterRequest(method_name, uri, ip, Headers(headers.items()), args))
        if verdict is True:
            return 1
        if verdict is False:
            return 0
        raise _hooks.Refused(f"returned {type(verdict).__name__}, not True or False")

    _hooks.http_filters.add(check, "@http_filter", f"the HTTP filter {_name(function)}")
    return function
