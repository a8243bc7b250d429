# SPDX-License-Identifier: GPL-3.0-or-later
"""Delivers Orthanc's events to the Python handlers of both APIs.

Orthanc calls its on-change callback synchronously with its core: a handler
that called the REST API from there could deadlock. The callback therefore
only queues the change; one worker thread delivers the queue in order to
every handler, in registration order, where REST calls are safe.

Stored instances are delivered at once, on Orthanc's thread: the instance
Orthanc lends is valid during the callback only.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Optional, cast

from . import _capi, _runtime, _sdk

ChangeHandler = Callable[[int, int, Optional[str]], None]

# The change type Orthanc uses when it stops (OrthancPluginChangeType).
ORTHANC_STOPPED = int(_sdk.OrthancPluginChangeType.OrthancStopped)
NO_RESOURCE = int(_sdk.OrthancPluginResourceType.None_)

_STOP = object()


class ChangeDispatcher:
    """The queue between Orthanc's on-change callback and the Python handlers."""

    def __init__(self) -> None:
        self._handlers: list[ChangeHandler] = []
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._worker: Optional[threading.Thread] = None
        self._registered = False
        self.stopped_delivered = False

    def add(self, handler: ChangeHandler, what: str) -> None:
        """Adds a handler; handlers are called in the order they were added.

        Outside Orthanc (a worker process re-importing the script) the handler
        is only recorded: there are no events to deliver there.
        """
        if not callable(handler):
            raise TypeError(f"{what}: the handler must be callable, not {type(handler).__name__}")
        if _capi.is_attached():
            _runtime.require_setup(what)
            if not self._registered:
                _capi.register_on_change(self._on_change)
                self._registered = True
        self._handlers.append(handler)

    def _on_change(self, change_type: int, resource_type: int, resource_id: Optional[bytes]) -> int:
        # Runs on Orthanc's thread, inside its core: queue and return at once.
        decoded = resource_id.decode("utf-8", "replace") if resource_id else None
        self._queue.put((change_type, resource_type, decoded))
        if self._worker is None:
            self._start_worker()
        return int(_capi.ErrorCode.Success)

    def _start_worker(self) -> None:
        with _worker_lock:
            if self._worker is None:
                worker = threading.Thread(target=self._deliver, name="orthanc_py-changes", daemon=True)
                worker.start()
                self._worker = worker

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            change_type, resource_type, resource_id = cast("tuple[int, int, Optional[str]]", item)
            if change_type == ORTHANC_STOPPED:
                self.stopped_delivered = True
            for handler in list(self._handlers):
                try:
                    handler(change_type, resource_type, resource_id)
                except Exception:
                    _capi.report_exception(f"on-change handler {_name_of(handler)}")

    def stop(self, timeout: float) -> bool:
        """Delivers what is queued (ORTHANC_STOPPED included), then ends the worker.

        :returns: ``False`` when a handler still ran after ``timeout`` seconds.
        """
        if not self._handlers:
            return True
        if not self.stopped_delivered:
            # Orthanc may finalize plugins before the ORTHANC_STOPPED change
            # reaches us: make sure every handler hears it, once.
            self._queue.put((ORTHANC_STOPPED, NO_RESOURCE, None))
        self._queue.put(_STOP)
        if self._worker is None:
            self._start_worker()
        assert self._worker is not None
        self._worker.join(timeout)
        return not self._worker.is_alive()


StoredInstanceHandler = Callable[[int, str], None]


class StoredInstanceDispatcher:
    """One on-stored-instance callback for Orthanc, several handlers for Python."""

    def __init__(self) -> None:
        self._handlers: list[tuple[StoredInstanceHandler, str]] = []

    def add(self, handler: StoredInstanceHandler, what: str, name: str) -> None:
        """Adds ``handler(instance_address, instance_id)``; ``name`` is used in error logs."""
        if _capi.is_attached():
            _runtime.require_setup(what)
            if not self._handlers:
                _capi.register_on_stored_instance(self._on_stored, "the on-stored-instance callback")
        self._handlers.append((handler, name))

    def _on_stored(self, address: int, instance_id: str) -> int:
        for handler, name in list(self._handlers):
            try:
                handler(address, instance_id)
            except Exception:
                _capi.report_exception(f"on-stored-instance handler {name}")
        return int(_capi.ErrorCode.Success)


def _name_of(function: Callable[..., object]) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


_worker_lock = threading.Lock()

changes = ChangeDispatcher()
"""The process-wide dispatcher (Orthanc has one on-change callback per plugin)."""

stored_instances = StoredInstanceDispatcher()
"""The process-wide dispatcher of stored instances."""
