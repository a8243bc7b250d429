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

    # -- what the inline body does, for a generic marshalling layer -----------------

    locals: tuple[tuple[str, str], ...] = ()
    """``(name, C type spelling)`` of the variables the body declares besides the
    params struct, e.g. ``("result", "char *")``: the out-values the service
    writes through a ``ref:`` assignment."""

    assignments: tuple[tuple[str, str], ...] = ()
    """``(field, source)`` of each ``params.<field> = <expr>;`` in body order.
    A nested field is dotted (``"a.b"``). ``source`` is one of:

    - ``"arg:NAME"``: the C parameter ``NAME`` (casts dropped);
    - ``"ref:NAME"``: ``&NAME``, the address of local ``NAME``;
    - ``"enum:Type.Member"``: an enumerator, as ``Type.Member`` of this module;
    - ``"int:N"``: an integer constant;
    - ``"null"``: ``NULL`` (or ``0``) stored in a pointer field;
    - ``"expr:TEXT"``: anything else, as C tokens joined by single spaces.
    """

    direct_params: str | None = None
    """What the function passes to ``InvokeService`` instead of ``&params``, in
    the notation of :attr:`assignments` (``OrthancPluginLogInfo``:
    ``"arg:message"``); ``None`` when it passes ``&params`` or calls no service."""

    returns: str = "void"
    """What the function returns: ``"void"``; ``"status"``, the error code of
    ``InvokeService`` itself; ``"local:NAME"``, local ``NAME`` once the service
    succeeded (casts dropped), else :attr:`failure_value`; ``"expr:TEXT"``, any
    other C expression (for the functions listed in ``IRREGULAR`` that return
    without a single return statement, the text of the whole body)."""

    failure_value: str | None = None
    """C text of the value returned when ``InvokeService`` fails, e.g. ``"NULL"``,
    ``"0"``, ``'"Unknown error code"'``: set for ``local:`` returns and for
    ``expr:`` returns chosen by the same success test
    (``OrthancPluginHasInstanceMetadata``: ``"-1"``); ``None`` otherwise."""

    checks_status: bool = False
    """Whether the body compares the result of ``InvokeService`` with
    ``OrthancPluginErrorCode_Success`` (void functions ignore it)."""
