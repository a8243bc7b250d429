# SPDX-License-Identifier: GPL-3.0-or-later
"""The C side of REST routes: registering them, reading Orthanc's request, sending the answer.

Every request to a Python route passes here, in both APIs: the loader's C
entry point (``rest_call()`` in ``loader/loader.c``) calls the function
:func:`_rest_entry` makes, which reads the request and runs the route's
handler; the handler's answer goes back to the loader, which sends it once
the GIL is released. The Pythonic request (:mod:`orthanc_py.web`) and the
official keyword arguments (:mod:`orthanc_py._official.rest`) are built on
:class:`HttpRequestView` and :func:`read_official_request`.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any, Callable

from . import _capi, _sdk
from ._capi import (
    Borrowed,
    ErrorCode,
    OrthancError,
    Service,
    _Context,
    _enter_thread,
    _Expired,
    _require,
    copy_memory,
    error_description,
    invoke,
    keep_alive,
    report_exception,
)

_thread = _capi._thread  # what _enter_thread() learnt of this thread


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


def answer_buffer(output: int, body: bytes, mime_type: bytes) -> None:
    """``OrthancPluginAnswerBuffer``: answers the request of ``output``.

    The running REST callback's own first answer is kept, and the loader sends
    it once the callback has returned and let go of the GIL (see
    ``rest_call()`` in ``loader.c``); any other call on ``output`` first sends
    it (:func:`flush_answer`), so Orthanc sees the calls in the script's order.

    :raises ValueError: when ``body`` is larger than a 32-bit size (ctypes would cut the size).
    """
    context = _capi._context
    if context is None or _capi._closing:
        context = _require("AnswerBuffer")
    size = len(body)
    if size > MAX_ANSWER_SIZE:
        raise ValueError(f"the answer holds {size} bytes, more than Orthanc can send in one piece "
                         f"({MAX_ANSWER_SIZE} bytes: its size is a 32-bit field)")
    box = _nesting.box
    if box is not None and box[0] == output:
        if box[1] is None:
            box[1] = (body, mime_type)
            return
        flush_answer(output)
    _send_answer(context, output, body, size, mime_type)


def flush_answer(output: int) -> None:
    """Sends now the answer the running callback left to the loader, if it is ``output``'s.

    Called before any other call on ``output``: a header set, or a second
    answer, after it must reach Orthanc after it, as the script wrote them.
    """
    box = _nesting.box
    if box is not None and box[0] == output and box[1] is not None:
        body, mime_type = box[1]
        box[0], box[1] = 0, None
        _send_answer(_capi._context or _require("AnswerBuffer"), output, body, len(body), mime_type)


def _send_answer(context: _Context, output: int, body: bytes, size: int, mime_type: bytes) -> None:
    params = _AnswerBufferRaw(output, body, size, mime_type)
    # A CFUNCTYPE call releases the GIL: Orthanc may wait on the socket here
    # (a client that does not read its answers), and that must not stop
    # every other Python callback meanwhile.
    code = context.invoke(context.address, _ANSWER_BUFFER, ctypes.addressof(params))
    if code:
        raise OrthancError(code, error_description(code))


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


_VIEW_LEASES = threading.Lock()


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
        self._request = _Expired(message) if message else _EXPIRED_REQUEST
        lease = self._lease
        if lease is not None:
            with lease:
                pass

    def _read(self, read: Callable[[Any], Any]) -> Any:
        if self._owner == threading.get_ident():
            return read(self._request)  # the callback's thread: the request cannot end meanwhile
        lease = self._lease
        if lease is None:
            with _VIEW_LEASES:
                lease = self._lease
                if lease is None:
                    lease = self._lease = threading.Lock()
        with lease:
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


RestHandler = Callable[[int, str, HttpRequestView], int]


class _Nesting(threading.local):
    # [output, (body, mime type) or None]: the innermost callback's answer,
    # left to the loader to send (see answer_buffer()); None outside one.
    box: list[Any] | None = None


_nesting = _Nesting()
_RawRestCallback = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
_HttpRequest = _sdk.OrthancPluginHttpRequest
_EXPIRED_REQUEST = _Expired(_REQUEST_OVER)


# The request with plain addresses for its arrays: reading a field then makes an int, not a pointer object.
_HttpRequestRaw = _raw_layout(_HttpRequest)
# A view of any array of C strings Orthanc passes (never read past the count it gives).
_CStringArray = ctypes.c_char_p * (1 << 24)


def _texts(address: int | None, count: int) -> list[str]:
    """``count`` C strings from an array at ``address``, decoded (NULL items as ``""``)."""
    if not address:
        return []
    items: list[Any] = _CStringArray.from_address(address)[:count]
    try:
        return [text.decode("utf-8", "replace") for text in items]
    except AttributeError:  # a NULL item (None), which Orthanc does not send
        return [(text or b"").decode("utf-8", "replace") for text in items]


def read_official_request(address: int) -> dict[str, Any]:
    """The whole request at ``address`` as the official plugin's keyword arguments, read at once.

    ``method``, ``groups``, ``headers``, and ``get`` for GET or ``body`` for
    POST and PUT. Everything is copied: nothing of Orthanc's outlives the call.
    """
    r = _HttpRequestRaw.from_address(address)
    method = HTTP_METHODS.get(r.method, "GET")
    # Empty arrays are common (no groups, no query string): they cost no call.
    count = r.groupsCount
    groups = tuple(_texts(r.groups, count)) if count else ()
    count = r.headersCount
    headers = dict(zip(_texts(r.headersKeys, count), _texts(r.headersValues, count))) if count else {}
    if method == "GET":
        count = r.getCount
        get = dict(zip(_texts(r.getKeys, count), _texts(r.getValues, count))) if count else {}
        return {"method": method, "groups": groups, "headers": headers, "get": get}
    if method == "POST" or method == "PUT":
        return {"method": method, "groups": groups, "headers": headers, "body": copy_memory(r.body, r.bodySize)}
    return {"method": method, "groups": groups, "headers": headers}


def register_eager_rest_callback(path_regex: str, handler: Callable[[int, str, dict[str, Any]], int],
                                 where: str) -> None:
    """Registers ``handler(output_address, uri, request)``, ``request`` read at once (:func:`read_official_request`).

    For the official plugin's callbacks, which receive the whole request as
    keyword arguments: no view of Orthanc's memory reaches the handler, so
    none has to be expired.

    :raises ValueError: when ``path_regex`` holds a NUL character (C would cut it there).
    """
    _register_raw_rest_callback(_rest_regex(path_regex, where), handler, read_official_request, False, where)


def register_rest_callback(path_regex: str, handler: RestHandler, where: str) -> None:
    """Registers ``handler(output_address, uri, request)`` for URIs matching ``path_regex``.

    ``request`` is an :class:`HttpRequestView`, expired when the handler
    returns. Uses the no-lock registration: Orthanc then runs callbacks of
    several requests at once, and Python's GIL is released whenever the
    handler waits (on the REST API, on I/O, on a worker process).

    :raises ValueError: when ``path_regex`` holds a NUL character (C would cut it there).
    """
    _register_raw_rest_callback(_rest_regex(path_regex, where), handler, _view_of, True, where)


def _view_of(request: int) -> HttpRequestView:
    return HttpRequestView(_HttpRequest.from_address(request))


def _rest_regex(path_regex: str, where: str) -> bytes:
    regex = path_regex.encode("utf-8")
    if b"\0" in regex:
        raise ValueError(f"{where}: the path {path_regex!r} holds a NUL character, which C strings cannot hold")
    return regex


def _register_raw_rest_callback(regex: bytes, handler: Callable[[int, str, Any], int], read: Callable[[int], Any],
                                lent: bool, where: str) -> None:
    """Registers the C callback of a REST route: ``handler(output_address, uri, read(request_address))``.

    Through the loader when it has a slot left (``orthanc_py_register_rest``:
    the GIL taken once per request, the answer sent without it), else
    through ctypes. With ``lent``, what ``read`` returns is a
    :class:`Borrowed` view, expired when the handler returns.
    """
    register = _capi._register_rest
    if register is not None:
        callback = _rest_entry(handler, read, lent, where, through_loader=True)
        if register(regex, callback, where.encode("utf-8", "replace").replace(b"\0", b"?")) == 0:
            return
    # Same ABI as OrthancPluginRestCallback, with the pointers as plain
    # addresses: ctypes then builds no pointer objects on each request.
    entry = _rest_entry(handler, read, lent, where, through_loader=False)
    failure = int(ErrorCode.Plugin)

    def on_python_stack(output: int, url: bytes | None, request: int) -> int:
        try:
            return _capi.call_on_python_stack(entry, output, url, request)  # type: ignore[no-any-return]
        except BaseException:  # the entry catches its own: this is the switch failing
            with contextlib.suppress(BaseException):
                report_exception(where)
            return failure

    c_callback = keep_alive(_RawRestCallback(on_python_stack))
    params = keep_alive(_sdk._OrthancPluginRestCallback())
    params.pathRegularExpression = regex
    params.callback = ctypes.cast(c_callback, _sdk.OrthancPluginRestCallback)
    invoke(Service.RegisterRestCallbackNoLock, params)


def _rest_entry(handler: Callable[[int, str, Any], int], read: Callable[[int], Any], lent: bool, where: str,
                through_loader: bool) -> Callable[[int, bytes | None, int], Any]:
    """The Python function Orthanc's thread enters for each request to a route.

    What :func:`trampoline` does (the thread's first entry, every exception
    caught and logged) is written out here, in one Python function: it runs
    on every request. ``through_loader``: the loader calls it on the
    thread's Python stack and sends the answer it returns, ``(code, body,
    mime type)``, after it (see :func:`answer_buffer`); else it returns the code.
    """
    failure = int(ErrorCode.Plugin)
    state = _nesting

    def callback(output: int, url: bytes | None, request: int) -> Any:
        box = None
        try:
            if not getattr(_thread, "entered", False):
                _enter_thread()
            uri = url.decode("utf-8", "replace") if url else ""
            outer = state.box
            if through_loader:
                box = state.box = [output, None]
            try:
                argument = read(request)
                try:
                    code = handler(output, uri, argument)
                finally:
                    if lent:
                        argument._expire()  # Orthanc frees the request once we return
            finally:
                state.box = outer
            if box is None or box[1] is None:
                return code
            return (code, *box[1])
        except BaseException:
            with contextlib.suppress(BaseException):  # the error code must reach Orthanc regardless
                report_exception(where)
            # An answer already given stays given, as if it had been sent at once.
            return failure if box is None or box[1] is None else (failure, *box[1])

    return callback
