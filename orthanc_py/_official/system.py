# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc itself: versions, errors, the DICOM dictionary, its log and its metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _hooks
from .registration import (
    _call,
    _check_callable,
    _name,
)

__all__ = [
    "CheckVersion",
    "CheckVersionAdvanced",
    "ClearCurrentThreadName",
    "GetErrorDescription",
    "LogError",
    "LogInfo",
    "LogWarning",
    "LookupDictionary",
    "RegisterRefreshMetricsCallback",
]


def ClearCurrentThreadName() -> None:
    """Removes the name ``SetCurrentThreadName()`` gave the calling thread in Orthanc's logs (Orthanc 1.13.0).

    A thread of the script that is about to serve something else (a pool's
    worker, say) clears the name it took for its previous task.
    """
    if _capi.release < _CLEAR_THREAD_NAME_SINCE:
        raise _calls.too_old("OrthancPluginClearCurrentThreadName", _CLEAR_THREAD_NAME_SINCE)
    # The service takes no parameters: InvokeService gets NULL.
    _capi.call(int(_capi.Service.ClearCurrentThreadName), None, "ClearCurrentThreadName")


_CLEAR_THREAD_NAME_SINCE = (1, 13, 0)


def CheckVersionAdvanced(expectedMajor: int, expectedMinor: int, expectedRevision: int) -> int:
    """Returns 1 if the running Orthanc is at least the given version (or a development build), else 0."""
    running = _capi.orthanc_version()
    if running == "mainline":
        return 1
    try:
        have = tuple(int(part) for part in running.split(".")[:3])
    except ValueError:
        return 0
    return int(have >= (int(expectedMajor), int(expectedMinor), int(expectedRevision)))


def CheckVersion() -> int:
    """Returns 1 if the running Orthanc is one orthanc_py runs on (1.10.1 or newer), else 0.

    The functions of a newer SDK check the running Orthanc themselves: on one
    that lacks them, they raise an error naming the version they need.
    """
    return CheckVersionAdvanced(*_OLDEST_ORTHANC)


# The oldest Orthanc orthanc_py runs on: the loader refuses to start in an older one
# (ORTHANC_PLUGINS_MINIMAL_* of loader/orthanc_sdk_subset.h).
_OLDEST_ORTHANC = (1, 10, 1)


def GetErrorDescription(error: int) -> str:
    """Returns Orthanc's description of an error code."""
    return _capi.error_description(int(error))


def LookupDictionary(name: str) -> dict[str, int]:
    """Looks a DICOM tag up in Orthanc's dictionary by name (``"PatientName"``) or number (``"0010,0010"``).

    :returns: ``{"Group", "Element", "ValueRepresentation", "MinMultiplicity", "MaxMultiplicity"}``.
    :raises OrthancException: for an unknown tag.
    """
    entry = _call("LookupDictionary", name)
    return {
        "Group": entry["group"],
        "Element": entry["element"],
        "ValueRepresentation": entry["vr"],
        "MinMultiplicity": entry["minMultiplicity"],
        "MaxMultiplicity": entry["maxMultiplicity"],
    }


def _log(log: Callable[[str], None], level: int, message: str) -> None:
    try:
        log(str(message))
    except _capi.NotInOrthancError:
        # In a worker process there is no Orthanc log: use Python's logging.
        logging.getLogger("orthanc").log(level, "%s", message)


def LogInfo(message: str) -> None:
    """Writes an information line to Orthanc's log (shown when Orthanc runs with ``--verbose``)."""
    _log(_capi.log_info, logging.INFO, message)


def LogWarning(message: str) -> None:
    """Writes a warning line to Orthanc's log."""
    _log(_capi.log_warning, logging.WARNING, message)


def LogError(message: str) -> None:
    """Writes an error line to Orthanc's log."""
    _log(_capi.log_error, logging.ERROR, message)


# --- metrics ----------------------------------------------------------------------------------

RefreshMetricsCallback = Callable[[], Any]

def RegisterRefreshMetricsCallback(callback: RefreshMetricsCallback) -> None:
    """Registers ``callback()``, called each time Orthanc refreshes its metrics.

    Orthanc refreshes them when a monitoring tool reads them (``GET
    /tools/metrics-prometheus``, ``GET /tools/metrics``); the callback sets
    the values it is in charge of with :func:`orthanc.SetMetricsValue`. That
    suits values that are costly to compute: they are computed only when
    asked for. Several callbacks may be registered; each is called in
    registration order, and one that raises is logged (with its traceback)
    without stopping the others. The return value is ignored.

    :param callback: the function to call, with no argument.
    :raises TypeError: when ``callback`` is not callable.
    """
    function = "RegisterRefreshMetricsCallback"
    _check_callable(function, "callback", callback)
    _hooks.metrics.add(callback, f"orthanc.{function}()", f"the refresh-metrics callback {_name(callback)}")
