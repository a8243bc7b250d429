# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module: the official Python plugin's API, name for name.

Scripts written for the official plugin run unchanged: ``import orthanc``
resolves to this module (re-exported by the top-level ``orthanc`` package).

The functions and classes written by hand live in ``_official``, one module
per family of the SDK (REST, changes, filters, DICOM SCPs, storage, jobs,
images...); each family's ``__all__`` is its part of this module. The rest
is built here from the SDK facts in ``_sdk.FUNCTIONS``: an SDK function
``OrthancPluginXxx`` becomes ``orthanc.Xxx``, or a method ``Xxx`` of the
class of its first argument when that is an Orthanc object (``RestOutput``,
``DicomInstance``, ``Image``...).
"""

from __future__ import annotations

import enum
import functools
import inspect
from typing import Any, Callable

from . import _calls, _capi, _enums, _sdk, _sdk_calls
from ._calls import Handle
from ._official import (
    changes,
    dicomweb,
    filters,
    http_client,
    images,
    jobs,
    rest,
    scp,
    security,
    storage,
    stores,
    system,
    transfers,
)

# The orthanc module is the union of its families.
from ._official.changes import *  # noqa: F403
from ._official.dicomweb import *  # noqa: F403
from ._official.filters import *  # noqa: F403
from ._official.http_client import *  # noqa: F403
from ._official.images import *  # noqa: F403
from ._official.jobs import *  # noqa: F403
from ._official.registration import _SdkMethod
from ._official.rest import *  # noqa: F403
from ._official.rest import RestOutput
from ._official.scp import *  # noqa: F403
from ._official.security import *  # noqa: F403
from ._official.storage import *  # noqa: F403
from ._official.stores import *  # noqa: F403
from ._official.system import *  # noqa: F403
from ._official.transfers import *  # noqa: F403

_FAMILIES = (rest, changes, filters, scp, security, storage, stores, jobs, images, transfers, http_client, dicomweb,
             system)

OrthancException = _capi.OrthancError
"""Raised when an Orthanc SDK call fails; ``args`` are ``(code, description)``."""

_PREFIX = "OrthancPlugin"

__all__: list[str] = ["OrthancException"]


# --- enumerations --------------------------------------------------------------

def _enum_class(source: Any) -> type:
    """An official-style enum: a plain class whose UPPER_CASE attributes are ints.

    The names and values are those of the generated ``_enums`` module; the
    official plugin's enums are plain classes (not :class:`enum.IntEnum`),
    which its introspection sample relies on.
    """
    members = {member.name: int(member) for member in source}
    doc = (inspect.getdoc(source) or source.__name__).strip()
    return type(source.__name__, (), {"__doc__": doc, "__module__": "orthanc", **members})


for _source in vars(_enums).values():
    if isinstance(_source, type) and issubclass(_source, enum.IntEnum) and not _source.__name__.startswith("_"):
        globals()[_source.__name__] = _enum_class(_source)
        __all__.append(_source.__name__)


# --- Orthanc objects ---------------------------------------------------------------

_HANDLE_CLASSES: dict[str, type[Handle]] = {
    member.c_type_name: member
    for family in _FAMILIES for member in map(family.__dict__.get, family.__all__)
    if isinstance(member, type) and issubclass(member, Handle)
}
for _opaque in _sdk.OPAQUE_TYPES:
    _c_name = _opaque.__name__
    if _c_name not in _HANDLE_CLASSES:
        _HANDLE_CLASSES[_c_name] = type(
            _c_name[len(_PREFIX):],
            (Handle,),
            {"c_type_name": _c_name, "__doc__": f"An Orthanc object ({_c_name}).", "__module__": "orthanc"},
        )
for _cls in _HANDLE_CLASSES.values():
    _cls.__module__ = "orthanc"
    for _name, _member in list(vars(_cls).items()):
        if inspect.isfunction(_member) and not _name.startswith("_"):
            setattr(_cls, _name, _SdkMethod(_member))
    _calls.HANDLE_CLASSES[_cls.c_type_name] = _cls
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
# Methods written by hand in the family of what they do (DICOMweb, jobs), for
# classes made here: before the SDK-built methods, which leave them alone.
for _family in _FAMILIES:
    for _c_name, _method in getattr(_family, "METHODS", ()):
        _method.__name__ = _method.__qualname__ = _method.__name__.lstrip("_")
        _method.__module__ = "orthanc"
        setattr(_HANDLE_CLASSES[_c_name], _method.__name__, _SdkMethod(_method))


# --- functions and methods built from the SDK ------------------------------------

# The RestOutput methods that send the answer: after one of them, the request is answered.
_ANSWERING = {
    "AnswerBuffer", "CompressAndAnswerPngImage", "CompressAndAnswerJpegImage", "CompressAndAnswerImage",
    "Redirect", "SendHttpStatus", "SendHttpStatusCode", "SendMethodNotAllowed", "SendUnauthorized",
    "StartMultipartAnswer", "StartStreamAnswer",
}

UNSUPPORTED: dict[str, str] = {}
"""SDK functions not reachable from this module, with the reason (see ``orthanc-py sdk-coverage``)."""


def _answering_method(function: Callable[..., Any], answering: bool, errors_logged: bool) -> Callable[..., Any]:
    """A ``RestOutput`` method around a generated function.

    It first sends the answer ``AnswerBuffer()`` left to the loader (Orthanc
    must see the calls in the script's order), marks the request answered
    (``answering``) and logs the errors Orthanc reports (``errors_logged``).
    """
    python_name = function.__name__
    sends_status = python_name == "SendHttpStatusCode"  # SendHttpStatus is RestOutput's own

    def method(*args: Any) -> Any:
        output = args[0]
        if getattr(output, "_deferred", None) is not None:
            output._send_deferred()
        try:
            result = function(*args)
        except _capi.OrthancError as error:
            if not errors_logged or isinstance(error, _calls.SdkVersionError):
                raise
            rest.log_ignored_error(python_name, error)
            return None
        if answering:
            output.answered = True
            if sends_status:
                output._status = args[1]  # the route's figures count a 5xx as an error
        return result

    functools.update_wrapper(method, function)
    return method


def _exposed(function: Callable[..., Any], method: bool) -> Callable[..., Any]:
    """The generated function as the ``orthanc`` module shows it: its module, and ``self`` for a method."""
    function.__module__ = "orthanc"
    if method:
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        parameters[0] = parameters[0].replace(name="self")
        function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return function


def _build_from_sdk(namespace: dict[str, Any]) -> None:
    for fn in _sdk.FUNCTIONS.values():
        python_name = fn.name[len(_PREFIX):]
        if python_name in namespace or any(python_name in vars(cls) for cls in _HANDLE_CLASSES.values()):
            continue  # written by hand
        try:
            function = _sdk_calls.sdk_function(fn.name)
        except _sdk_calls.UnsupportedFunction as error:
            UNSUPPORTED[fn.name] = str(error).split(": ", 1)[-1]
            continue
        # A method of the class of its first Orthanc-object argument.
        parameters, _result = _sdk_calls.CONVENTIONS[fn.name]
        first = parameters[0] if parameters else None
        owner = _HANDLE_CLASSES.get(first[1]) if first is not None and first[2].startswith("handle") else None
        if owner is not None and python_name.startswith("Free"):
            continue  # Handle.close() frees
        if owner is not None:
            if owner is RestOutput:
                # The SDK's answer functions return nothing: in the official
                # plugin, a refusal (a header after the answer) goes unnoticed.
                function = _answering_method(function, python_name in _ANSWERING, fn.result == "void")
            method = _SdkMethod(_exposed(function, method=True))
            setattr(owner, python_name, method)
            # The official plugin 7.1 drops the class's name from such a
            # method (FindMatcher.IsMatch, StorageArea.Read): both names work.
            short = python_name[len(owner.__name__):]
            if python_name.startswith(owner.__name__) and short and short not in vars(owner):
                setattr(owner, short, method)
        else:
            namespace[python_name] = _exposed(function, method=False)
            __all__.append(python_name)


for _family in _FAMILIES:
    for _name in _family.__all__:
        _member = getattr(_family, _name)
        if not isinstance(_member, type):
            _member.__module__ = "orthanc"
            __all__.append(_name)

_build_from_sdk(globals())
__all__.sort()


def _make_fast_classes() -> None:
    """Makes the objects Orthanc lends and the script owns instances of a subclass with plain-function methods.

    The classes of this module keep method descriptors, as the official
    plugin's C classes have (its introspection sample lists only those);
    each call through one pays a Python-level ``__get__``. The subclass,
    named as its class and registered as the class objects are made of
    (``_calls.handle_class``), has the same methods as plain functions,
    which Python binds in C. ``RestOutput`` has its own (``_official.rest``).
    """
    for c_name, cls in _HANDLE_CLASSES.items():
        if cls is RestOutput:
            continue
        methods = {name: member.function for name, member in vars(cls).items() if isinstance(member, _SdkMethod)}
        _calls.HANDLE_CLASSES[c_name] = type(cls.__name__, (cls,), {
            **methods, "__module__": "orthanc", "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


_make_fast_classes()


rest.flatten_lent_output()
