# SPDX-License-Identifier: GPL-3.0-or-later
"""Record type describing one SDK function in the generated ``orthanc_py._sdk``.

Hand-written on purpose: ``tools/gen_sdk.py`` writes ``_sdk.py``, whose
``FUNCTIONS`` table is made of :class:`SdkFunction` instances. Keeping the class
here keeps the generated file declarative (data only, no logic).
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass

__all__ = ["SdkFunction"]


@dataclass(frozen=True)
class SdkFunction:
    """What ``OrthancCPlugin.h`` tells about one of its inline SDK functions.

    Every SDK function of the header is a ``static inline`` C function. Most of
    them fill one params struct and call
    ``context->InvokeService(context, service, &params)``; a pure-Python layer
    does the same through ctypes with the facts recorded here.
    """

    name: str
    """C name of the function, e.g. ``"OrthancPluginLogInfo"``."""

    service: enum.IntEnum | None
    """The ``_OrthancPluginService`` member the function passes to
    ``InvokeService``, or ``None`` when it invokes no service itself (e.g.
    ``OrthancPluginCheckVersion``, ``OrthancPluginFreeString``)."""

    params: type[ctypes.Structure] | None
    """The params struct whose address is passed to ``InvokeService``, or
    ``None`` when the function passes an argument directly (the log functions
    pass the message string) or invokes no service."""

    arguments: tuple[tuple[str, str], ...]
    """``(name, C type spelling)`` of each C parameter after ``context``."""

    result: str
    """C spelling of the return type, e.g. ``"OrthancPluginErrorCode"``."""

    since: tuple[int, int, int] | None
    """SDK version in which the function appeared, when the header documents it
    (the ``New in Orthanc x.y.z`` comment on its service, or on the service's
    group); ``None`` when the header does not say."""

    doc: str = ""
    """The doxygen ``@brief`` line of the function, or ``""``."""

    calls: tuple[str, ...] = ()
    """Other functions the body calls besides ``InvokeService``: functions
    declared in the header (``OrthancPluginGetName``, the plugin's own export,
    or another inline SDK function) and ``context->Free``. C library calls
    (``memset``, ``sscanf``) are left out."""
