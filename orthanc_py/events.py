# SPDX-License-Identifier: GPL-3.0-or-later
"""Decorators for Orthanc's events: changes, stored instances, start-up and shut-down.

>>> @on_change(ChangeType.STABLE_STUDY)
... def forward(change):
...     rest.post("/modalities/sample/store", change.resource_id)

Change handlers run in order on a thread of orthanc_py's, where calling
:mod:`orthanc_py.rest` is safe. Stored-instance handlers run while Orthanc
stores the instance: the instance they get is valid during the call only.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

from . import _calls, _capi, _events, _runtime, _sdk, _sdk_calls, cluster
from ._enums import ChangeType, InstanceOrigin, ResourceType

__all__ = [
    "Change", "ChangeType", "InstanceOrigin", "ReceivedInstance", "ResourceType", "StoredInstance",
    "on_change", "on_received_instance", "on_shutdown", "on_startup", "on_stored_instance",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Change:
    """A change in Orthanc's store (a new study, a stable series, Orthanc starting...)."""

    change_type: ChangeType
    """What happened (``NEW_STUDY``, ``STABLE_SERIES``, ``ORTHANC_STARTED``...)."""
    resource_type: ResourceType
    """The level of the resource it happened to (``NONE`` for changes about no resource)."""
    resource_id: str | None
    """The Orthanc ID of the resource, or ``None`` for changes about no resource."""


@overload
def on_change(function: F, /) -> F: ...
@overload
def on_change(*change_types: ChangeType | int, once_per_cluster: bool = False,
              lease: float | None = None) -> Callable[[F], F]: ...


def on_change(*change_types: Any, once_per_cluster: bool = False, lease: float | None = None) -> Any:
    """Calls the decorated ``handler(change)`` for each change of the given types (all without).

    Used bare (``@on_change``) or with types (``@on_change(ChangeType.NEW_STUDY,
    ChangeType.DELETED)``). Handlers run in order on a worker thread; one that
    raises is logged and the others still run.

    :param once_per_cluster: on several Orthanc nodes sharing one database,
        run the handler on one node only for each resource and change type,
        even when several nodes fire the change (see :mod:`orthanc_py.cluster`).
    :param lease: with ``once_per_cluster``, the seconds a node's claim holds
        before another node may take the work over (renewed while the handler runs).
    """
    if lease is not None and not once_per_cluster:
        raise TypeError("on_change(): lease= goes with once_per_cluster=True (it is how long a node's claim holds)")
    if len(change_types) == 1 and callable(change_types[0]) and not isinstance(change_types[0], int):
        return _add_change_handler(change_types[0], frozenset())
    for change_type in change_types:
        if not isinstance(change_type, int):
            raise TypeError(f"on_change() takes ChangeType values, not {type(change_type).__name__}")
    wanted = frozenset(int(t) for t in change_types)
    return lambda function: _add_change_handler(function, wanted, once_per_cluster, lease)


def _add_change_handler(function: F, wanted: frozenset[int], once_per_cluster: bool = False,
                        lease: float | None = None) -> F:
    if not callable(function):
        raise TypeError(f"on_change: the handler must be callable, not {type(function).__name__}")
    handler: Callable[[Change], Any] = function
    if once_per_cluster:
        handler = cluster.once_per_cluster(function, cluster.DEFAULT_LEASE if lease is None else lease)

    @functools.wraps(function)
    def deliver(change_type: int, resource_type: int, resource_id: str | None) -> None:
        if not wanted or change_type in wanted:
            handler(Change(ChangeType(change_type), ResourceType(resource_type), resource_id))

    _events.changes.add(deliver, "@on_change", wanted or None)
    return function


def on_startup(function: F) -> F:
    """Calls the decorated ``handler()`` once Orthanc has started (its REST API works then)."""
    _add_lifecycle_handler(function, ChangeType.ORTHANC_STARTED, "@on_startup")
    return function


def on_shutdown(function: F) -> F:
    """Calls the decorated ``handler()`` when Orthanc stops, before orthanc_py does."""
    _add_lifecycle_handler(function, ChangeType.ORTHANC_STOPPED, "@on_shutdown")
    return function


def _add_lifecycle_handler(function: Callable[[], Any], change_type: int, what: str) -> None:
    if not callable(function):
        raise TypeError(f"{what}: the handler must be callable, not {type(function).__name__}")

    @functools.wraps(function)
    def deliver(kind: int, resource_type: int, resource_id: str | None) -> None:
        if kind == change_type:
            function()

    _events.changes.add(deliver, what, {int(change_type)})


class StoredInstance(_capi.Borrowed):
    """An instance Orthanc has just stored; valid while the handler runs.

    Each property asks Orthanc when first read, so a handler pays only for
    what it uses. A property first read after the handler returned raises
    :class:`RuntimeError` (Orthanc has freed the instance by then); the
    values read during the handler stay available.
    """

    def _expire(self, message: str | None = None) -> None:
        self._instance._expire(message or (
            f"this StoredInstance ({self.id}) was used after its handler returned, and Orthanc has freed it: "
            "read what you need (instance.data, instance.simplified_json...) while the handler runs"
        ))

    def __init__(self, address: int, instance_id: str) -> None:
        self._instance = _calls.handle_class("OrthancPluginDicomInstance").lent(address)
        self.id = instance_id
        """The Orthanc ID of the instance."""

    def _call(self, name: str, *args: Any, raw: bool = False) -> Any:
        return _sdk_calls.sdk_function("OrthancPlugin" + name, raw=raw)(self._instance, *args)

    @functools.cached_property
    def size(self) -> int:
        """The size of the DICOM file, in bytes."""
        return int(self._call("GetInstanceSize"))

    @functools.cached_property
    def data(self) -> bytes:
        """The DICOM file."""
        from ._capi import copy_memory

        lease = self._instance._take_lease()  # the data stays Orthanc's: the instance must outlive the copy
        try:
            return copy_memory(self._call("GetInstanceData", raw=True), self.size)
        finally:
            if lease is not None:
                lease.release()

    @functools.cached_property
    def origin(self) -> InstanceOrigin:
        """How the instance reached Orthanc (REST API, DICOM protocol, plugin...)."""
        return InstanceOrigin(self._call("GetInstanceOrigin"))

    @functools.cached_property
    def remote_aet(self) -> str:
        """The AET of the modality that sent the instance (empty when not received over DICOM)."""
        return self._call("GetInstanceRemoteAet") or ""

    @functools.cached_property
    def transfer_syntax(self) -> str:
        """The transfer syntax UID of the DICOM file."""
        return self._call("GetInstanceTransferSyntaxUid") or ""

    def metadata(self, name: str) -> str | None:
        """The value of one metadata of the instance (``"TransferSyntax"``, ``"RemoteAET"``...), or ``None``."""
        value = self._call("GetInstanceMetadata", name)
        return None if value is None else str(value)

    @functools.cached_property
    def simplified_json(self) -> dict[str, Any]:
        """The DICOM tags as ``{"PatientID": "...", ...}``."""
        tags: dict[str, Any] = json.loads(self._call("GetInstanceSimplifiedJson"))
        return tags

    @functools.cached_property
    def json(self) -> dict[str, Any]:
        """The DICOM tags as Orthanc's full JSON (``{"0010,0020": {"Name": ..., "Value": ...}}``)."""
        tags: dict[str, Any] = json.loads(self._call("GetInstanceJson"))
        return tags

    def __repr__(self) -> str:
        return f"<StoredInstance {self.id}>"


def on_stored_instance(function: F) -> F:
    """Calls the decorated ``handler(instance)`` with each :class:`StoredInstance` Orthanc stores."""
    if not callable(function):
        raise TypeError(f"@on_stored_instance: the handler must be callable, not {type(function).__name__}")

    def deliver(address: int, instance_id: str) -> None:
        instance = StoredInstance(address, instance_id)
        try:
            function(instance)
        finally:
            _capi.expire(instance)  # lent by Orthanc for this call only

    _events.stored_instances.add(deliver, "@on_stored_instance", getattr(function, "__qualname__", repr(function)))
    return function


@dataclass(frozen=True)
class ReceivedInstance:
    """An instance Orthanc has received and not stored yet."""

    data: bytes
    """The DICOM file as received (or as changed by an earlier handler)."""
    origin: InstanceOrigin
    """How it reached Orthanc (DICOM protocol, REST API...)."""


_received_handlers: list[Callable[[ReceivedInstance], Any]] = []
_runtime.on_new_run(_received_handlers.clear)


def on_received_instance(function: F) -> F:
    """Lets the decorated ``handler(instance)`` keep, change or drop each instance before it is stored.

    ``instance`` is a :class:`ReceivedInstance`. The handler returns ``None``
    (or ``True``) to store it, ``False`` to drop it (the REST API then answers
    ``"Status": "FilteredOut"``), or ``bytes``: a DICOM file stored instead.
    Several handlers run in order, each seeing what the one before kept.

    A handler that raises or returns something else is logged with its name
    and what it returned, and the instance is refused: nothing is stored, the
    upload or C-STORE fails and the sender keeps the instance. A hook that
    guards data fails closed. Orthanc runs handlers synchronously with its
    core: do not call :mod:`orthanc_py.rest` here.
    """
    if not callable(function):
        raise TypeError(f"@on_received_instance: the handler must be callable, not {type(function).__name__}")
    if not _received_handlers:
        from ._compat import RegisterReceivedInstanceCallback

        RegisterReceivedInstanceCallback(_run_received_handlers)
    _received_handlers.append(function)
    return function


def _run_received_handlers(data: bytes, origin: int) -> tuple[int, bytes | None]:
    action = _sdk.OrthancPluginReceivedInstanceAction
    current, changed = data, False
    for handler in _received_handlers:
        verdict = handler(ReceivedInstance(current, InstanceOrigin(origin)))
        if verdict is None or verdict is True:
            continue
        if verdict is False:
            return int(action.Discard), None
        if isinstance(verdict, (bytes, bytearray, memoryview)):
            current, changed = bytes(verdict), True
            continue
        raise TypeError(
            f"@on_received_instance handler {getattr(handler, '__qualname__', handler)} returned "
            f"{type(verdict).__name__}: return None to keep, False to drop, or the new DICOM file as bytes"
        )
    return (int(action.Modify), current) if changed else (int(action.KeepAsIs), None)
