# SPDX-License-Identifier: GPL-3.0-or-later
"""What :mod:`orthanc_py.kv` and :mod:`orthanc_py.queue` share: checks of names and values, and their errors.

Both stand on SDK services of Orthanc 1.12.8 and later, which keep their data
in Orthanc's database. Where they are missing, the call that needs them
raises one :class:`StoreUnavailableError` saying why and what to change:
Orthanc too old, a database back-end without them, or a call made while the
script loads, before Orthanc has opened its database.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from . import _capi, _sdk_calls

ErrorCode = _capi.ErrorCode


class StoreUnavailableError(_capi.OrthancError):
    """This Orthanc cannot keep key-value stores or queues, or cannot yet; the message says why and what to do.

    An ``orthanc.OrthancException`` too: ``code`` is Orthanc's (``UnknownPluginService``
    for an Orthanc too old, ``NotImplemented`` for a database back-end without them,
    ``DatabaseNotInitialized`` while the script loads).
    """

    def __str__(self) -> str:
        return self.description


@dataclass(frozen=True)
class Feature:
    """One thing a store or a queue needs of Orthanc: for the error that says it is missing."""

    user: str
    """Who needs it, as the error names it (``"orthanc_py.kv"``, ``"Queue.reserve()"``)."""
    what: str
    """What it is, in a sentence (``"key-value stores"``)."""
    since: tuple[int, int, int]
    """The first Orthanc that has it."""
    capability: str
    """Its flag in ``Capabilities`` of ``GET /system`` (Orthanc 1.12.8 and later)."""
    postgresql: str
    """Which PostgreSQL plugins have it."""


KEY_VALUE_STORES = Feature("orthanc_py.kv", "key-value stores", (1, 12, 8), "HasKeyValueStores",
                           "the PostgreSQL plugin has them from version 8.0 on")
QUEUES = Feature("orthanc_py.queue", "queues", (1, 12, 8), "HasQueues",
                 "the PostgreSQL plugin has them from version 8.0 on")
RESERVATIONS = Feature("Queue.reserve()", "reservations of queue values", (1, 12, 10), "HasReserveQueueValue",
                       "the PostgreSQL plugin has queues from version 8.0 on, and reservations in releases after 9.0")


def call(feature: Feature, function: str, *args: Any) -> Any:
    """Calls the SDK function ``OrthancPlugin<function>`` for ``feature``, explaining why it is unavailable."""
    try:
        return _sdk_calls.call(function, *args)
    except _capi.SdkVersionError:
        raise unavailable(feature, ErrorCode.UnknownPluginService) from None
    except _capi.OrthancError as error:
        if error.code in (ErrorCode.NotImplemented, ErrorCode.DatabaseNotInitialized):
            raise unavailable(feature, error.code) from None
        raise


def unavailable(feature: Feature, code: int) -> StoreUnavailableError:
    """The error that says why ``feature`` cannot be used in this Orthanc, and what to change."""
    version = _capi.orthanc_version()
    if code == ErrorCode.UnknownPluginService:
        need = ".".join(map(str, feature.since))
        return StoreUnavailableError(code, (
            f"{feature.user} needs Orthanc {need} or newer, which keeps {feature.what} in its database; "
            f"this Orthanc is {version}"))
    if code == ErrorCode.DatabaseNotInitialized:
        return StoreUnavailableError(code, (
            f"{feature.user} cannot be used while the script loads: Orthanc opens its database after "
            "starting its plugins. Use it from a route, an event handler or @on_startup"))
    backend = _database_backend()
    return StoreUnavailableError(code, (
        f"{feature.user}: the database back-end of this Orthanc ({backend}) has no {feature.what} "
        f"(GET /system: Capabilities.{feature.capability} is false). Orthanc's own SQLite index has them; "
        f"{feature.postgresql}"))


def _database_backend() -> str:
    """The index this Orthanc runs on, as ``GET /system`` names it: the plugin's path, or Orthanc's SQLite."""
    try:
        system = json.loads(_sdk_calls.call("RestApiGet", "/system"))
    except Exception:  # only for an error message: say less rather than fail differently
        return "unknown"
    plugin = system.get("DatabaseBackendPlugin")
    return str(plugin) if plugin else "Orthanc's built-in SQLite"


# --- checks of what a script gives -----------------------------------------------------------

def check_name(kind: str, name: Any) -> str:
    """A store's or a queue's name: a non-empty ``str`` without NUL (Orthanc refuses an empty one)."""
    if not isinstance(name, str):
        raise TypeError(f"the name of a {kind} must be str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"the name of a {kind} cannot be empty")
    if "\0" in name:
        raise ValueError(f"the name of a {kind} cannot hold a NUL character (\\0): {name!r}")
    return name


def check_key(key: Any) -> str:
    """A key of a store: a ``str`` (may be empty) without NUL, as keys come back from Orthanc as ``str``."""
    if not isinstance(key, str):
        raise TypeError(f"keys of a store are str, not {type(key).__name__}"
                        + (": decode it (key.decode())" if isinstance(key, (bytes, bytearray)) else ""))
    if "\0" in key:
        raise ValueError(f"a key cannot hold a NUL character (\\0): {key!r}")
    return key


def check_value(where: str, value: Any) -> bytes:
    """A value to keep: ``bytes`` or another buffer (``bytearray``, ``memoryview``), not empty.

    ``str`` is refused rather than encoded: what is read back is ``bytes``,
    and a value that changed type on the way would compare unequal.
    """
    if type(value) is bytes:
        data = value
    elif isinstance(value, str):
        raise TypeError(f"{where} takes bytes, not str: store text.encode() and decode() what you read back "
                        "(values are bytes)")
    else:
        try:
            data = memoryview(value).tobytes()
        except TypeError:
            raise TypeError(f"{where} takes bytes (or a bytearray, a memoryview), not {type(value).__name__}") from None
    if not data:
        raise ValueError(f"{where}: Orthanc does not keep empty values; keep a marker such as b'-' instead")
    return data


def check_seconds(where: str, name: str, value: Any) -> float:
    """A duration in seconds: a finite ``int`` or ``float``, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} argument {name!r} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} argument {name!r} must be a finite number of seconds, 0 or more, not {value!r}")
    return float(value)
