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
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from typing import Any, Callable, TypeVar, Union

from . import _calls, _capi, _capi_rest, _hooks, _metrics, _runtime, _sdk_calls
from ._routing import CompiledRule, RuleError, allow_header, compile_path
from .http_messages import (
    AuthRequest,
    FilterRequest,
    Headers,
    HTTPError,
    Request,
    Response,
    abort,
    checked_header_value,
    checked_headers,
    chunk_bytes,
    make_response,
    pop_content_type,
)
from .offload import WorkerCrashed, default_pool, run_in_worker, submit
from .rest import RestError

__all__ = [
    "AuthRequest", "FilterRequest", "HTTPError", "Request", "Response", "RuleError", "WorkerCrashed", "abort",
    "add_route", "http_auth", "http_filter", "route", "run_in_worker",
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
    if response.stream is not None:
        return _stream(output, response.stream, content_type)
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
            _sdk_call("SendHttpStatus", output, status, response.body)
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


# The first Orthanc with OrthancPluginStartStreamAnswer.
STREAMING_SINCE = (1, 12, 6)
_buffered_warned: list[bool] = []


def _stream(output: int, chunks: Iterator[Any], content_type: str) -> _capi_rest.RouteResult:
    """Sends each chunk as the handler yields it; on an Orthanc without streams, all of them at once.

    Orthanc sends each chunk while the GIL is released (the SDK call of
    every chunk), so other threads run while a slow client reads. When
    the client goes away, the generator is closed (its ``finally`` runs)
    and nothing more is read from it.
    """
    try:
        if _capi.release < STREAMING_SINCE:
            if not _buffered_warned:
                _buffered_warned.append(True)
                _capi.log_warning(
                    f"orthanc_py: Orthanc {_capi.orthanc_version()} cannot stream answers (Orthanc 1.12.6 can): "
                    "routes that return an iterator answer once it is exhausted, all chunks in one body")
            body = b"".join(map(chunk_bytes, chunks))
            _capi_rest.check_answer_size(len(body))
            return 0, body, content_type.encode("utf-8")
        rest_output = _calls.handle_class("OrthancPluginRestOutput")(output)
        try:
            _sdk_calls.call("StartStreamAnswer", rest_output, content_type)
            for chunk in chunks:
                data = chunk_bytes(chunk)
                if data:  # nothing to send: no SDK call for an empty chunk
                    _sdk_calls.call("SendStreamChunk", rest_output, data)
        finally:
            rest_output.detach()  # Orthanc's, not ours to free
        return 0
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _sdk_call(name: str, output: int, *args: Any) -> None:
    rest_output = _calls.handle_class("OrthancPluginRestOutput")(output)
    try:
        _sdk_calls.call(name, rest_output, *args)
    finally:
        rest_output.detach()  # Orthanc's, not ours to free


def _run_offloaded(handler: Callable[..., Any], request: Request, params: dict[str, Any]) -> Any:
    """Runs in a worker process: the handler, then the value to answer with (a stream read to its end)."""
    return make_response(handler(request, **params)).buffered()


# --- routes -------------------------------------------------------------------

class _Endpoint:
    """One rule: one Orthanc callback, a handler per method."""

    def __init__(self, compiled: CompiledRule) -> None:
        self.compiled = compiled
        self.handlers: dict[str, tuple[Callable[..., Any], Offload]] = {}
        self.where = f"route {compiled.rule}"
        # The route's figures once registered with Orthanc (outside Orthanc, figures nobody reads).
        self.stats = _metrics.RouteStats(compiled.rule)

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
            answer = _answer(output, response)
            if response.status >= 500:
                self.stats.errors += 1  # the route's entry counts only the exceptions that reach it
            return answer
        except _capi.OrthancError as error:
            if error.code != _capi.ErrorCode.NetworkProtocol:
                _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
                return _failure(output, self, handler, error)
            # The client went away before the answer was sent: nothing to fix.
            # The same words and level as the loader's (send_answer() in loader.c).
            _capi.log_info(f"orthanc_py: {self.where}: the client closed the connection before its answer")
            return 0
        except Exception as error:
            _capi.report_exception(f"{self.where} ({_name(handler)}) for {method} {uri}")
            return _failure(output, self, handler, error)


def _failure(output: int, endpoint: _Endpoint, handler: Callable[..., Any] | None,
             error: Exception) -> _capi_rest.RouteResult:
    """The answer to a request whose route raised ``error`` (already logged).

    Orthanc's own 500, which names no exception, except under ``orthanc-py
    run`` (``Python.DevelopmentServer``): there the answer's JSON names the
    exception's type and the route too, for the developer at the client.
    """
    endpoint.stats.errors += 1  # the route's entry sees no exception: it was caught here
    failure = int(_capi.ErrorCode.Plugin)
    if not _runtime.settings.development_server:
        return failure
    rule = endpoint.compiled.rule
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    body = {
        "HttpError": "Internal Server Error",
        "HttpStatus": 500,
        "Message": f"{name} in the route {rule} ({_name(handler)}); its traceback is in Orthanc's log",
        "Exception": name,
        "Route": rule,
    }
    try:
        return _answer(output, Response(body, 500))
    except Exception:  # an answer sent already, or refused: Orthanc's own then
        return failure


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
            endpoint.stats = _capi_rest.register_rest_callback(compiled.regex, endpoint.handle, endpoint.where,
                                                               route=compiled.rule)
    for method in wanted:
        endpoint.handlers[method] = (handler, offload)


def route(rule: str, methods: Sequence[str] = ("GET",), offload: Offload = False) -> Callable[[F], F]:
    r"""Registers the decorated function as the handler of ``rule``; see :func:`add_route`.

    Rules are Flask-style: ``/studies/<study_id>``, ``<int:n>``, ``<float:x>``,
    ``<path:rest>``, ``<uuid:u>``; a rule holding regular-expression syntax and
    no ``<...>`` is taken as a raw Orthanc regular expression.

    The handler returns ``str``, ``bytes``, a ``dict``/``list`` (JSON), a
    :class:`Response`, ``None`` (204), or ``(body, status[, headers])``. A
    handler that returns an iterator (a generator) **streams** its chunks
    (``bytes`` or ``str``): each one is sent as it is yielded, while the GIL
    is released, and the answer ends when the iterator does. Wrap it in a
    :class:`Response` to set the content type or headers::

        @route("/studies.csv")
        def studies(request):
            def rows():
                yield "id\r\n"
                for study in rest.get_json("/studies"):
                    yield study + "\r\n"
            return Response(rows(), content_type="text/csv")

    Orthanc streams from 1.12.6 on; an older one gets every chunk in one
    buffered answer, and the log says so once. A streamed answer has no
    length: it ends when Orthanc closes the connection, so an exception
    after the first chunk ends it short (and is logged). A client that
    goes away closes the generator, whose ``finally`` runs.
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


# --- authentication ---------------------------------------------------------------------

_REDIRECTS = (301, 302, 303, 307, 308)


def http_auth(function: F) -> F:
    """Authenticates every HTTP request with the decorated ``handler(request)`` (Orthanc 1.12.9 and later).

    ``request`` is an :class:`AuthRequest` (path, client IP, headers, query
    arguments). The handler returns who the client is -- a ``dict``, a
    ``str``, ``True``... anything JSON can carry -- to let the request in:
    routes read it back as :attr:`Request.auth`. ``None`` or ``False``
    answers HTTP 401. To refuse someone known, ``abort(403)``; to send a
    browser to a login page, ``raise HTTPError(307, headers={"Location":
    "/my-app/login"})`` (a path on this Orthanc)::

        @http_auth
        def check_token(request):
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            user = TOKENS.get(token)
            if user is None:
                return None  # 401
            if request.path.startswith("/tools/") and not user["admin"]:
                abort(403)
            return user

    Orthanc takes one such handler for all its plugins, and then ignores its
    own ``RegisteredUsers`` and ``AuthenticationEnabled`` options. A handler
    that raises anything else, or returns something JSON cannot carry,
    refuses the request (HTTP 403) and the reason goes to Orthanc's log:
    a broken handler never lets a request in. It runs on Orthanc's HTTP
    threads for every request, Orthanc Explorer's included: keep it quick.

    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    :raises RuntimeError: when the script has one already (here or with
        ``orthanc.RegisterHttpAuthentication``).
    """
    if not callable(function):
        raise TypeError(f"@http_auth: the handler must be callable, not {type(function).__name__}")
    status = _hooks.AuthStatus

    def authenticate(uri: str, ip: str, headers: dict[str, str], get: dict[str, str]) -> tuple[int, bytes | None]:
        args = {k: urllib.parse.unquote_plus(v) for k, v in get.items()}
        try:
            identity = function(AuthRequest(uri, ip, Headers(headers.items()), args))
        except HTTPError as error:
            if error.status == 401:
                return int(status.Unauthorized), None
            if error.status == 403:
                return int(status.Forbidden), None
            location = next((v for n, v in error.headers.items() if n.lower() == "location"), None)
            if error.status in _REDIRECTS and location:
                return int(status.Redirect), location.encode("utf-8")
            raise _hooks.Refused(f"raised HTTPError({error.status}): abort(401), abort(403) or a redirect "
                                 "with a Location header are the answers Orthanc can give") from None
        if identity is None or identity is False:
            return int(status.Unauthorized), None
        try:
            payload = json.dumps(identity).encode("utf-8")
        except (TypeError, ValueError) as error:
            raise _hooks.Refused(f"returned an identity JSON cannot carry ({error})") from None
        return int(status.Granted), payload

    if _capi.is_attached() and _capi.release < _AUTH_SINCE:
        raise _calls.too_old("OrthancPluginRegisterHttpAuthentication", _AUTH_SINCE)
    _hooks.http_authentication.add(authenticate, "@http_auth", f"the HTTP authentication {_name(function)}")
    return function


_AUTH_SINCE = (1, 12, 9)


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
