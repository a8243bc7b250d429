# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module: the official Python plugin's API, name for name.

Scripts written for the official plugin run unchanged: ``import orthanc``
resolves to this module (re-exported by the top-level ``orthanc`` package).
Each name is a thin mapping onto orthanc_py's core.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from . import _capi, _events, _sdk

__all__ = [
    "ChangeType",
    "GetConfiguration",
    "LogError",
    "LogInfo",
    "LogWarning",
    "OrthancException",
    "RegisterOnChangeCallback",
    "ResourceType",
]


OrthancException = _capi.OrthancError
"""Raised when an Orthanc SDK call fails; ``args`` are ``(code, description)``."""


def _enum_class(name: str, source: type, doc: str) -> type:
    """An official-style enum: a class whose UPPER_CASE attributes are ints."""
    import re

    members = {
        re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", member.name.rstrip("_")).upper(): int(member.value)
        for member in source  # type: ignore[attr-defined]
    }
    return type(name, (), {"__doc__": doc, "__module__": "orthanc", **members})


ChangeType = _enum_class(
    "ChangeType", _sdk.OrthancPluginChangeType, "The kinds of change Orthanc reports to on-change callbacks."
)
ResourceType = _enum_class(
    "ResourceType", _sdk.OrthancPluginResourceType, "The levels of the DICOM model: patient, study, series, instance."
)


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


def GetConfiguration() -> str:
    """Returns Orthanc's configuration as a JSON string."""
    return _capi.get_configuration()


def RegisterOnChangeCallback(callback: Callable[[int, int, Optional[str]], None]) -> None:
    """Registers ``callback(changeType, level, resourceId)`` for every change in Orthanc.

    Changes are delivered in order on a thread of orthanc_py's, never on
    Orthanc's own, so the callback may call the REST API. Several callbacks
    may be registered; each is called in registration order.
    """
    _events.changes.add(callback, "orthanc.RegisterOnChangeCallback()")


