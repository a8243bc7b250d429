# SPDX-License-Identifier: GPL-3.0-or-later
"""Queues in Orthanc's database: a named :class:`Queue` of ``bytes`` values, shared by every consumer.

.. code-block:: python

   from orthanc_py import every, queue, route

   exports = queue.Queue("my-plugin.exports")

   @route("/exports", methods=["POST"])
   def add(request):
       exports.put(request.body)

   @every(5)
   def work():
       while (item := exports.reserve(lease=60)) is not None:
           with item:                      # acknowledged when the block ends without an exception
               send(item.value)

A queue lives in Orthanc's index (Orthanc 1.12.8 and later): it survives
restarts of Orthanc, and every node of a cluster whose database back-end has
queues takes from the same one. The ``orthanc`` module reaches the same
queues (``orthanc.EnqueueValue(name, value)``...).

Two ways to take a value:

- :meth:`Queue.get` takes it out for good: *at most once*. If the consumer
  fails after taking it, the value is lost, unless it puts it back.
- :meth:`Queue.reserve` (Orthanc 1.12.10 and later) hides it from the other
  consumers for ``lease`` seconds; :meth:`Reservation.acknowledge` then
  removes it. A consumer that raises, or a node that stops, before
  acknowledging leaves the value to come back when its lease runs out: *at
  least once*. A value may thus be handled twice (a consumer slower than its
  lease, a node that stopped after the work but before the acknowledgement):
  make the handling idempotent, and give a lease longer than the work takes.
  Used as a context manager, a reservation is acknowledged when the block
  ends without an exception; after an exception it is left to expire.
  Orthanc has no way to hand a reserved value back early.

Values are ``bytes`` (text is refused rather than encoded: store
``text.encode()``); Orthanc keeps no empty value. A queue cannot be used
while the script loads (Orthanc opens its database after starting its
plugins): from a route, an event handler or ``@on_startup``. On an Orthanc
without queues, the first operation raises :class:`StoreUnavailableError`,
which says what to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from . import _capi
from ._enums import QueueOrigin
from ._stores import QUEUES, RESERVATIONS, StoreUnavailableError, call, check_name, check_seconds, check_value

__all__ = ["LeaseExpiredError", "Queue", "QueueOrigin", "Reservation", "StoreUnavailableError"]

_T = TypeVar("_T")

# Orthanc takes a lease as a 32-bit count of seconds.
_MAX_LEASE = 2**32 - 1
# How often a waiting get() or reserve() asks again: at first soon, then at most each second.
_FIRST_PAUSE = 0.05
_LONGEST_PAUSE = 1.0


class LeaseExpiredError(_capi.OrthancError):
    """A reservation was acknowledged after its lease ran out: Orthanc hands (or has handed) the value out again.

    The value will be handled once more, by this consumer or another: the
    work must be idempotent, or the lease longer than the work. An
    ``orthanc.OrthancException`` too (``code`` is ``UnknownResource``).
    """

    def __str__(self) -> str:
        return self.description


class Queue:
    """The queue ``name`` of Orthanc's database.

    Two :class:`Queue` objects of one name are the same queue; the name is
    shared by every script and plugin of this Orthanc (and of the nodes of a
    cluster): prefix it with your plugin's name.

    :param name: the queue's name: a non-empty ``str``.
    :raises TypeError: when ``name`` is not a ``str``.
    :raises ValueError: when it is empty or holds a NUL character.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = check_name("queue", name)

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    def __repr__(self) -> str:
        return f"orthanc_py.queue.Queue({self._name!r})"

    def put(self, value: bytes) -> None:
        """Appends ``value`` at the back of the queue.

        :param value: ``bytes`` (or a ``bytearray``, a ``memoryview``), not empty.
        :raises TypeError: for a value that is not bytes (``str`` included).
        :raises ValueError: for an empty value, which Orthanc does not keep.
        """
        data = check_value(f"{self!r}.put()", value)
        call(QUEUES, "EnqueueValue", self._name, data)

    def get(self, timeout: float = 0.0, *, origin: QueueOrigin = QueueOrigin.FRONT) -> bytes | None:
        """Takes a value out of the queue for good (at most once); ``None`` when there is none.

        Values reserved by :meth:`reserve` are skipped.

        :param timeout: how many seconds to wait for a value when the queue has none
            (default: do not wait); the queue is asked again at intervals of up to a second.
        :param origin: ``QueueOrigin.FRONT`` (the oldest value, first in first out) or
            ``QueueOrigin.BACK`` (the newest).
        """
        where = f"{self!r}.get()"
        wait = check_seconds(where, "timeout", timeout)
        side = _origin(where, origin)

        def attempt() -> bytes | None:
            value, found = call(QUEUES, "DequeueValue", self._name, side)
            return bytes(value) if found else None

        return _poll(wait, attempt)

    def __len__(self) -> int:
        """How many values the queue holds, reserved ones included."""
        size: int = call(QUEUES, "GetQueueSize", self._name)
        return size

    def reserve(self, lease: float, timeout: float = 0.0, *,
                origin: QueueOrigin = QueueOrigin.FRONT) -> Reservation | None:
        """Reserves a value for ``lease`` seconds (at least once); ``None`` when none is available.

        The value stays in the queue, hidden from the other consumers, until
        the :class:`Reservation` is acknowledged (then it is removed) or the
        lease runs out (then it is handed out again). Needs Orthanc 1.12.10.

        :param lease: seconds the value stays reserved, rounded up to whole seconds (Orthanc counts in seconds).
        :param timeout: how many seconds to wait for a value when none is available (default: do not wait).
        :param origin: ``QueueOrigin.FRONT`` (the oldest value) or ``QueueOrigin.BACK`` (the newest).
        """
        where = f"{self!r}.reserve()"
        seconds = math.ceil(check_seconds(where, "lease", lease))
        if not 0 < seconds <= _MAX_LEASE:
            raise ValueError(f"{where} argument 'lease' must be more than 0 and at most {_MAX_LEASE} seconds, "
                             f"not {lease!r}")
        wait = check_seconds(where, "timeout", timeout)
        side = _origin(where, origin)

        def attempt() -> Reservation | None:
            value, found, value_id = call(RESERVATIONS, "ReserveQueueValue", self._name, side, seconds)
            return Reservation(self, bytes(value), int(value_id), seconds) if found else None

        return _poll(wait, attempt)


class Reservation:
    """A value reserved by :meth:`Queue.reserve`: hidden from the other consumers until acknowledged or expired.

    As a context manager, it is acknowledged when the block ends without an
    exception; after an exception it is left to expire, and the value comes
    back to the queue's consumers when :attr:`lease` has run out.
    """

    __slots__ = {
        "_acknowledged": "Whether the value was acknowledged.",
        "id": "Orthanc's identifier of the value (``int``): the same each time the value is handed out.",
        "lease": "The whole seconds the reservation lasts, counted by Orthanc from :meth:`Queue.reserve`.",
        "queue": "The :class:`Queue` the value belongs to.",
        "value": "The value (``bytes``).",
    }

    def __init__(self, queue: Queue, value: bytes, id: int, lease: int) -> None:
        self.queue = queue
        self.value = value
        self.id = id
        self.lease = lease
        self._acknowledged = False

    def __repr__(self) -> str:
        return f"<Reservation of value {self.id} of {self.queue!r} ({len(self.value)} bytes)>"

    @property
    def acknowledged(self) -> bool:
        """Whether :meth:`acknowledge` has removed the value."""
        return self._acknowledged

    def acknowledge(self) -> None:
        """Removes the value from the queue for good: it was handled. Calling it again does nothing.

        :raises LeaseExpiredError: when the lease ran out first: the value is handed out again.
        """
        if self._acknowledged:
            return
        try:
            call(RESERVATIONS, "AcknowledgeQueueValue", self.queue.name, self.id)
        except StoreUnavailableError:
            raise
        except _capi.OrthancError as error:
            if error.code != _capi.ErrorCode.UnknownResource:
                raise
            raise LeaseExpiredError(error.code, (
                f"value {self.id} of {self.queue!r} was acknowledged after its lease of {self.lease} s ran out: "
                "Orthanc hands it out again, so it will be handled once more. Make the handling idempotent, "
                "or reserve with a longer lease")) from None
        self._acknowledged = True

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.acknowledge()
        # After an exception the value is left reserved: Orthanc hands it out again when the lease runs out.


def _origin(where: str, origin: Any) -> int:
    if isinstance(origin, bool) or not isinstance(origin, int):
        raise TypeError(f"{where} argument 'origin' must be QueueOrigin.FRONT or QueueOrigin.BACK, "
                        f"not {type(origin).__name__}")
    if origin not in (QueueOrigin.FRONT, QueueOrigin.BACK):
        raise ValueError(f"{where} argument 'origin' must be QueueOrigin.FRONT or QueueOrigin.BACK, not {origin!r}")
    return int(origin)


def _poll(timeout: float, attempt: Callable[[], _T | None]) -> _T | None:
    """``attempt()``, then again at growing intervals until it gives something or ``timeout`` seconds have passed."""
    result = attempt()
    if result is not None or timeout <= 0:
        return result
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _LONGEST_PAUSE)
        result = attempt()
        if result is not None:
            return result
