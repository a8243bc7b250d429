# SPDX-License-Identifier: GPL-3.0-or-later
"""REST and answers: :func:`RegisterRestCallback` and :class:`RestOutput`, the answer to a request.

The one answer that a callback gives with ``output.AnswerBuffer()`` on its
own thread is kept on the ``RestOutput`` and returned to the loader with the
callback's code (see :mod:`orthanc_py._capi_rest`), which sends it without
the GIL; any other call on the object first sends it, so that Orthanc sees
the calls in the script's order.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from .. import _calls, _capi, _capi_rest, _runtime, _sdk_calls
from .._calls import Handle
from .registration import _name, _SdkMethod

__all__ = [
    "RegisterRestCallback",
    "RestOutput",
]


class RestOutput(Handle):
    """The answer to an HTTP request, given to a REST callback (valid during the call only)."""

    c_type_name = "OrthancPluginRestOutput"
    after_callback = ("answer the request before the callback returns (output.AnswerBuffer(), "
                      "output.SendHttpStatusCode()...); for work that takes longer, answer first and then start it")

    answered = False
    _status = 0  # the status sent by SendHttpStatus() or SendHttpStatusCode(): a 5xx is a route's error
    _defers = False  # AnswerBuffer() may leave its answer to the loader (the REST callback's own object)
    _deferred: tuple[bytes, bytes] | None = None  # that answer, (body, MIME type), not sent yet

    def _send_deferred(self) -> None:
        """Sends now the answer ``AnswerBuffer()`` left to the loader, if any: a later call must follow it."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            _capi_rest.answer_buffer(self.address, *deferred)

    def _take_deferred(self) -> tuple[bytes, bytes] | None:
        """The answer left to the loader, which sends it once the callback has returned; ``None`` if none."""
        deferred, self._deferred = self._deferred, None
        return deferred

    def AnswerBuffer(self, answer: bytes | str, mimeType: str) -> None:
        """Answers the request with ``answer`` (bytes, or str sent as UTF-8) and its MIME type."""
        if isinstance(answer, str):
            answer = answer.encode("utf-8")
        elif not isinstance(answer, bytes):
            answer = _calls._to_bytes(answer, "AnswerBuffer() argument 'answer'", _capi_rest.MAX_ANSWER_SIZE)
        # The same few types on every request: each is checked once.
        mime = _MIME_TYPES.get(mimeType) if type(mimeType) is str else None
        if mime is None:
            if not isinstance(mimeType, str):
                raise TypeError(f"AnswerBuffer() argument 'mimeType' must be str, not {type(mimeType).__name__}")
            mime = _calls._to_header_text(mimeType, "AnswerBuffer() argument 'mimeType'") or b""
            if len(_MIME_TYPES) < 64:
                _MIME_TYPES[mimeType] = mime
        if self._defers and self._deferred is None and self._address and self._owner == _get_ident():
            # The callback's own first answer, on its thread: the loader sends it.
            _capi_rest.check_answer_size(len(answer))
            self._deferred = (answer, mime)
            self.answered = True
            return
        try:
            self._send_deferred()
            if self._owner == _get_ident():
                _capi_rest.answer_buffer(self.address, answer, mime)
            else:
                lease = self._take_lease()
                try:
                    _capi_rest.answer_buffer(self.address, answer, mime)
                finally:
                    if lease is not None:
                        lease.release()
        except _capi.OrthancError as error:
            log_ignored_error("AnswerBuffer", error)
        self.answered = True


    def SendHttpStatus(self, status: int, body: str, bodySize: int | None = None) -> None:
        """Answers with the HTTP status ``status`` (an error status, 3xx to 5xx) and ``body`` (``str``, or ``bytes``).

        ``SendHttpStatus(status, body)``, as the official plugin 5.0 and later
        take it, sends the whole body; ``SendHttpStatus(status, body,
        bodySize)``, as 4.0 takes it (C's text and its size), sends its first
        ``bodySize`` bytes in UTF-8.
        """
        data: object = body.encode("utf-8") if isinstance(body, str) else body
        if bodySize is not None and isinstance(data, (bytes, bytearray, memoryview)):
            size = _calls.integer(bodySize, "SendHttpStatus() argument 'bodySize'", 0, 0xFFFFFFFF, "uint32_t")
            if size > len(data):
                raise _calls.size_error("SendHttpStatus()", "bodySize", size, "body", bytes(data))
            data = bytes(data[:size])
        try:
            self._send_deferred()
            _send_http_status()(self, status, data)
            self._status = status
        except _capi.OrthancError as error:
            if isinstance(error, _calls.SdkVersionError):
                raise
            log_ignored_error("SendHttpStatus", error)
        self.answered = True


def _send_http_status() -> Any:
    return _sdk_calls.sdk_function("OrthancPluginSendHttpStatus")


_MIME_TYPES: dict[str, bytes] = {}


def log_ignored_error(method: str, error: _capi.OrthancError) -> None:
    """Logs Orthanc's refusal of a ``RestOutput`` call whose SDK function returns nothing, instead of raising.

    Such functions (``OrthancPluginAnswerBuffer``, ``OrthancPluginSetHttpHeader``...)
    cannot report an error in C, so scripts written for the official plugin
    never see one: a header set after the answer is simply lost there. The
    script goes on here too, and the log says what was lost.
    """
    _capi.log_warning(f"orthanc_py: RestOutput.{method}() was refused by Orthanc: {error.description} "
                      f"(error {error.code}); the script goes on, as with the official plugin "
                      "(a header or a second answer after the answer is not sent)")


def RegisterRestCallback(pathRegularExpression: str, callback: Callable[..., None]) -> None:
    """Registers ``callback(output, uri, **request)`` for the URIs matching a regular expression.

    ``request`` holds ``method`` (``"GET"``, ``"POST"``...), ``groups`` (the
    regular expression's groups), ``headers`` (lower-case names) and, for GET,
    ``get`` (query arguments, still percent-encoded as Orthanc gives them) or,
    for POST and PUT, ``body`` (bytes) — the keys the official plugin passes. The callback
    answers through ``output`` (:class:`RestOutput`). When it raises, or
    returns without answering, the client gets HTTP 500 and the reason goes to
    Orthanc's log.
    """
    if not isinstance(pathRegularExpression, str):
        raise TypeError(
            "RegisterRestCallback() argument 'pathRegularExpression' must be str, "
            f"not {type(pathRegularExpression).__name__}"
        )
    if not callable(callback):
        raise TypeError(f"RegisterRestCallback() argument 'callback' must be callable, not {type(callback).__name__}")
    if not _capi.is_attached():
        return  # a worker process re-running the script: nothing to serve
    _runtime.require_setup("orthanc.RegisterRestCallback()")
    where = f"REST callback {_name(callback)} for {pathRegularExpression}"

    lend = _lend_output
    success, failure = int(_capi.ErrorCode.Success), int(_capi.ErrorCode.Plugin)

    # On every request's path: the request comes read in one pass (plain Python
    # data, nothing to expire); only the answer object is Orthanc's.
    def handle(output_address: int, uri: str, kwargs: dict[str, Any]) -> _capi_rest.RouteResult:
        output = lend(output_address)
        try:
            callback(output, uri, **kwargs)
            code = success
        except BaseException:
            _capi.report_exception(where)
            code = failure
        deferred = output._take_deferred()
        output._expire()  # Orthanc's answer object is gone once we return
        if code == success and not output.answered:
            _capi.log_error(
                f"orthanc_py: {where} returned without answering {kwargs['method']} {uri}; the client gets "
                "HTTP 500 (answer with output.AnswerBuffer(), output.SendHttpStatusCode()...)"
            )
            code = failure
        # The route's entry counts only the exceptions that reach it: failures and
        # 5xx answers are counted here. An answer left to the loader is the last
        # one given (any later call sends it first): its status is 200.
        if deferred is None:
            if code != success or output._status >= 500:
                stats.errors += 1
            return code
        if code != success:
            stats.errors += 1
        # An answer given before a failure stays given, as if it had been sent at once.
        return code, *deferred

    stats = _capi_rest.register_rest_callback(pathRegularExpression, handle, where, eager=True)


class _LentRestOutput(RestOutput):
    """The :class:`RestOutput` a REST callback receives: the same class to the script, made faster.

    ``RestOutput``'s methods are method descriptors, as in a C extension (the
    official plugin's introspection sample lists them as such); each call
    through one pays a Python-level ``__get__``. Here they are plain
    functions, bound by Python itself, and the object is made without
    running ``__init__``: both are on every request's path.
    """

    __qualname__ = "RestOutput"
    _owned = False
    _defers = True


_LentRestOutput.__name__ = "RestOutput"
_LentRestOutput.__module__ = "orthanc"


def flatten_lent_output() -> None:
    """Copies ``RestOutput``'s methods onto the lent class as plain functions.

    Called once the ``orthanc`` module is assembled: the methods built from
    the SDK are put on ``RestOutput`` after this module is imported.
    """
    for name, member in list(vars(RestOutput).items()):
        if isinstance(member, _SdkMethod):
            setattr(_LentRestOutput, name, member.function)


_new_output = object.__new__
_get_ident = threading.get_ident


def _lend_output(address: int) -> RestOutput:
    """A :class:`RestOutput` lent for the running callback (as ``RestOutput.lent``, without ``__init__``)."""
    output: RestOutput = _new_output(_LentRestOutput)
    output._address = address
    output._owner = _get_ident()
    return output
