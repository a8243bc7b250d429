# SPDX-License-Identifier: GPL-3.0-or-later
"""Security: HTTP authentication and audit logs (Orthanc 1.12.9 and later).

- :func:`RegisterHttpAuthentication` -- ``callback(uri, ip=, headers=, get=)``
  returns an :class:`orthanc.HttpAuthenticationStatus`, or ``(status,
  payload)`` to hand a payload to the routes (``GRANTED``) or the path of a
  login page (``REDIRECT``);
- :func:`RegisterAuditLogHandler` -- ``callback(sourcePlugin, userId,
  resourceType, resourceId, action, logData)`` is told each audit log a
  plugin emits with ``orthanc.EmitAuditLog()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _hooks
from .._hooks import Refused
from .registration import _check_callable, _is_int, _name

__all__ = [
    "RegisterAuditLogHandler",
    "RegisterHttpAuthentication",
]

# The first Orthanc with both services.
SINCE = (1, 12, 9)


def _require(function: str) -> None:
    """Refuses at registration, not at the first request, on an Orthanc that lacks the service."""
    if _capi.release < SINCE:
        raise _calls.too_old(f"OrthancPlugin{function}", SINCE)


def RegisterHttpAuthentication(callback: Callable[..., Any]) -> None:
    """Registers ``callback(uri, **request)``, which authenticates every HTTP request Orthanc receives.

    ``request`` holds ``ip``, ``headers`` (a ``dict`` with lower-case names)
    and ``get`` (the query arguments). The callback returns an
    :class:`orthanc.HttpAuthenticationStatus`: ``GRANTED``, ``UNAUTHORIZED``
    (HTTP 401), ``FORBIDDEN`` (HTTP 403) or ``REDIRECT`` (HTTP 307); or a
    pair ``(status, data)`` where ``data`` (``str`` or ``bytes``) is the
    payload Orthanc hands to the routes for ``GRANTED``, or the path to
    redirect to for ``REDIRECT``.

    Orthanc takes one such callback for all its plugins, and then ignores
    its own ``RegisteredUsers`` and ``AuthenticationEnabled``. A callback
    that raises or returns something else refuses the request (HTTP 403),
    and the reason goes to Orthanc's log.

    :raises TypeError: when ``callback`` is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    :raises RuntimeError: when the script registered one already (here or with ``@http_auth``).
    """
    function = "RegisterHttpAuthentication"
    _check_callable(function, "callback", callback)
    _require(function)

    def authenticate(uri: str, ip: str, headers: dict[str, str], get: dict[str, str]) -> tuple[int, bytes | None]:
        result = callback(uri, ip=ip, headers=headers, get=get)
        status, data = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
        if not _is_int(status) or status not in _STATUSES:
            raise Refused(f"returned {result!r}: return an orthanc.HttpAuthenticationStatus, or (status, data)")
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif data is not None and not isinstance(data, bytes):
            raise Refused(f"returned data of type {type(data).__name__}: give str or bytes")
        return int(status), data

    _hooks.http_authentication.add(authenticate, f"orthanc.{function}()", f"the HTTP authentication {_name(callback)}",
                                   once=True)


_STATUSES = {int(status) for status in _hooks.AuthStatus if status.name != "_INTERNAL"}


def RegisterAuditLogHandler(callback: Callable[..., Any]) -> None:
    """Registers ``callback(sourcePlugin, userId, resourceType, resourceId, action, logData)``.

    It is told each audit log a plugin emits (``orthanc.EmitAuditLog()``):
    ``resourceType`` is an :class:`orthanc.ResourceType` value and
    ``logData`` the ``bytes`` the plugin attached. Several handlers may be
    registered (this function once, ``@on_audit_log`` more): each is told,
    in the order declared; one that raises is logged and the others still run.

    :raises TypeError: when ``callback`` is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    """
    function = "RegisterAuditLogHandler"
    _check_callable(function, "callback", callback)
    _require(function)
    _hooks.audit_logs.add(callback, f"orthanc.{function}()", f"the audit-log handler {_name(callback)}", once=True)
