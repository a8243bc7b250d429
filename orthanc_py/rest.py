# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc's REST API, called from inside Orthanc (no HTTP, no credentials).

Calls reach Orthanc's built-in API, so that a route which overrides a
built-in one (``/tools/find``...) can call the original. Pass
``plugins=True`` to go through the routes of plugins too (this script's
own, DICOMweb's...), as an HTTP client would.

>>> from orthanc_py import rest
>>> study = rest.get_json(f"/studies/{study_id}")
>>> rest.post("/modalities/sample/store", study_id)

:func:`request` is the general call: any method, request headers
(``If-Match``...), and the answer's status and headers.

Calls made while the script loads fail: Orthanc's database opens after the
plugins initialise. Make them from a route, an event handler, or
``@on_startup``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from . import _calls, _capi, _sdk, _sdk_calls

__all__ = ["Answer", "RestError", "delete", "get", "get_json", "post", "post_json", "put", "put_json", "request"]

Body = Union[bytes, str, dict[str, Any], list[Any], None]

_E = _sdk.OrthancPluginErrorCode
# The HTTP status Orthanc's REST API answers for the error codes a call may meet.
_HTTP_STATUS = {
    _E.UnknownResource: 404,
    _E.InexistentItem: 404,
    _E.InexistentFile: 404,
    _E.BadRequest: 400,
    _E.BadFileFormat: 400,
    _E.BadJson: 400,
    _E.ParameterOutOfRange: 400,
    _E.BadParameterType: 400,
    _E.Unauthorized: 401,
    _E.NotAcceptable: 406,
    _E.NotImplemented: 501,
    _E.Timeout: 504,
    _E.Revision: 409,
}
# The failures request() answers as a status instead of raising: an outcome the caller branches on.
_ANSWERED = frozenset({int(_E.UnknownResource), int(_E.InexistentItem), int(_E.Revision)})
# What Orthanc answers a call made while the script loads, before it opens its
# database; its own words name the database, not where the call belongs.
_WHILE_LOADING = int(_E.DatabaseNotInitialized)
_LOADING_FIX = (
    "Orthanc's REST API cannot be called while the script loads, as Orthanc opens its database after the "
    "plugins start: call it from a function decorated with @on_startup, from a route or from an event handler"
)


class RestError(Exception):
    """A call to Orthanc's REST API failed.

    :ivar status: the HTTP status Orthanc's REST API answers for this error (404, 400...).
    :ivar code: Orthanc's error code.
    :ivar method: the HTTP method of the call.
    :ivar uri: the URI called.
    """

    def __init__(self, method: str, uri: str, code: int, description: str) -> None:
        self.method, self.uri, self.code = method, uri, int(code)
        self.status = _HTTP_STATUS.get(self.code, 500)  # type: ignore[call-overload]
        fix = f"; {_LOADING_FIX}" if self.code == _WHILE_LOADING else ""
        super().__init__(f"{method} {uri}: {description} (HTTP {self.status}, Orthanc error {self.code}){fix}")


def _body(body: Body) -> bytes:
    if body is None:
        return b""
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode("utf-8")
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"a REST body must be bytes, str, dict or list, not {type(body).__name__}")


def _call(method: str, function: str, uri: str, *args: Any, plugins: bool = False) -> Any:
    if plugins:
        function += "AfterPlugins"
    if not isinstance(uri, str):
        raise TypeError(f"rest.{method.lower()}() argument 'uri' must be str, not {type(uri).__name__}")
    try:
        return _sdk_calls.sdk_function(function)(uri, *args)
    except _calls.SdkVersionError:
        raise
    except _capi.OrthancError as error:
        raise RestError(method, uri, error.code, error.description) from None


def get(uri: str, plugins: bool = False) -> bytes:
    """GET ``uri`` from Orthanc's REST API; returns the body.

    :param plugins: go through the routes of plugins too, not only Orthanc's built-in API.
    :raises RestError: carrying the HTTP status, e.g. 404 for an unknown resource.
    """
    return bytes(_call("GET", "OrthancPluginRestApiGet", uri, plugins=plugins))


def post(uri: str, body: Body = b"", plugins: bool = False) -> bytes:
    """POST ``body`` (bytes, str, or a dict/list sent as JSON) to ``uri``; returns the answer's body."""
    return bytes(_call("POST", "OrthancPluginRestApiPost", uri, _body(body), plugins=plugins))


def put(uri: str, body: Body = b"", plugins: bool = False) -> bytes:
    """PUT ``body`` (bytes, str, or a dict/list sent as JSON) to ``uri``; returns the answer's body."""
    return bytes(_call("PUT", "OrthancPluginRestApiPut", uri, _body(body), plugins=plugins))


def delete(uri: str, plugins: bool = False) -> None:
    """DELETE ``uri``."""
    _call("DELETE", "OrthancPluginRestApiDelete", uri, plugins=plugins)


def get_json(uri: str, plugins: bool = False) -> Any:
    """GET ``uri`` and parse the answer as JSON."""
    return json.loads(get(uri, plugins))


def post_json(uri: str, body: Body = None, plugins: bool = False) -> Any:
    """POST ``body`` (a dict or list is sent as JSON) and parse the answer as JSON."""
    return json.loads(post(uri, {} if body is None else body, plugins))


def put_json(uri: str, body: Body = None, plugins: bool = False) -> Any:
    """PUT ``body`` (a dict or list is sent as JSON) and parse the answer as JSON."""
    return json.loads(put(uri, {} if body is None else body, plugins))


@dataclass(frozen=True)
class Answer:
    """The answer of :func:`request`."""

    status: int
    """The HTTP status: 200, 404, 409..."""
    headers: dict[str, str]
    """The answer's headers, names in lower case (``answer.headers["etag"]``)."""
    body: bytes
    """The answer's body."""

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def request(method: str, uri: str, body: Body = b"", headers: Mapping[str, str] | None = None,
            plugins: bool = False) -> Answer:
    """Calls Orthanc's REST API with request headers; returns the status, headers and body of the answer.

    For conditional writes: read a metadata or an attachment, then write it
    with ``If-Match`` set to the ETag read. A stale ETag answers ``409``
    (Orthanc checks ``If-Match`` only with ``"CheckRevisions": true``):

    >>> current = rest.request("GET", f"/instances/{id}/metadata/note")
    >>> written = rest.request("PUT", f"/instances/{id}/metadata/note", "new",
    ...                        headers={"If-Match": current.headers["etag"]})
    >>> if written.status == 409: ...  # written by someone else meanwhile: read again

    Orthanc reports a failed call with an error code, not an HTTP answer.
    The failures a caller branches on come back as an :class:`Answer`
    with an empty body: ``404`` for an unknown resource or item,
    ``409`` for a revision that does not match ``If-Match`` (or a missing
    ``If-Match`` under ``"CheckRevisions": true``). Any other failure raises.

    :param method: ``"GET"``, ``"POST"``, ``"PUT"`` or ``"DELETE"``.
    :param body: bytes, str, or a dict/list sent as JSON.
    :param headers: the request's HTTP headers.
    :param plugins: go through the routes of plugins too, not only Orthanc's built-in API.
    :raises RestError: for the other failures (400 for a bad request...), carrying the HTTP status.
    :raises ValueError: for a method Orthanc's REST API does not take.
    """
    if not isinstance(uri, str):
        raise TypeError(f"rest.request() argument 'uri' must be str, not {type(uri).__name__}")
    verb = method.upper() if isinstance(method, str) else method
    try:
        code = _sdk.OrthancPluginHttpMethod[verb.capitalize()]
    except (KeyError, AttributeError):
        names = ", ".join(m.name.upper() for m in _sdk.OrthancPluginHttpMethod)
        raise ValueError(f"rest.request() argument 'method' must be one of {names}, not {method!r}") from None
    try:
        answer, answer_headers, status = _sdk_calls.sdk_function("OrthancPluginCallRestApi")(
            int(code), uri, headers, _body(body), int(plugins))
    except _calls.SdkVersionError:
        raise
    except _capi.OrthancError as error:
        if int(error.code) in _ANSWERED:
            return Answer(_HTTP_STATUS[error.code], {}, b"")  # type: ignore[index]
        raise RestError(verb, uri, error.code, error.description) from None
    parsed = json.loads(answer_headers) if answer_headers else {}
    return Answer(int(status), {str(k).lower(): str(v) for k, v in parsed.items()}, bytes(answer or b""))
