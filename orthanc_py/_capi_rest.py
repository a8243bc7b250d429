# SPDX-License-Identifier: GPL-3.0-or-later
"""The C side of REST routes: registering them, reading Orthanc's request, answering it.

Every request to a Python route passes here, in both APIs, in one direction:
Orthanc calls the loader's C entry (``rest_call()`` in ``loader/loader.c``),
which calls the route's entry (:func:`_rest_entry`); the entry reads the
request and calls the route's handler, which returns Orthanc's error code
or ``(code, body, mime type)``, its answer; the entry returns that to the
loader, which sends the answer once the GIL is released. The Pythonic
request (:mod:`orthanc_py.web`) and the official keyword arguments
(:mod:`orthanc_py._official.rest`) are built on :class:`HttpRequestView`
and :func:`read_official_request`.
"""

from __future__ import annotations

import ctypes
import re
import threading
from typing import Any, Callable, Union

from . import _capi, _metrics, _sdk
from ._capi import Borrowed, ErrorCode, Expired, Service, copy_memory, report_exception


def _raw_layout(struct: Any, data_fields: tuple[str, ...] = ()) -> Any:
    """The same layout as a generated struct, with plain pointers.

    Pointers to Orthanc objects become ``c_void_p`` (set from an address with
    no ctypes cast) and ``data_fields`` become ``c_char_p`` (set from bytes):
    the REST answer path sets these on every request.
    """
    fields = []
    for name, c_type in struct._fields_:
        if name in data_fields:
            c_type = ctypes.c_char_p
        elif hasattr(c_type, "contents") or c_type is ctypes.c_void_p:
            c_type = ctypes.c_void_p
        fields.append((name, c_type))
    return type(struct.__name__ + "Raw", (ctypes.Structure,), {"_fields_": fields})


_AnswerBufferRaw = _raw_layout(_sdk._OrthancPluginAnswerBuffer, ("answer",))


MAX_ANSWER_SIZE = 0xFFFFFFFF
"""The largest body ``AnswerBuffer`` can send: its size is a 32-bit field."""


def check_answer_size(size: int) -> None:
    """:raises ValueError: when ``size`` bytes are more than one answer can hold (ctypes would cut the size)."""
    if size > MAX_ANSWER_SIZE:
        raise ValueError(f"the answer holds {size} bytes, more than Orthanc can send in one piece "
                         f"({MAX_ANSWER_SIZE} bytes: its size is a 32-bit field)")


def answer_buffer(output: int, body: bytes, mime_type: bytes) -> None:
    """``OrthancPluginAnswerBuffer``, sent now: answers the request of ``output``.

    A route answers by returning ``(code, body, mime type)`` instead (the
    loader sends it without the GIL); this is for answers given otherwise,
    such as the official ``RestOutput.AnswerBuffer()`` called a second time.

    :raises ValueError: when ``body`` is larger than a 32-bit size.
    """
    size = len(body)
    check_answer_size(size)
    params = _AnswerBufferRaw(output, body, size, mime_type)
    # Through the loader's invoke(), which releases the GIL: Orthanc may wait on
    # the socket here (a client that does not read its answers), and that must
    # not stop every other Python callback meanwhile.
    _capi.call(_ANSWER_BUFFER, ctypes.addressof(params), "AnswerBuffer")


_ANSWER_BUFFER = int(Service.AnswerBuffer)
HTTP_METHODS = {int(m): m.name.upper() for m in _sdk.OrthancPluginHttpMethod}


_REQUEST_OVER = (
    "this HTTP request (orthanc_py.Request) was used after its handler returned: Orthanc has freed it. "
    "Read what you need while the handler runs, or call request.detached() there: the copy it returns "
    "outlives the handler (and pickles, for another thread or process)"
)


def _method_of(r: Any) -> str:
    return HTTP_METHODS.get(r.method, "GET")


def _groups_of(r: Any) -> tuple[str, ...]:
    return tuple(_capi.c_strings(r.groups, r.groupsCount))


def _get_of(r: Any) -> list[tuple[str, str]]:
    return list(zip(_capi.c_strings(r.getKeys, r.getCount), _capi.c_strings(r.getValues, r.getCount)))


def _headers_of(r: Any) -> list[tuple[str, str]]:
    return list(zip(_capi.c_strings(r.headersKeys, r.headersCount), _capi.c_strings(r.headersValues, r.headersCount)))


def _body_of(r: Any) -> bytes:
    return copy_memory(r.body, r.bodySize)


# The first Orthanc whose requests carry the HTTP authentication callback's payload
# (fields appended to OrthancPluginHttpRequest: an older Orthanc's request ends before them).
AUTHENTICATION_PAYLOAD_SINCE = (1, 12, 9)


def _auth_payload_of(r: Any) -> bytes | None:
    if _capi.release < AUTHENTICATION_PAYLOAD_SINCE or not r.authenticationPayloadSize:
        return None
    return copy_memory(r.authenticationPayload, r.authenticationPayloadSize)


class HttpRequestView(Borrowed):
    """The request Orthanc passes to a REST callback, read lazily.

    Valid only while the callback runs: Orthanc owns the memory behind it,
    and once the callback returns every property raises :class:`ExpiredError`.
    Each property reads the C structure when first asked, so a handler that
    looks at nothing pays for nothing.

    A thread other than the callback's reads under a lease, and the end of
    the callback waits for a read in progress: Orthanc never frees the
    request under it.
    """

    __slots__ = ("_lease", "_owner", "_request")

    def __init__(self, request: Any) -> None:
        self._request = request
        self._owner = threading.get_ident()
        self._lease: threading.Lock | None = None

    def _expire(self, message: str | None = None) -> None:
        # The structure is replaced first, so that reads from now on refuse;
        # then a read another thread is making is waited for.
        self._request = Expired(message) if message else _EXPIRED_REQUEST
        lease = self._lease
        if lease is not None:
            with lease:
                pass

    def _read(self, read: Callable[[Any], Any]) -> Any:
        if self._owner == threading.get_ident():
            return read(self._request)  # the callback's thread: the request cannot end meanwhile
        with _capi.lease_of(self):
            return read(self._request)

    @property
    def method(self) -> str:
        return self._read(_method_of)  # type: ignore[no-any-return]

    @property
    def groups(self) -> tuple[str, ...]:
        return self._read(_groups_of)  # type: ignore[no-any-return]

    @property
    def get(self) -> list[tuple[str, str]]:
        return self._read(_get_of)  # type: ignore[no-any-return]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return self._read(_headers_of)  # type: ignore[no-any-return]

    @property
    def body(self) -> bytes:
        return self._read(_body_of)  # type: ignore[no-any-return]

    @property
    def auth_payload(self) -> bytes | None:
        return self._read(_auth_payload_of)  # type: ignore[no-any-return]


RestHandler = Callable[[int, str, HttpRequestView], int]


_HttpRequest = _sdk.OrthancPluginHttpRequest
_EXPIRED_REQUEST = Expired(_REQUEST_OVER)


# The request with plain addresses for its arrays: reading a field then makes an int, not a pointer object.
_HttpRequestRaw = _raw_layout(_HttpRequest)
def read_official_request(address: int, chunked: bool = False) -> dict[str, Any]:
    """The whole request at ``address`` as the official plugin's keyword arguments, read at once.

    ``method``, ``groups``, ``headers``, and ``get`` for GET or ``body`` for
    POST and PUT; with ``chunked`` (a callback of chunked uploads, whose body
    comes in pieces), ``get`` for every method and no body. Everything is
    copied: nothing of Orthanc's outlives the call.
    """
    r = _HttpRequestRaw.from_address(address)
    method = HTTP_METHODS.get(r.method, "GET")
    _texts = _capi.c_strings
    # Empty arrays are common (no groups, no query string): they cost no call.
    count = r.groupsCount
    groups = tuple(_texts(r.groups, count)) if count else ()
    count = r.headersCount
    headers = dict(zip(_texts(r.headersKeys, count), _texts(r.headersValues, count))) if count else {}
    if method == "GET" or chunked:
        count = r.getCount
        get = dict(zip(_texts(r.getKeys, count), _texts(r.getValues, count))) if count else {}
        return {"method": method, "groups": groups, "headers": headers, "get": get}
    if method == "POST" or method == "PUT":
        return {"method": method, "groups": groups, "headers": headers, "body": copy_memory(r.body, r.bodySize)}
    return {"method": method, "groups": groups, "headers": headers}


RouteResult = Union[int, tuple[int, bytes, bytes]]
"""What a route's handler returns: Orthanc's error code, or ``(code, body, mime type)``, its answer."""


def register_rest_callback(path_regex: str, handler: Callable[[int, str, Any], RouteResult], where: str,
                           eager: bool = False, route: str | None = None) -> _metrics.RouteStats:
    """Registers ``handler(output_address, uri, request)`` for URIs matching ``path_regex``.

    ``request`` is an :class:`HttpRequestView`, expired when the handler
    returns; with ``eager``, the whole request read at once as the official
    plugin's keyword arguments (:func:`read_official_request`), for callbacks
    that receive it so: no view of Orthanc's memory reaches them.

    Orthanc runs the callbacks of several requests at once (the no-lock
    registration), and Python's GIL is released whenever a handler waits.

    :param route: the route's name in the metrics (its rule); ``path_regex`` by default.
    :returns: the route's figures. Its entry counts each request and its
        time, and as an error each exception that reaches it; ``handler``
        counts in ``errors`` the requests it fails itself (an error code, a
        5xx answer): the entry does not look at results, which costs every request.
        With the metrics off (:data:`._metrics.enabled`), the entry counts
        nothing and the figures are never published.
    :raises ValueError: when ``path_regex`` holds a NUL character (C would cut it there).
    """
    regex = path_regex.encode("utf-8")
    if b"\0" in regex:
        raise ValueError(f"{where}: the path {path_regex!r} holds a NUL character, which C strings cannot hold")
    stats = _metrics.route(route or path_regex)
    entry = _rest_entry(handler, read_official_request if eager else view_of, not eager, where,
                        stats if _metrics.enabled else None)
    if _capi.register_rest(regex, entry, where, _overflow_entry):
        _overflow_routes.append((re.compile(path_regex), entry))
    return stats


def view_of(request: int) -> HttpRequestView:
    """The request Orthanc passed at address ``request``, read lazily; expire it when the callback returns."""
    return HttpRequestView(_HttpRequest.from_address(request))


def _rest_entry(handler: Callable[[int, str, Any], RouteResult], read: Callable[[int], Any], lent: bool,
                where: str, stats: _metrics.RouteStats | None) -> Callable[[int, bytes | None, int], RouteResult]:
    """The Python function the loader calls for each request to a route: the handler's result, or a failure.

    What :func:`_capi.trampoline` does (the thread's first entry, every
    exception caught and logged) is written out here, in one Python
    function: it runs on every request. With ``lent``, what ``read``
    returns is a :class:`Borrowed` view, expired when the handler returns.
    Each request is counted in ``stats`` (see :mod:`._metrics`), inline: a
    method call would cost as much as the counting. A request within the
    first bucket's bound, the usual one, skips the search for its bucket.
    Without ``stats`` (the metrics off), the entry reads no clock and counts nothing.
    """
    failure = int(ErrorCode.Plugin)
    enter = _capi.enter_thread
    thread = _capi.thread_state
    if stats is None:
        def uncounted(output: int, url: bytes | None, request: int) -> RouteResult:
            try:
                if not getattr(thread, "entered", False):
                    enter()
                argument = read(request)
                try:
                    return handler(output, url.decode("utf-8", "replace") if url else "", argument)
                finally:
                    if lent:
                        argument._expire()  # Orthanc frees the request once we return
            except BaseException:
                report_exception(where)
                return failure

        return uncounted
    clock, bucket_of, bounds, buckets = _metrics.clock, _metrics.bucket_of, _metrics.BUCKETS, stats.buckets
    first = bounds[0]

    def entry(output: int, url: bytes | None, request: int) -> RouteResult:
        started = clock()
        try:
            if not getattr(thread, "entered", False):
                enter()
            argument = read(request)
            try:
                result = handler(output, url.decode("utf-8", "replace") if url else "", argument)
            finally:
                if lent:
                    argument._expire()  # Orthanc frees the request once we return
        except BaseException:
            report_exception(where)
            stats.errors += 1
            result = failure
        seconds = clock() - started
        stats.seconds += seconds
        buckets[0 if seconds <= first else bucket_of(bounds, seconds)] += 1
        return result

    return entry


# The routes past the loader's C entries share one (see loader.c), which
# comes here: to the first of them whose regular expression matches the
# URI, as Orthanc chose among them.
_overflow_routes: list[tuple[re.Pattern[str], Callable[[int, bytes | None, int], RouteResult]]] = []


def forget_routes() -> None:
    """Orthanc restarting in the process has dropped every route: the script registers them again."""
    _overflow_routes.clear()


def _overflow_entry(output: int, url: bytes | None, request: int) -> RouteResult:
    uri = url.decode("utf-8", "replace") if url else ""
    for pattern, entry in _overflow_routes:
        if pattern.fullmatch(uri):
            return entry(output, url, request)
    _capi.log_error(f"orthanc_py: no route matches {uri!r}, though Orthanc chose one of the plugin's for it")
    return int(ErrorCode.UnknownResource)
