# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTTP messages of routes and filters: :class:`Request`, :class:`Response`, :class:`HTTPError`.

Plain Python, read from what Orthanc passed (:class:`Request` reads it
lazily) and checked before anything is sent: header names are HTTP tokens,
and no value can hold a line break (header injection).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn

from . import _capi_rest

__all__ = ["FilterRequest", "HTTPError", "Headers", "Request", "Response", "abort", "make_response"]


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


_UNREAD = object()


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
    _auth: Any = _UNREAD

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
    def auth(self) -> Any:
        """Who the :func:`~orthanc_py.http_auth` handler let in: what it returned for this request.

        ``None`` when the script has no such handler, or on an Orthanc older
        than 1.12.9 (which hands no identity to routes). A payload that is
        not JSON (one set through ``orthanc.RegisterHttpAuthentication``)
        comes as ``bytes``.
        """
        if self._auth is _UNREAD:
            payload = self._from_view().auth_payload
            try:
                self._auth = None if payload is None else json.loads(payload)
            except ValueError:
                self._auth = payload
        return self._auth

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
        copy._auth = self.auth
        return copy

    def __getstate__(self) -> dict[str, Any]:
        state = self.detached().__dict__.copy()
        state["_view"] = None
        return state

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


class Response:
    """An HTTP answer with a status, headers and a content type of one's choosing.

    :param body: ``str`` (sent as UTF-8), ``bytes``, a ``dict``/``list`` sent as JSON, or an
        iterator (a generator...) of ``bytes``/``str`` chunks, streamed as they come (see
        :func:`orthanc_py.route`).
    :param status: the HTTP status (default 200; a streamed answer is always a 200).
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

    stream: Iterator[bytes | str] | None
    """The chunks of a streamed answer (``body`` is then empty), else ``None``."""

    def __init__(self, body: str | bytes | dict[str, Any] | list[Any] | Iterator[bytes | str] | None = b"",
                 status: int = 200, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
                 content_type: str | None = None) -> None:
        self.stream = None
        if isinstance(body, Iterator):
            if status != 200:
                raise ValueError(f"a streamed answer is sent with the status 200, not {status}: "
                                 "answer other statuses with a body that is not an iterator")
            self.stream = body
            data, default_type = b"", "application/octet-stream"
        elif isinstance(body, (dict, list)):
            data, default_type = json.dumps(body).encode("utf-8"), "application/json"
        elif isinstance(body, str):
            data, default_type = body.encode("utf-8"), "text/plain; charset=utf-8"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data, default_type = bytes(body), "application/octet-stream"
        elif body is None:
            data, default_type = b"", "application/octet-stream"
        else:
            raise TypeError(f"Response body must be str, bytes, dict, list, an iterator of chunks or None, "
                            f"not {type(body).__name__}")
        if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
            raise ValueError(f"Response status must be an HTTP status between 200 and 599, not {status!r}")
        self.body = data
        self.status = status
        self.headers = checked_headers(headers or {})
        given_type = pop_content_type(self.headers)
        self.content_type = checked_header_value("Content-Type", content_type or given_type or default_type)

    def __repr__(self) -> str:
        if self.stream is not None:
            return f"<Response {self.status} {self.content_type} streamed>"
        return f"<Response {self.status} {self.content_type} {len(self.body)} bytes>"

    def buffered(self) -> Response:
        """This answer with its stream read to the end and joined into ``body`` (itself if not streamed)."""
        if self.stream is not None:
            self.body = b"".join(map(chunk_bytes, self.stream))
            self.stream = None
        return self


def chunk_bytes(chunk: Any) -> bytes:
    """One chunk of a streamed answer as bytes: ``str`` is sent as UTF-8."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"a streamed answer's chunks must be bytes or str, not {type(chunk).__name__}")


class HTTPError(Exception):
    """Raised to answer an HTTP error; :func:`abort` raises it.

    :ivar status: the HTTP status to answer.
    :ivar message: the message of the JSON body, or ``None``.
    :ivar headers: headers of the answer (``Allow`` for a 405...).
    """

    def __init__(self, status: int, message: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> Response:
        """The answer: ``status``, with the JSON body ``{"status": ..., "message": ...}``."""
        body = {"status": self.status, "message": self.message} if self.message else {"status": self.status}
        return Response(body, self.status, self.headers)


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


def checked_header_value(name: str, value: Any) -> str:
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


def checked_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, str]:
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
        checked[name] = checked_header_value(name, value)
    return checked


def pop_content_type(headers: dict[str, str]) -> str | None:
    """Removes every ``Content-Type`` of ``headers``, whatever its case; returns the last one."""
    found = None
    for name in [n for n in headers if n.lower() == "content-type"]:
        found = headers.pop(name)
    return found


class AuthRequest:
    """What an :func:`~orthanc_py.http_auth` handler knows of a request (Orthanc gives no method)."""

    def __init__(self, path: str, ip: str, headers: Headers, args: dict[str, str]) -> None:
        self.path = path
        """The path asked for (any route: Orthanc's own and the script's), without the query string."""
        self.ip = ip
        """The client's IP address."""
        self.headers = headers
        """The HTTP headers (names match without regard to case)."""
        self.args = args
        """The query arguments, decoded."""

    def __repr__(self) -> str:
        return f"<AuthRequest {self.path} from {self.ip}>"


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
