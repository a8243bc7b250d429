# SPDX-License-Identifier: GPL-3.0-or-later
"""WebDAV collections and REST callbacks with chunked uploads."""

from __future__ import annotations

import ctypes
import datetime
import itertools
import threading
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _capi_rest, _runtime, _sdk
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    ErrorCode,
    Service,
    _check_callable,
    _decode,
    _is_int,
    _name,
)
from .rest import RestOutput

__all__ = [
    "RegisterChunkedRestCallback",
    "RegisterWebDavCollection",
]


# --- REST callbacks with chunked uploads -----------------------------------------------------------

ChunkedRestHandler = Callable[..., Any]
ChunkedReaderFactory = Callable[..., Any]

# The SDK's callback types, with every Orthanc object as a plain address:
# ctypes then builds no pointer objects, and the reader "pointer" is our ID.
_RawChunkedFactory = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
_RawChunkedAddChunk = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)
_RawChunkedExecute = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
_RawChunkedFinalize = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _ChunkedUpload:
    """One POST or PUT being received: the script's reader, until Orthanc finalizes it."""

    __slots__ = ("failed", "method", "reader", "uri", "where")

    def __init__(self, reader: Any, where: str, method: str, uri: str) -> None:
        self.reader = reader
        self.where = where
        self.method = method
        self.uri = uri
        self.failed = False  # AddChunk() raised: the body is incomplete


# Uploads in progress, by the reader "pointer" given to Orthanc: a counter, never 0.
_uploads: dict[int, _ChunkedUpload] = {}
_upload_ids = itertools.count(1)
_uploads_lock = threading.Lock()


def _answered(output: Any, where: str, method: str, uri: str) -> int:
    _capi.expire(output)  # lent by Orthanc for the call only
    if output.answered:
        return SUCCESS
    _capi.log_error(
        f"orthanc_py: {where} returned without answering {method} {uri}; the client gets HTTP 500 "
        "(answer with output.AnswerBuffer(), output.SendHttpStatusCode()...)"
    )
    return PLUGIN_ERROR


def RegisterChunkedRestCallback(pathRegularExpression: str, getHandler: ChunkedRestHandler | None = None,
                                postFactory: ChunkedReaderFactory | None = None,
                                deleteHandler: ChunkedRestHandler | None = None,
                                putFactory: ChunkedReaderFactory | None = None) -> None:
    """Serves the URIs matching a regular expression, receiving POST and PUT bodies chunk by chunk.

    Unlike :func:`orthanc.RegisterRestCallback`, the body of an upload is
    never in memory as a whole: it streams into a *reader* object as the
    client sends it, which suits large uploads (``Transfer-Encoding:
    chunked`` or not).

    - ``getHandler(output, uri, **request)`` and ``deleteHandler(output,
      uri, **request)`` answer GET and DELETE requests exactly like the
      handler of :func:`orthanc.RegisterRestCallback`: ``request`` holds
      ``method``, ``groups``, ``get`` and ``headers``, and the handler
      answers through ``output`` (:class:`orthanc.RestOutput`);
    - ``postFactory(uri, **request)`` and ``putFactory(uri, **request)``
      are called when a POST or PUT request arrives, with the same
      ``request`` (no ``body``). Each returns a new reader, an object with
      the methods ``AddChunk(data)``, called with each piece of the body
      (``bytes``) in order, and ``Execute(output)``, called once the whole
      body is received, which answers through ``output``. When the reader
      also has a ``Finalize()`` method, it is called last, once Orthanc
      drops the request: after ``Execute``, or instead of it when the
      client went away or something failed.

    Orthanc 1.10 hands a chunked body (``Transfer-Encoding: chunked``) over
    in pieces of up to 1 MiB, whatever the client's chunks, and a body sent
    with ``Content-Length`` in one piece.

    A method without a handler answers HTTP 405. When a handler, factory or
    reader method raises (or the handler or ``Execute`` returns without
    answering), the reason goes to Orthanc's log and the client gets HTTP
    500; once ``AddChunk`` has raised, ``Execute`` is not called. Orthanc
    runs these callbacks on its HTTP threads, several requests at once; each
    reader sees the calls of one request only, one at a time.

    Unlike :func:`orthanc.RegisterRestCallback`, Orthanc gives a chunked
    route no request body: register POST and PUT through the factories.

    :param pathRegularExpression: the URIs to serve (Perl syntax, case
        sensitive, groups allowed), e.g. ``"/upload/(.*)"``.
    :param getHandler: the GET handler, or ``None``.
    :param postFactory: the factory of POST readers, or ``None``.
    :param deleteHandler: the DELETE handler, or ``None``.
    :param putFactory: the factory of PUT readers, or ``None``.
    :raises TypeError: when ``pathRegularExpression`` is not a ``str`` or a
        handler is neither callable nor ``None``.
    """
    function = "RegisterChunkedRestCallback"
    if not isinstance(pathRegularExpression, str):
        raise TypeError(f"{function}() argument 'pathRegularExpression' must be str, "
                        f"not {type(pathRegularExpression).__name__}")
    handlers = {"getHandler": getHandler, "postFactory": postFactory, "deleteHandler": deleteHandler,
                "putFactory": putFactory}
    for argument, value in handlers.items():
        if value is not None:
            _check_callable(function, argument, value)
    if not _capi.is_attached():
        return  # a worker process re-running the script: nothing to serve
    _runtime.require_setup(f"orthanc.{function}()")

    def rest_handler(handler: ChunkedRestHandler | None) -> Any:
        if handler is None:
            return _sdk.OrthancPluginRestCallback()  # NULL: Orthanc answers HTTP 405
        where = f"the chunked REST callback {_name(handler)} for {pathRegularExpression}"

        def c_handler(output_address: int | None, url: bytes | None, request_address: int | None) -> int:
            uri = _decode(url)
            kwargs = _capi_rest.read_official_request(request_address or 0, chunked=True)
            output = RestOutput.lent(output_address or 0)
            try:
                handler(output, uri, **kwargs)
            except BaseException:  # logged; the client gets HTTP 500
                _capi.expire(output)
                _capi.report_exception(where)
                return PLUGIN_ERROR
            return _answered(output, where, kwargs["method"], uri)

        thunk = _capi.trampoline(_RawChunkedFactory, where)(c_handler)
        return ctypes.cast(thunk, _sdk.OrthancPluginRestCallback)

    def reader_factory(factory: ChunkedReaderFactory | None) -> Any:
        if factory is None:
            return _sdk.OrthancPluginServerChunkedRequestReaderFactory()  # NULL: HTTP 405
        where = f"the chunked-upload reader factory {_name(factory)} for {pathRegularExpression}"

        def c_factory(target: int | None, url: bytes | None, request_address: int | None) -> int:
            uri = _decode(url)
            request = _capi_rest.read_official_request(request_address or 0, chunked=True)
            reader = factory(uri, **request)
            for method in ("AddChunk", "Execute"):
                if not callable(getattr(reader, method, None)):
                    _capi.log_error(
                        f"orthanc_py: {where} returned {type(reader).__name__}, which has no {method}() method; "
                        "the client gets HTTP 500 (return a reader with AddChunk(data) and Execute(output))"
                    )
                    return PLUGIN_ERROR
            upload = _ChunkedUpload(reader, f"the chunked-upload reader {type(reader).__qualname__} for "
                                            f"{request['method']} {uri}", request["method"], uri)
            with _uploads_lock:
                driver = next(_upload_ids)
                _uploads[driver] = upload
            ctypes.c_void_p.from_address(target or 0).value = driver
            return SUCCESS

        thunk = _capi.trampoline(_RawChunkedFactory, where)(c_factory)
        return ctypes.cast(thunk, _sdk.OrthancPluginServerChunkedRequestReaderFactory)

    def upload_of(driver: int | None) -> _ChunkedUpload | None:
        with _uploads_lock:
            upload = _uploads.get(driver or 0)
        if upload is None:
            _capi.log_error(f"orthanc_py: unknown chunked-upload reader {driver}")
        return upload

    def c_add_chunk(driver: int | None, data: int | None, size: int) -> int:
        upload = upload_of(driver)
        if upload is None or upload.failed:
            return PLUGIN_ERROR
        try:
            upload.reader.AddChunk(_capi.copy_memory(data, size))
        except BaseException:  # logged; the upload fails (HTTP 500)
            # Orthanc 1.10.1 goes on to execute() whatever addChunk() returns:
            # remembered, so that Execute() never sees a partial body.
            upload.failed = True
            _capi.report_exception(upload.where)
            return PLUGIN_ERROR
        return SUCCESS

    def c_execute(driver: int | None, output_address: int | None) -> int:
        upload = upload_of(driver)
        if upload is None:
            return PLUGIN_ERROR
        if upload.failed:
            _capi.log_error(f"orthanc_py: {upload.where}: AddChunk() failed, so Execute() is not called; "
                            f"the client gets HTTP 500")
            return PLUGIN_ERROR

        output = RestOutput.lent(output_address or 0)
        try:
            upload.reader.Execute(output)
        except BaseException:  # logged; the client gets HTTP 500
            _capi.expire(output)
            _capi.report_exception(upload.where)
            return PLUGIN_ERROR
        return _answered(output, upload.where, upload.method, upload.uri)

    def c_finalize(driver: int | None) -> None:
        with _uploads_lock:
            upload = _uploads.pop(driver or 0, None)
        finalize = getattr(upload.reader, "Finalize", None) if upload is not None else None
        if upload is not None and callable(finalize):
            try:
                finalize()
            except BaseException:  # logged; nothing to report to Orthanc
                _capi.report_exception(upload.where)

    where = f"the chunked REST callbacks for {pathRegularExpression}"
    params = _sdk._OrthancPluginChunkedRestCallback()
    params.pathRegularExpression = _calls._to_required_c_string(
        pathRegularExpression, f"{function}() argument 'pathRegularExpression'")
    params.getHandler = rest_handler(getHandler)
    params.postHandler = reader_factory(postFactory)
    params.deleteHandler = rest_handler(deleteHandler)
    params.putHandler = reader_factory(putFactory)
    params.addChunk = ctypes.cast(_capi.trampoline(_RawChunkedAddChunk, where)(c_add_chunk),
                                  _sdk.OrthancPluginServerChunkedRequestReaderAddChunk)
    params.execute = ctypes.cast(_capi.trampoline(_RawChunkedExecute, where)(c_execute),
                                 _sdk.OrthancPluginServerChunkedRequestReaderExecute)
    params.finalize = ctypes.cast(
        _capi.trampoline(_RawChunkedFinalize, where, None)(c_finalize),  # type: ignore[arg-type]
        _sdk.OrthancPluginServerChunkedRequestReaderFinalize,
    )
    _capi.invoke(Service.RegisterChunkedRestCallback, _capi.keep_alive(params), f"orthanc.{function}()")


# --- WebDAV collections ---------------------------------------------------------------------------

WebDavPath = list[str]


def _webdav_time(value: Any, what: str) -> bytes:
    """A date and time as Orthanc's WebDAV wants it: ``YYYYMMDDTHHMMSS`` in UTC."""
    if value is None:
        value = datetime.datetime.now(datetime.timezone.utc)
    if isinstance(value, datetime.datetime):
        stamp: datetime.datetime = value
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(datetime.timezone.utc)
        return stamp.strftime("%Y%m%dT%H%M%S").encode("ascii")  # WebDAV clients show whole seconds
    if isinstance(value, str):
        return bytes(value.encode("utf-8"))
    raise TypeError(f"{what}: the date and time must be a datetime.datetime, a str such as "
                    f"'20220314T153000' (UTC) or None, not {type(value).__name__}")


def _webdav_mime(value: Any, what: str) -> bytes | None:
    if value is None:
        return None  # Orthanc guesses from the file's extension
    if not isinstance(value, str):
        raise TypeError(f"{what}: the MIME type must be a str or None, not {type(value).__name__}")
    return value.encode("utf-8")


def _webdav_name(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value or "/" in value:
        raise TypeError(f"{what}: a name must be a non-empty str without '/', not {value!r}")
    return value.encode("utf-8")


def _webdav_listing(listing: Any, where: str) -> tuple[list[tuple[bytes, int, bytes | None, bytes]],
                                                       list[tuple[bytes, bytes]]]:
    """Checks what ``listFolder`` returned; the entries, ready for Orthanc."""
    what = f"{where} returned {type(listing).__name__}"
    if not isinstance(listing, (tuple, list)) or len(listing) != 2:
        raise TypeError(f"{what}, not None or (files, folders)")
    files: list[tuple[bytes, int, bytes | None, bytes]] = []
    for entry in listing[0]:
        if isinstance(entry, (tuple, list)) and 2 <= len(entry) <= 4:
            name, size, mime, when = (*entry, None, None)[:4]
            if _is_int(size) and size >= 0:
                files.append((_webdav_name(name, where), size, _webdav_mime(mime, where), _webdav_time(when, where)))
                continue
        raise TypeError(f"{where}: the file {entry!r} is not (name, size[, mimeType[, dateTime]])")
    folders: list[tuple[bytes, bytes]] = []
    for entry in listing[1]:
        name, when = (entry, None) if isinstance(entry, str) else (*entry, None)[:2]
        folders.append((_webdav_name(name, where), _webdav_time(when, where)))
    return files, folders


def _webdav_content(result: Any, where: str) -> tuple[bytes, bytes | None, bytes]:
    """Checks what ``retrieveFile`` returned: ``content`` or ``(content[, mimeType[, dateTime]])``."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        result = (result,)
    if isinstance(result, (tuple, list)) and 1 <= len(result) <= 3:
        content, mime, when = (*result, None, None)[:3]
        if isinstance(content, (bytes, bytearray, memoryview)):
            return bytes(content), _webdav_mime(mime, where), _webdav_time(when, where)
    raise TypeError(f"{where} returned {type(result).__name__}, not None, bytes or (content, mimeType, dateTime)")


def RegisterWebDavCollection(uri: str, isExistingFolder: Callable[[WebDavPath], Any],
                             listFolder: Callable[[WebDavPath], Any], retrieveFile: Callable[[WebDavPath], Any],
                             storeFile: Callable[[WebDavPath, bytes], Any] | None,
                             createFolder: Callable[[WebDavPath], Any] | None,
                             deleteItem: Callable[[WebDavPath], Any] | None) -> None:
    """Serves a virtual tree of folders and files through WebDAV, at ``uri``.

    WebDAV clients (file managers, ``davfs2``, ``cadaver``, Windows' network
    drives...) then browse, read and possibly write the tree the script
    describes. Each callback gets the ``path`` asked for, relative to
    ``uri``, as a ``list`` of ``str`` (``[]`` for ``uri`` itself):

    - ``isExistingFolder(path)`` returns ``True`` when ``path`` is a folder;
    - ``listFolder(path)`` returns ``(files, folders)``, or ``None`` when
      there is no such folder. ``files`` lists ``(name, size, mimeType,
      dateTime)`` tuples (``mimeType`` and ``dateTime`` may be left out or
      ``None``: Orthanc then guesses the type from the extension), and
      ``folders`` lists names, or ``(name, dateTime)`` tuples;
    - ``retrieveFile(path)`` returns the file's content (``bytes``), or
      ``(content, mimeType, dateTime)``, or ``None`` when there is no such
      file (the client gets HTTP 404);
    - ``storeFile(path, content)`` stores ``content`` (``bytes``) as the
      file ``path``, and returns ``True``, or ``False`` to refuse (the
      collection is read-only there);
    - ``createFolder(path)`` creates a folder and ``deleteItem(path)``
      deletes a file or a folder; both return ``True``, or ``False`` to
      refuse.

    ``storeFile``, ``createFolder`` and ``deleteItem`` may be ``None``: the
    collection is then read-only for that operation. A ``dateTime`` is a
    :class:`datetime.datetime` (naive ones are taken as UTC), a ``str`` in
    Orthanc's format ``YYYYMMDDTHHMMSS`` (UTC), or ``None`` for now. When a
    callback raises or returns something else, the reason goes to Orthanc's
    log and the client's request fails (HTTP 500). The callbacks run on
    Orthanc's HTTP threads, possibly several at once.

    The collection is served whatever the option ``WebDavEnabled``, which
    only concerns Orthanc's own WebDAV tree (``/webdav``). Several
    collections may be registered, at different URIs.

    :param uri: where to serve the collection, starting with ``/`` (e.g.
        ``"/my-files"``).
    :param isExistingFolder: tells whether a path is a folder.
    :param listFolder: lists a folder.
    :param retrieveFile: reads a file.
    :param storeFile: writes a file, or ``None``.
    :param createFolder: creates a folder, or ``None``.
    :param deleteItem: deletes a file or a folder, or ``None``.
    :raises TypeError: when ``uri`` is not a ``str`` or a callback is not callable.
    :raises ValueError: when ``uri`` does not start with ``/``.
    :raises OrthancError: when Orthanc refuses the collection.
    """
    function = "RegisterWebDavCollection"
    if not isinstance(uri, str):
        raise TypeError(f"{function}() argument 'uri' must be str, not {type(uri).__name__}")
    if not uri.startswith("/"):
        raise ValueError(f"{function}() argument 'uri' must start with '/', not {uri!r}")
    for argument, value in (("isExistingFolder", isExistingFolder), ("listFolder", listFolder),
                            ("retrieveFile", retrieveFile)):
        _check_callable(function, argument, value)
    for argument, optional in (("storeFile", storeFile), ("createFolder", createFolder), ("deleteItem", deleteItem)):
        if optional is not None:
            _check_callable(function, argument, optional)
    if not _capi.is_attached():
        return
    _runtime.require_setup(f"orthanc.{function}()")
    c_strings = _capi.c_strings

    def where(name: str, callback: Callable[..., Any] | None) -> str:
        return f"the WebDAV callback {name} {_name(callback) if callback else ''} of {uri}".replace("  ", " ")

    def yes_or_no(answer: Any, what: str) -> bool:
        if answer is True or answer is False:
            return answer
        raise TypeError(f"{what} returned {answer!r}, not True or False")

    existing_where = where("isExistingFolder", isExistingFolder)

    def c_is_existing(is_existing: Any, size: int, items: Any, _payload: Any) -> int:
        is_existing[0] = int(yes_or_no(isExistingFolder(c_strings(items, size)), existing_where))
        return SUCCESS

    list_where = where("listFolder", listFolder)

    def c_list(is_existing: Any, collection: Any, add_file: Any, add_folder: Any, size: int, items: Any,
               _payload: Any) -> int:
        is_existing[0] = 0
        listing = listFolder(c_strings(items, size))
        if listing is None:
            return SUCCESS
        files, folders = _webdav_listing(listing, list_where)
        for name, file_size, mime, when in files:
            code = add_file(collection, name, file_size, mime, when)
            if code != SUCCESS:
                return int(code)
        for name, when in folders:
            code = add_folder(collection, name, when)
            if code != SUCCESS:
                return int(code)
        is_existing[0] = 1
        return SUCCESS

    retrieve_where = where("retrieveFile", retrieveFile)

    def c_retrieve(collection: Any, retrieve: Any, size: int, items: Any, _payload: Any) -> int:
        result = retrieveFile(c_strings(items, size))
        if result is None:
            return int(ErrorCode.UnknownResource)  # HTTP 404
        content, mime, when = _webdav_content(result, retrieve_where)
        buffer = ctypes.create_string_buffer(content, len(content))
        return int(retrieve(collection, ctypes.addressof(buffer), len(content), mime, when))

    def writer(name: str, callback: Callable[..., Any] | None, with_content: bool) -> Any:
        what = where(name, callback)

        # The flag Orthanc calls "isReadOnly" is, in Orthanc 1.10.1, read as
        # "done": 0 makes it answer HTTP 403 (even though the file was
        # stored), 1 makes it answer 201 or 204. Measured, and pinned by the
        # tests (tests/test_official_transfers.py), so that an Orthanc
        # that reads it the other way shows up at once.
        def c_write(done_flag: Any, size: int, items: Any, *rest: Any) -> int:
            done_flag[0] = 0
            if callback is None:
                return SUCCESS  # read-only: HTTP 403
            path = c_strings(items, size)
            if with_content:
                data, data_size = rest[0], rest[1]
                done = callback(path, _capi.copy_memory(data, data_size))
            else:
                done = callback(path)
            done_flag[0] = int(yes_or_no(done, what))
            return SUCCESS

        return what, c_write

    params = _sdk._OrthancPluginRegisterWebDavCollection()
    params.uri = _calls._to_required_c_string(uri, f"{function}() argument 'uri'")
    params.isExistingFolder = _capi.trampoline(_sdk.OrthancPluginWebDavIsExistingFolderCallback, existing_where)(
        c_is_existing
    )
    params.listFolder = _capi.trampoline(_sdk.OrthancPluginWebDavListFolderCallback, list_where)(c_list)
    params.retrieveFile = _capi.trampoline(_sdk.OrthancPluginWebDavRetrieveFileCallback, retrieve_where)(c_retrieve)
    writers: tuple[tuple[str, Callable[..., Any] | None, bool, Any], ...] = (
        ("storeFile", storeFile, True, _sdk.OrthancPluginWebDavStoreFileCallback),
        ("createFolder", createFolder, False, _sdk.OrthancPluginWebDavCreateFolderCallback),
        ("deleteItem", deleteItem, False, _sdk.OrthancPluginWebDavDeleteItemCallback),
    )
    for field, callback, with_content, c_type in writers:
        what, c_write = writer(field, callback, with_content)
        setattr(params, field, _capi.trampoline(c_type, what)(c_write))
    params.payload = None
    _capi.invoke(Service.RegisterWebDavCollection, _capi.keep_alive(params), f"orthanc.{function}()")
