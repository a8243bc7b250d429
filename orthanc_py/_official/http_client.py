# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTTP client with chunked transfers."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _sdk
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    Service,
    _check_callable,
    _decode,
)

__all__ = [
    "ChunkedHttpClient",
]


# --- HTTP client with chunked transfers ---------------------------------------------------------------

class _ChunkedTransfer:
    """The request body (an iterator over chunks) and the answer of one chunked HTTP call.

    Orthanc calls back during the SDK call, on the caller's thread: an
    exception of the script's is kept, the transfer stopped (error code), and
    the exception raised again to the caller once Orthanc returns.
    """

    _DONE = object()

    def __init__(self, body: Any, answer_chunk: Callable[[bytes], Any] | None) -> None:
        if body is None:
            body = []
        elif isinstance(body, (bytes, bytearray, memoryview, str)):
            body = [body]
        self.chunks = iter(body)
        self.current: Any = None
        self.answer_chunk = answer_chunk
        self.answer: list[bytes] = []
        self.headers: dict[str, str] = {}
        self.error: BaseException | None = None
        self.advance()

    def advance(self) -> int:
        try:
            chunk = next(self.chunks, self._DONE)
            if chunk is not self._DONE:
                # Orthanc takes each chunk's size as 32 bits.
                data = _calls._to_bytes(chunk, "orthanc.ChunkedHttpClient(): a chunk of the body", 0xFFFFFFFF)
                chunk = (ctypes.create_string_buffer(data, len(data)), len(data))
        except BaseException as error:  # raised again to the caller
            self.error = error
            self.current = self._DONE
            return PLUGIN_ERROR
        self.current = chunk  # kept until the next chunk: Orthanc reads it meanwhile
        return SUCCESS

    def c_callbacks(self) -> dict[str, Any]:
        def add_header(_answer: Any, key: bytes | None, value: bytes | None) -> int:
            self.headers[_decode(key)] = _decode(value)
            return SUCCESS

        def add_chunk(_answer: Any, data: int | None, size: int) -> int:
            chunk = _capi.copy_memory(data, size)
            if self.answer_chunk is None:
                self.answer.append(chunk)
                return SUCCESS
            try:
                self.answer_chunk(chunk)
            except BaseException as error:  # raised again to the caller
                self.error = error
                return PLUGIN_ERROR
            return SUCCESS

        def is_done(_request: Any) -> int:
            return int(self.current is self._DONE)

        def chunk_data(_request: Any) -> int | None:
            return None if self.current is self._DONE else ctypes.addressof(self.current[0])

        def chunk_size(_request: Any) -> int:
            return 0 if self.current is self._DONE else self.current[1]

        def next_chunk(_request: Any) -> int:
            return self.advance()

        where = "orthanc.ChunkedHttpClient()"
        return {
            "answerAddHeader": _sdk.OrthancPluginChunkedClientAnswerAddHeader(_guard(add_header, where, PLUGIN_ERROR)),
            "answerAddChunk": _sdk.OrthancPluginChunkedClientAnswerAddChunk(_guard(add_chunk, where, PLUGIN_ERROR)),
            "requestIsDone": _sdk.OrthancPluginChunkedClientRequestIsDone(_guard(is_done, where, 1)),
            "requestChunkData": _sdk.OrthancPluginChunkedClientRequestGetChunkData(_guard(chunk_data, where, 0)),
            "requestChunkSize": _sdk.OrthancPluginChunkedClientRequestGetChunkSize(_guard(chunk_size, where, 0)),
            "requestNext": _sdk.OrthancPluginChunkedClientRequestNext(_guard(next_chunk, where, PLUGIN_ERROR)),
        }


def _guard(function: Callable[..., Any], where: str, on_error: Any) -> Callable[..., Any]:
    """Like :func:`_capi.trampoline`, for a C callback that lives during one SDK call only (not kept)."""
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except BaseException:  # logged; never reaches C
            with contextlib.suppress(BaseException):  # the error code must reach Orthanc regardless
                _capi.report_exception(where)
            return on_error

    return guarded


def ChunkedHttpClient(
    method: int,
    url: str,
    headers: Any = None,
    body: Any = None,
    username: str | None = None,
    password: str | None = None,
    timeout: int = 0,
    certificateFile: str | None = None,
    certificateKeyFile: str | None = None,
    certificateKeyPassword: str | None = None,
    pkcs11: bool = False,
    *,
    answerChunk: Callable[[bytes], Any] | None = None,
) -> tuple[bytes, dict[str, str], int]:
    """Makes an HTTP call with chunked transfers: the body is sent, and the answer read, piece by piece.

    Unlike :func:`orthanc.HttpClient`, neither the body nor the answer needs
    to be in memory as a whole. Orthanc's options ``HttpProxy``,
    ``HttpTimeout``, ``HttpsVerifyPeers``, ``HttpsCACertificates`` and
    ``Pkcs11`` apply. Orthanc 1.5.6 and older, as a server, do not take
    chunked transfers.

    :param method: an :class:`orthanc.HttpMethod` value.
    :param url: the URL to call.
    :param headers: the request's headers (a ``dict`` of ``str``), or ``None``.
    :param body: the request's body: ``bytes``, any iterable of ``bytes``
        chunks (a generator streams it), or ``None``.
    :param username: for HTTP basic authentication (or ``None``).
    :param password: its password (or ``None``).
    :param timeout: in seconds (``0``: Orthanc's ``HttpTimeout``).
    :param certificateFile: the client certificate for HTTPS, PEM (or ``None``).
    :param certificateKeyFile: its key, PEM (or ``None``).
    :param certificateKeyPassword: the key's password (or ``None``).
    :param pkcs11: whether to use PKCS#11 for the client certificate.
    :param answerChunk: when given, ``answerChunk(chunk)`` receives each
        piece of the answer's body (``bytes``) as it arrives, and the
        returned body is ``b""``.
    :returns: ``(answerBody, answerHeaders, httpStatus)``: ``bytes``, a
        ``dict`` of ``str`` and an ``int``.
    :raises OrthancError: when Orthanc reports that the call failed.
    :raises TypeError: when an argument has the wrong type.
    """
    function = "ChunkedHttpClient"
    if answerChunk is not None:
        _check_callable(function, "answerChunk", answerChunk)
    transfer = _ChunkedTransfer(body, answerChunk)
    pairs = _calls._to_string_pairs(headers, f"{function}() argument 'headers'")
    status = ctypes.c_uint16()
    params = _sdk._OrthancPluginChunkedHttpClient()
    thunks = transfer.c_callbacks()  # kept alive by this local until Orthanc returns
    for field, thunk in thunks.items():
        setattr(params, field, thunk)
    params.answer = params.request = None
    params.httpStatus = ctypes.pointer(status)
    params.method = _calls._to_int(method, f"{function}() argument 'method'")
    params.url = _calls._to_required_c_string(url, f"{function}() argument 'url'")
    params.headersCount = len(pairs)
    params.headersKeys = (ctypes.c_char_p * len(pairs))(*(k for k, _ in pairs))
    params.headersValues = (ctypes.c_char_p * len(pairs))(*(v for _, v in pairs))
    params.username = _calls._to_c_string(username, f"{function}() argument 'username'")
    params.password = _calls._to_c_string(password, f"{function}() argument 'password'")
    params.timeout = _calls._to_int(timeout, f"{function}() argument 'timeout'")
    params.certificateFile = _calls._to_c_string(certificateFile, f"{function}() argument 'certificateFile'")
    params.certificateKeyFile = _calls._to_c_string(certificateKeyFile, f"{function}() argument 'certificateKeyFile'")
    params.certificateKeyPassword = _calls._to_c_string(
        certificateKeyPassword, f"{function}() argument 'certificateKeyPassword'"
    )
    params.pkcs11 = 1 if pkcs11 else 0
    try:
        _capi.invoke(Service.ChunkedHttpClient, params, f"orthanc.{function}()")
    except _capi.OrthancError:
        if transfer.error is None:
            raise
    del thunks
    if transfer.error is not None:
        raise transfer.error
    return b"".join(transfer.answer), transfer.headers, status.value
