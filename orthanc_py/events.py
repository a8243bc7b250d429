# SPDX-License-Identifier: GPL-3.0-or-later
"""Decorators for Orthanc's events: changes, stored instances, start-up and shut-down, periodic jobs.

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
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar, overload

from . import _calls, _capi, _durable, _events, _hooks, _runtime, _sdk_calls, cluster
from ._enums import ChangeType, InstanceOrigin, ResourceType
from ._enums import StableStatus as _StableStatus

__all__ = [
    "AuditLog", "Change", "ChangeType", "IncomingInstance", "InstanceOrigin", "ReceivedInstance", "ResourceType",
    "StoredInstance", "cstore_filter", "emit_audit_log", "every", "instance_filter", "mark_stable", "mark_unstable",
    "on_audit_log", "on_change", "on_received_instance", "on_shutdown", "on_startup", "on_stored_instance",
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
    seq: int | None = None
    """The change's number in Orthanc's change log (``GET /changes``), for durable handlers; ``None`` otherwise.

    A durable handler may be given a change again after a crash: the number
    lets it see that it did the work already. A recovered change carries the
    number of the resource's ``NEW_*`` change."""
    recovered: bool = False
    """``True`` for a ``STABLE_*`` change Orthanc never logged (it stopped before the resource was stable),
    made by a durable handler once the resource is stable."""

    def mark_stable(self) -> bool:
        """Declares the change's patient, study or series stable now: see :func:`mark_stable`."""
        return mark_stable(self._resource("mark_stable"))

    def mark_unstable(self) -> bool:
        """Declares the change's patient, study or series not stable: see :func:`mark_unstable`."""
        return mark_unstable(self._resource("mark_unstable"))

    def _resource(self, what: str) -> str:
        if self.resource_id is None or self.resource_type not in _STABILISING:
            raise ValueError(f"Change.{what}(): a {self.change_type.name} change is about no patient, study "
                             "or series; only those become stable")
        return self.resource_id


_STABILISING = (ResourceType.PATIENT, ResourceType.STUDY, ResourceType.SERIES)


@dataclass(frozen=True)
class AuditLog:
    """An audit log a plugin emitted: who did what to which resource (Orthanc 1.12.9 and later)."""

    source_plugin: str
    """The plugin that emitted it, which gives ``action`` and ``data`` their meaning."""
    user_id: str
    """The user or entity that acted."""
    resource_type: ResourceType
    """The level of the resource acted on."""
    resource_id: str
    """The Orthanc ID of the resource."""
    action: str
    """What was done (the source plugin's word for it)."""
    data: bytes
    """What the source plugin attached."""

    def json(self) -> Any:
        """``data`` parsed as JSON (what :func:`emit_audit_log` attaches)."""
        return json.loads(self.data)


_AUDIT_SINCE = (1, 12, 9)
_name = _capi.name_of


def on_audit_log(function: F) -> F:
    """Calls the decorated ``handler(log)`` with each :class:`AuditLog` a plugin emits.

    A handler records it (a database, a message broker...). Several may be
    declared, with this decorator or ``orthanc.RegisterAuditLogHandler``:
    each is told, in the order declared; one that raises is logged and the
    others still run. Handlers run on the thread of the plugin that emits,
    while it waits: keep them quick.

    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    """
    if not callable(function):
        raise TypeError(f"@on_audit_log: the handler must be callable, not {type(function).__name__}")

    def deliver(source: str, user: str, resource_type: int, resource_id: str, action: str, data: bytes) -> None:
        function(AuditLog(source, user, ResourceType(resource_type), resource_id, action, data))

    if _capi.is_attached() and _capi.release < _AUDIT_SINCE:
        raise _calls.too_old("OrthancPluginRegisterAuditLogHandler", _AUDIT_SINCE)
    _hooks.audit_logs.add(deliver, "@on_audit_log", f"the audit-log handler {_name(function)}")
    return function


def emit_audit_log(action: str, resource_id: str, *, resource_type: ResourceType = ResourceType.STUDY,
                   user_id: str = "", data: Any = None) -> None:
    """Emits an audit log, which Orthanc hands to every plugin's audit-log handlers (Orthanc 1.12.9 and later).

    :param action: what was done (``"forwarded"``, ``"anonymized"``...).
    :param resource_id: the Orthanc ID of the resource acted on.
    :param resource_type: its level.
    :param user_id: who acted.
    :param data: attached as JSON (``bytes`` as they are).
    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    """
    payload = data if isinstance(data, bytes) else json.dumps(data).encode("utf-8")
    _sdk_calls.call("EmitAuditLog", _calls.PLUGIN_NAME.decode(), user_id, resource_type, resource_id, action, payload)


def mark_stable(resource_id: str) -> bool:
    """Declares a patient, study or series stable now, without waiting ``StableAge`` seconds.

    Orthanc then sends its ``STABLE_PATIENT``, ``STABLE_STUDY`` or
    ``STABLE_SERIES`` change, as when the delay runs out: for a script that
    knows a study is complete (a modality's storage commitment, the count
    of instances it announced), its forwarding starts at once.

    :returns: ``True`` if the resource was not stable yet, ``False`` if it
        was already (or is unknown to Orthanc).
    :raises SdkVersionError: on an Orthanc older than 1.12.9, which has no such service.
    """
    return bool(_sdk_calls.call("SetStableStatus", resource_id, _StableStatus.STABLE))


def mark_unstable(resource_id: str) -> bool:
    """Declares a patient, study or series not stable: its ``StableAge`` delay starts again.

    :returns: ``True`` if the resource was stable, ``False`` otherwise.
    :raises SdkVersionError: on an Orthanc older than 1.12.9.
    """
    return bool(_sdk_calls.call("SetStableStatus", resource_id, _StableStatus.UNSTABLE))


@overload
def on_change(function: F, /) -> F: ...
@overload
def on_change(*change_types: ChangeType | int, once_per_cluster: bool = False, lease: float | None = None,
              durable: bool = False, retries: int = _durable.DEFAULT_RETRIES,
              backoff: float = _durable.DEFAULT_BACKOFF) -> Callable[[F], F]: ...


def on_change(*change_types: Any, once_per_cluster: bool = False, lease: float | None = None,
              durable: bool = False, retries: int = _durable.DEFAULT_RETRIES,
              backoff: float = _durable.DEFAULT_BACKOFF) -> Any:
    """Calls the decorated ``handler(change)`` for each change of the given types (all without).

    Used bare (``@on_change``) or with types (``@on_change(ChangeType.NEW_STUDY,
    ChangeType.DELETED)``). Handlers run in order on a worker thread; one that
    raises is logged and the others still run.

    :param once_per_cluster: on several Orthanc nodes sharing one database,
        run the handler on one node only for each resource and change type,
        even when several nodes fire the change (see :mod:`orthanc_py.cluster`).
    :param lease: with ``once_per_cluster``, the seconds a node's claim holds
        before another node may take the work over (renewed while the handler runs).
    :param durable: deliver each change at least once, across crashes and
        restarts: the handler reads Orthanc's change log from a checkpoint kept
        in Orthanc's database, gets ``STABLE_*`` changes a crash lost
        (``change.recovered``), and is retried when it raises (see
        :doc:`/durable`). Its changes carry their number in the log
        (``change.seq``). The handler runs on a thread of its own.
    :param retries: with ``durable``, how many times a change is given again
        to a handler that raised, before it becomes a dead letter.
    :param backoff: with ``durable``, the seconds before the first retry;
        each next one waits twice as long (at most 300 s).
    """
    if lease is not None and not once_per_cluster:
        raise TypeError("on_change(): lease= goes with once_per_cluster=True (it is how long a node's claim holds)")
    if not durable and (retries != _durable.DEFAULT_RETRIES or backoff != _durable.DEFAULT_BACKOFF):
        raise TypeError("on_change(): retries= and backoff= go with durable=True (plain handlers are not retried)")
    if len(change_types) == 1 and callable(change_types[0]) and not isinstance(change_types[0], int):
        return _add_change_handler(change_types[0], frozenset())
    for change_type in change_types:
        if not isinstance(change_type, int):
            raise TypeError(f"on_change() takes ChangeType values, not {type(change_type).__name__}")
    wanted = frozenset(int(t) for t in change_types)
    if durable:
        return lambda function: _add_durable_handler(function, wanted, once_per_cluster, lease, retries, backoff)
    return lambda function: _add_change_handler(function, wanted, once_per_cluster, lease)


def _add_durable_handler(function: F, wanted: frozenset[int], once_per_cluster: bool, lease: float | None,
                         retries: int, backoff: float) -> F:
    if not callable(function):
        raise TypeError(f"on_change: the handler must be callable, not {type(function).__name__}")

    def deliver(change_type: int, resource_type: int, resource_id: str | None, seq: int, recovered: bool) -> None:
        function(Change(ChangeType(change_type), ResourceType(resource_type), resource_id, seq, recovered))

    claims = (cluster.DEFAULT_LEASE if lease is None else lease) if once_per_cluster else None
    name = f"{getattr(function, '__module__', None) or '?'}.{_capi.name_of(function)}"
    _durable.add(name, deliver, wanted, claims, retries, backoff)
    return function


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


class _InstanceView(_capi.Borrowed):
    """A DICOM instance Orthanc lends to a handler, read through Orthanc; valid while the handler runs.

    Each property asks Orthanc when first read, so a handler pays only for
    what it uses. A property first read after the handler returned raises
    :class:`RuntimeError` (Orthanc has freed the instance by then); the
    values read during the handler stay available.
    """

    def __init__(self, address: int) -> None:
        self._instance = _calls.handle_class("OrthancPluginDicomInstance").lent(address)

    def _expire(self, message: str | None = None) -> None:
        self._instance._expire(message or (
            f"this {self._described()} was used after its handler returned, and Orthanc has freed it: "
            "read what you need (instance.data, instance.simplified_json...) while the handler runs"
        ))

    def _described(self) -> str:
        return type(self).__name__

    def _call(self, name: str, *args: Any, raw: bool = False) -> Any:
        return _sdk_calls.call(name, self._instance, *args, raw=raw)

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



class StoredInstance(_InstanceView):
    """An instance Orthanc has just stored; valid while the handler runs.

    Each property asks Orthanc when first read, so a handler pays only for
    what it uses. A property first read after the handler returned raises
    :class:`RuntimeError` (Orthanc has freed the instance by then); the
    values read during the handler stay available.
    """

    def __init__(self, address: int, instance_id: str) -> None:
        super().__init__(address)
        self.id = instance_id
        """The Orthanc ID of the instance."""

    def _described(self) -> str:
        return f"StoredInstance ({self.id})"

    def metadata(self, name: str) -> str | None:
        """The value of one metadata of the instance (``"TransferSyntax"``, ``"RemoteAET"``...), or ``None``."""
        value = self._call("GetInstanceMetadata", name)
        return None if value is None else str(value)

    def __repr__(self) -> str:
        return f"<StoredInstance {self.id}>"


class IncomingInstance(_InstanceView):
    """An instance Orthanc has received and asks a filter about; valid while the filter runs.

    The same properties as :class:`StoredInstance` but ``id`` and
    ``metadata()``: Orthanc has not stored it yet.
    """

    def __repr__(self) -> str:
        return "<IncomingInstance>"


def _ask(function: Callable[[IncomingInstance], Any], lent: _calls.Handle) -> Any:
    """What a filter says of the instance Orthanc lent; the :class:`IncomingInstance` expires with the call."""
    instance = IncomingInstance(lent.address)
    try:
        return function(instance)
    finally:
        _capi.expire(instance)


def instance_filter(function: F) -> F:
    """Asks the decorated ``handler(instance)`` whether to store each instance Orthanc receives.

    It runs for every instance, whatever the way it came (REST API, C-STORE,
    DICOMweb...), before it is stored. ``instance`` is an
    :class:`IncomingInstance`. The handler returns ``True`` to store it,
    ``False`` to discard it: a REST upload then answers ``"Status":
    "FilteredOut"``, a C-STORE fails. Several filters may be declared, with
    this decorator or ``orthanc.RegisterIncomingDicomInstanceFilter``: an
    instance is stored when every one accepts it, asked in the order declared.

    A filter that raises or returns something else is logged with its name,
    and the instance is not stored (the sender is told): a filter that fails
    never lets an instance through. Orthanc runs filters synchronously with
    its core: do not call :mod:`orthanc_py.rest` here.
    """
    if not callable(function):
        raise TypeError(f"@instance_filter: the handler must be callable, not {type(function).__name__}")

    def check(lent: _calls.Handle) -> int:
        verdict = _ask(function, lent)
        if verdict is True or verdict is False:
            return int(verdict)  # Orthanc: 1 stores, 0 discards
        raise _hooks.Refused(f"returned {type(verdict).__name__}, not True (store) or False (discard)")

    _hooks.dicom_filters.add(check, "@instance_filter", f"the @instance_filter handler {_capi.name_of(function)}")
    return function


REFUSED_OUT_OF_RESOURCES = 0xA700
"""The DIMSE status a :func:`cstore_filter` that returns ``False`` refuses an instance with.

"Refused: Out of Resources" (DICOM PS3.4, C-STORE statuses), the one status
of the "Refused" class; other statuses are "Error" ones (``0xA900``, data set
does not match SOP class; ``0xC000``, cannot understand)."""


def cstore_filter(function: F) -> F:
    """Asks the decorated ``handler(instance)`` about each instance a modality sends by C-STORE.

    ``instance`` is an :class:`IncomingInstance` (``instance.remote_aet`` is
    the sender). The handler returns ``True`` (or ``0``) to store it, ``False`` to
    refuse it with the DIMSE status ``0xA700`` ("Refused: Out of
    Resources"), or the DIMSE status to refuse it with (an ``int`` from 1 to
    ``0xFFFF``): the modality gets that status and Orthanc stores nothing.
    Several filters may be declared, with this decorator or
    ``orthanc.RegisterIncomingCStoreInstanceFilter``: the first refusal
    answers the modality.

    A filter that raises or returns something else is logged with its name,
    and the C-STORE fails: the instance stays with the sender, which can
    send it again.
    """
    if not callable(function):
        raise TypeError(f"@cstore_filter: the handler must be callable, not {type(function).__name__}")

    def check(lent: _calls.Handle) -> int:
        verdict = _ask(function, lent)
        if verdict is True or (type(verdict) is int and verdict == 0):  # 0: the official filter's "store"
            return 0
        if verdict is False:
            return REFUSED_OUT_OF_RESOURCES
        if isinstance(verdict, int) and 1 <= verdict <= 0xFFFF:
            return verdict
        raise _hooks.Refused(f"returned {verdict!r}, not True (store), False (refuse) or a DIMSE status "
                             "from 1 to 0xFFFF (refuse with it)")

    _hooks.cstore_filters.add(check, "@cstore_filter", f"the @cstore_filter handler {_capi.name_of(function)}")
    return function


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

    _events.stored_instances.add(deliver, "@on_stored_instance", _capi.name_of(function))
    return function


@dataclass(frozen=True)
class ReceivedInstance:
    """An instance Orthanc has received and not stored yet."""

    data: bytes
    """The DICOM file as received (or as changed by an earlier handler)."""
    origin: InstanceOrigin
    """How it reached Orthanc (DICOM protocol, REST API...)."""


def on_received_instance(function: F) -> F:
    """Lets the decorated ``handler(instance)`` keep, change or drop each instance before it is stored.

    ``instance`` is a :class:`ReceivedInstance`. The handler returns ``None``
    (or ``True``) to store it, ``False`` to drop it (the REST API then answers
    ``"Status": "FilteredOut"``), or ``bytes``: a DICOM file stored instead.
    Several handlers run in order (with ``orthanc.RegisterReceivedInstanceCallback``'s,
    in the order declared), each seeing what the one before kept.

    A handler that raises or returns something else is logged with its name
    and what it returned, and the instance is refused: nothing is stored, the
    upload or C-STORE fails and the sender keeps the instance. A hook that
    guards data fails closed. Orthanc runs handlers synchronously with its
    core: do not call :mod:`orthanc_py.rest` here.
    """
    if not callable(function):
        raise TypeError(f"@on_received_instance: the handler must be callable, not {type(function).__name__}")
    keep, modify, drop = (int(a) for a in (_hooks.Action.KeepAsIs, _hooks.Action.Modify, _hooks.Action.Discard))

    def transform(data: bytes, origin: int) -> tuple[int, bytes | None]:
        verdict = function(ReceivedInstance(data, InstanceOrigin(origin)))
        if verdict is None or verdict is True:
            return keep, None
        if verdict is False:
            return drop, None
        if isinstance(verdict, (bytes, bytearray, memoryview)):
            return modify, bytes(verdict)
        raise _hooks.Refused(f"returned {type(verdict).__name__}: return None to keep, False to drop, "
                             "or the new DICOM file as bytes")

    _hooks.received_instances.add(transform, "@on_received_instance",
                                  f"the @on_received_instance handler {_capi.name_of(function)}")
    return function


_periodic: list[Callable[[], None]] = []
_runtime.on_new_run(_periodic.clear)


def every(seconds: float, once_per_cluster: bool = False, lease: float | None = None) -> Callable[[F], F]:
    """Calls the decorated ``job()`` every ``seconds``, from the moment Orthanc has started.

    Runs happen at multiples of ``seconds`` of the clock (``time.time()``), so
    that the nodes of a cluster agree on the periods. A run that lasts longer
    than the period makes the next due one start when it ends (runs never
    overlap on one node). Jobs run one at a time, on a thread of orthanc_py's
    where calling :mod:`orthanc_py.rest` is safe; one that raises is logged
    and runs again at the next period.

    :param once_per_cluster: run each period on one node of the cluster only
        (the first to claim it, see :mod:`orthanc_py.cluster`); without, every
        node runs every period. A node that dies while running its period
        leaves it to another node once its lease ends, if that is still within
        the period.
    :param lease: seconds a claim holds without renewal (default: ``seconds``, at least 10).
    :raises ~orthanc_py.cluster.ClusterConfigError: with ``once_per_cluster`` on a node not configured for claims.
    """
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"every(): seconds must be a positive number, not {seconds!r}")
    hold = lease if lease is not None else max(float(seconds), 10.0)

    def decorator(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@every: the job must be callable, not {type(function).__name__}")
        if _capi.is_attached():
            _runtime.require_setup("@every")
            if once_per_cluster:
                cluster.check_configuration()
        name = f"{getattr(function, '__module__', '?')}.{_capi.name_of(function)}"

        def tick(period: int) -> None:
            try:
                if once_per_cluster:
                    result = cluster.run_period(function, period, hold)
                    if result.outcome is cluster.Outcome.HELD and result.until < (period + 1) * seconds:
                        cluster.schedule(result.until + 0.1, lambda: tick(period))  # the holder may die
                        return
                else:
                    function()
            except Exception:
                _capi.report_exception(f"periodic job {name}")
            # The next period; a run that overran goes on with the period of now.
            schedule(max(period + 1, int(time.time() // seconds)))

        def schedule(period: int) -> None:
            cluster.schedule(max(period * seconds, time.time()), lambda: tick(period))

        _periodic.append(lambda: schedule(int(time.time() // seconds) + 1))
        if _capi.is_attached() and len(_periodic) == 1:  # one start-up handler starts every job
            _add_lifecycle_handler(_start_periodic, ChangeType.ORTHANC_STARTED, "@every")
        return function

    return decorator


def _start_periodic() -> None:
    for start in list(_periodic):
        start()
