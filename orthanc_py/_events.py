# SPDX-License-Identifier: GPL-3.0-or-later
"""Delivers Orthanc's events to the Python handlers of both APIs.

Orthanc calls its on-change callback synchronously with its core: a handler
that called the REST API from there could deadlock. The callback therefore
only queues the change; one worker thread delivers the queue in order to
every handler, in registration order, where REST calls are safe.

Stored instances are delivered at once, on Orthanc's thread: the instance
Orthanc lends is valid during the callback only.

This module sits below the start-up and shut-down of the runtime
(``_runtime``), which gives each run's dispatchers what they need from it:
the check that registrations happen while the script loads, and what to do
when Orthanc announces its stop.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterable
from typing import Callable, Optional

from . import _capi, _metrics, _sdk

ChangeHandler = Callable[[int, int, Optional[str]], None]
SetupCheck = Callable[[str], None]
"""Raises unless registrations are still open; its argument names what was registered."""

# The change type Orthanc uses when it stops (OrthancPluginChangeType).
ORTHANC_STOPPED = int(_sdk.OrthancPluginChangeType.OrthancStopped)
NO_RESOURCE = int(_sdk.OrthancPluginResourceType.None_)

# How often a long delivery at stop says how far it got.
PROGRESS_SECONDS = 5.0


class ChangeDispatcher:
    """The queue between Orthanc's on-change callback and the Python handlers.

    One per run of the script: Orthanc's in-process restart drops the
    handlers with the run that registered them.

    :param require_setup: raises when handlers can no longer be added.
    :param orthanc_stopped: called on Orthanc's thread when it announces its
        stop (``ORTHANC_STOPPED``), before this returns to Orthanc.
    """

    def __init__(self, require_setup: SetupCheck, orthanc_stopped: Callable[[], None]) -> None:
        self._require_setup = require_setup
        self._orthanc_stopped = orthanc_stopped
        # Each handler with the change types it acts on (None: all), and its figures.
        self._handlers: list[tuple[ChangeHandler, frozenset[int] | None, _metrics.HandlerStats]] = []
        self._queue: queue.SimpleQueue[tuple[int, int, str | None] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # queued and not yet delivered to every handler: the backlog
        self._queued_at: collections.deque[float] = collections.deque()  # when each of them was queued, in order
        self._stop_queued = False
        self._closed = False
        self._abandoned = False  # the wait at stop is over: deliver nothing more
        self._wanted: set[int] | None = set()  # the change types of the handlers; None for all
        # Called on Orthanc's thread for their change types, before the queue: they only wake a thread up.
        self._wakers: tuple[tuple[frozenset[int], Callable[[int], None]], ...] = ()
        self.delivered = 0

    def add(self, handler: ChangeHandler, what: str, change_types: Iterable[int] | None = None) -> None:
        """Adds a handler; handlers are called in the order they were added.

        Outside Orthanc (a worker process re-importing the script) the handler
        is only recorded: there are no events to deliver there.

        :param change_types: the only change types the handler acts on, or
            ``None`` for all. Orthanc's changes of no handler's types never
            enter Python (see ``loader.c``); a handler still gets every
            change queued, and filters itself.
        """
        if not callable(handler):
            raise TypeError(f"{what}: the handler must be callable, not {type(handler).__name__}")
        if _capi.is_attached():
            self._require_setup(what)
        types = None if change_types is None else frozenset(int(t) for t in change_types)
        self._handlers.append((handler, types, _metrics.handler("change", _capi.name_of(handler))))
        if change_types is None:
            self._wanted = None
        elif self._wanted is not None:
            self._wanted |= {int(t) for t in change_types}
        _capi.want_changes(self._wanted_now())

    def wake_on(self, change_types: Iterable[int], wake: Callable[[int], None]) -> None:
        """Calls ``wake(change_type)`` on Orthanc's thread for each change of ``change_types``, at once.

        For what reads the change itself elsewhere (durable handlers read
        Orthanc's log): ``wake`` must return at once and never call Orthanc.
        """
        types = frozenset(int(t) for t in change_types)
        self._wakers = (*self._wakers, (types, wake))
        if self._wanted is not None:
            self._wanted |= types
        _capi.want_changes(self._wanted_now())

    def _wanted_now(self) -> set[int] | None:
        # ORTHANC_STOPPED always: it is when orthanc_py closes the SDK to the script's threads.
        return None if self._wanted is None else self._wanted | {ORTHANC_STOPPED}

    def register(self) -> None:
        """Registers the on-change callback with Orthanc (once per run, while the plugin initialises).

        Registered whether or not the script has handlers: ``ORTHANC_STOPPED``
        is the moment orthanc_py closes the SDK to the script's threads,
        while Orthanc still serves.
        """
        _capi.register_on_change(self._on_change)
        _capi.want_changes(self._wanted_now())

    def _on_change(self, change_type: int, resource_type: int, resource_id: bytes | None) -> int:
        # Runs on Orthanc's thread, inside its core: queue and return at once,
        # except for ORTHANC_STOPPED (see _runtime.orthanc_stopped).
        for types, wake in self._wakers:
            if change_type in types:
                try:
                    wake(change_type)
                except Exception:
                    _capi.report_exception("waking orthanc_py's durable change handlers")
        if change_type == ORTHANC_STOPPED:
            self._orthanc_stopped()
        elif self._handlers and not self._closed:
            self._put((change_type, resource_type, resource_id.decode("utf-8", "replace") if resource_id else None))
        return int(_capi.ErrorCode.Success)

    def _put(self, item: tuple[int, int, str | None]) -> None:
        with self._lock:
            self._pending += 1
            self._queued_at.append(time.monotonic())
            if self._worker is None:
                self._worker = threading.Thread(target=self._deliver, name="orthanc_py-changes", daemon=True)
                self._worker.start()
        self._queue.put(item)

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._abandoned:
                return
            change_type, resource_type, resource_id = item
            for handler, types, stats in list(self._handlers):
                # Every handler is called, and those that asked for some change
                # types only (the decorators') filter: they count those only.
                if types is None or change_type in types:
                    stats.deliveries += 1
                try:
                    handler(change_type, resource_type, resource_id)
                except BaseException:  # SystemExit too: one handler must not end the delivery of others
                    stats.failures += 1
                    _capi.report_exception(f"on-change handler {_name_of(handler)}")
            with self._lock:
                self._pending -= 1
                self._queued_at.popleft()
                self.delivered += 1

    def backlog(self) -> tuple[int, float, int]:
        """The events waiting (queued, or being delivered), how long the oldest has waited, and those delivered."""
        with self._lock:
            waiting, delivered = self._pending, self.delivered
            oldest = self._queued_at[0] if self._queued_at else None
        return waiting, 0.0 if oldest is None else time.monotonic() - oldest, delivered

    def deliver_stop(self, timeout: float | None) -> int:
        """Queues ``ORTHANC_STOPPED`` (once) and waits until everything queued is delivered.

        Logs how far it got every few seconds. Events that arrive afterwards
        are not delivered.

        :param timeout: the longest wait in seconds, ``None`` for no limit.
        :returns: how many events were left undelivered (0 when all were).
        """
        with self._lock:
            self._closed = True
            if self._stop_queued or not self._handlers:
                return self._pending
            self._stop_queued = True
        self._put((ORTHANC_STOPPED, NO_RESOURCE, None))
        self._queue.put(None)
        started = time.monotonic()
        worker = self._worker
        assert worker is not None
        while worker.is_alive():
            waited = time.monotonic() - started
            step = PROGRESS_SECONDS if timeout is None else min(PROGRESS_SECONDS, timeout - waited)
            if step <= 0:
                break
            worker.join(step)
            if worker.is_alive() and self._pending:
                _capi.log_warning(f"orthanc_py: Orthanc stops once the script's change handlers are done: "
                                  f"{self.delivered} events delivered, {self._pending} to go")
        if worker.is_alive():
            self._abandoned = True  # the event being delivered finishes; no other starts
        return self._pending

    def stop(self, timeout: float) -> int:
        """Ends the delivery at the end of a run; returns how many events were dropped."""
        self.deliver_stop(timeout)
        with self._lock:
            dropped = self._pending
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
        return dropped


StoredInstanceHandler = Callable[[int, str], None]


class StoredInstanceDispatcher:
    """One on-stored-instance callback for Orthanc, several handlers for Python.

    :param require_setup: raises when handlers can no longer be added.
    """

    def __init__(self, require_setup: SetupCheck) -> None:
        self._require_setup = require_setup
        self._handlers: list[tuple[StoredInstanceHandler, str, _metrics.HandlerStats]] = []

    def add(self, handler: StoredInstanceHandler, what: str, name: str) -> None:
        """Adds ``handler(instance_address, instance_id)``; ``name`` is used in error logs."""
        if _capi.is_attached():
            self._require_setup(what)
            if not self._handlers:
                _capi.register_on_stored_instance(self._on_stored, "the on-stored-instance callback")
        self._handlers.append((handler, name, _metrics.handler("stored_instance", name)))

    def _on_stored(self, address: int, instance_id: str) -> int:
        for handler, name, stats in list(self._handlers):
            stats.deliveries += 1
            try:
                handler(address, instance_id)
            except BaseException:  # SystemExit too: the other handlers still get the instance
                stats.failures += 1
                _capi.report_exception(f"on-stored-instance handler {name}")
        return int(_capi.ErrorCode.Success)


def _name_of(function: Callable[..., object]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{_capi.name_of(function)}"


def _outside_orthanc(what: str) -> None:
    """Before the first run, handlers are only recorded: there is no Orthanc to register with."""


def _no_stop() -> None:
    """Before the first run, Orthanc announces no stop."""


changes = ChangeDispatcher(_outside_orthanc, _no_stop)
"""The dispatcher of this run of the script (Orthanc has one on-change callback per plugin)."""

stored_instances = StoredInstanceDispatcher(_outside_orthanc)
"""The dispatcher of stored instances of this run."""


def new_run(require_setup: SetupCheck, orthanc_stopped: Callable[[], None]) -> None:
    """Drops the handlers of the previous run (Orthanc's in-process restart).

    :param require_setup: raises when the run's registrations are closed.
    :param orthanc_stopped: what the run does when Orthanc announces its stop.
    """
    global changes, stored_instances
    changes = ChangeDispatcher(require_setup, orthanc_stopped)
    stored_instances = StoredInstanceDispatcher(require_setup)
    _metrics.watch_changes(changes.backlog)
