# SPDX-License-Identifier: GPL-3.0-or-later
"""orthanc_py's own metrics, published beside Orthanc's at ``/tools/metrics-prometheus``.

What is counted, where, and what it is published as:

- each route (both APIs), by ``_capi_rest``'s entry and the answers of
  ``web`` and ``_official.rest``: requests, errors (an exception, or a 5xx
  answer) and the time in Python as a histogram;
- each handler of a hook, change, stored instance or DICOM SCP (``_hooks``,
  ``_events``, ``cluster``, ``_durable``, ``_official.scp``): deliveries,
  failures, and retries of change handlers;
- each durable change handler (``_durable``): its checkpoint, the changes
  of the log after it, the age of the change it is on, its dead letters,
  the stable changes it recovered and the changes it never could read;
- the change queue (``_events``): its backlog and how long its oldest event
  has waited;
- the offload pool (``offload``): its size, the calls it runs and those
  waiting for a worker;
- the claims of a cluster (``cluster``): won, lost, taken over, and writes
  that lost a race.

Counting happens on hot paths (a route answers in about 100 µs), so each
figure is a plain attribute of a ``__slots__`` object, updated in place
with no lock: CPython 3.11 and later, with the GIL, switch threads only at
calls and loop back-edges, never inside ``stats.errors += 1`` or
``buckets[i] += 1`` (4,000,000 increments from four threads, switching
every microsecond, lose none on 3.11 and 3.14; an older CPython may lose a
rare one under contention, which leaves a counter a little low). The gauges
of the offload pool go up and down around a call that blocks, where one
lost update would stay forever: they take a lock, which costs nothing next
to a call to another process.

Nothing is read until Orthanc refreshes its metrics (a monitoring tool
reads them): :func:`refresh` then sets every figure with
``SetMetricsValue`` (``SetMetricsIntegerValue`` from Orthanc 1.12.1 on,
exact where the float of older ones rounds counts past 2^24). It is one
more handler of the refresh-metrics hook, beside those of the script,
added at each run by the runtime.

``"Python": {"Metrics": false}`` turns them off (:data:`enabled`, which
the runtime sets at start, before the script loads): routes are then
registered with an entry that neither reads the clock nor counts, and
:func:`refresh` is not added. Handlers still count their calls (an
increment or two), which nothing publishes.

Orthanc writes each metric as ``name value timestamp`` and takes the name as
given: labels are written into it, ``name{label="value"}``, the label values
escaped as Prometheus' text format wants them. Orthanc keeps its metrics in
a map sorted by name, so the lines of one name stay together (every
character a name may hold sorts before ``{``), as the format requires.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
import time
from typing import Callable

from . import _capi, _sdk

PREFIX = "orthanc_py_"

enabled = True
"""``Python.Metrics``: whether this run counts its routes and publishes its figures.

Set by the runtime at start, before the script loads: a route's entry is
chosen when the route is registered, so turning it off costs nothing per
request."""

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""The upper bounds, in seconds, of the buckets of a route's time histogram (``le``); the last is ``+Inf``.

From 100 µs, a route that only answers, to 10 s, one that waits on
other servers."""

bucket_of = bisect.bisect_left
"""``bucket_of(BUCKETS, seconds)``: the bucket an observation falls in (``le`` includes its bound)."""

clock = time.monotonic
"""The clock of a route's time: on Linux, ``perf_counter``'s own (``CLOCK_MONOTONIC``), read with fewer instructions."""


def label_value(text: str) -> str:
    """``text`` as a label value of Prometheus' text format, quotes included.

    A NUL would end the name where Orthanc reads it as a C string: it becomes ``?``.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\0", "?")
    return f'"{escaped}"'


def _labels(**labels: str) -> str:
    return "{" + ",".join(f"{name}={label_value(value)}" for name, value in labels.items()) + "}"


def _name(metric: str, labels: str = "") -> bytes:
    return f"{PREFIX}{metric}{labels}".encode()


# --- what is counted ---------------------------------------------------------------------------

class RouteStats:
    """The figures of one route: its errors, and the time of its requests as a histogram.

    The number of requests is the sum of the buckets: one increment fewer
    on each request.
    """

    __slots__ = ("_names", "buckets", "errors", "seconds")

    def __init__(self, route: str) -> None:
        self.seconds = 0.0
        """The time in Python of every request, in seconds: from the route's entry to the answer given to Orthanc
        (which sends a plain answer after that; a streamed one is sent during it)."""
        self.errors = 0
        """Requests that raised, or were answered with a 5xx status."""
        self.buckets = [0] * (len(BUCKETS) + 1)
        """How many requests took at most ``BUCKETS[i]`` seconds and more than the bound before (not cumulative)."""
        labels = _labels(route=route)
        bounds = [*(repr(bound) for bound in BUCKETS), "+Inf"]
        self._names = (
            _name("route_requests_total", labels),
            _name("route_errors_total", labels),
            _name("route_duration_seconds_sum", labels),
            _name("route_duration_seconds_count", labels),
            tuple(_name("route_duration_seconds_bucket", _labels(route=route, le=bound)) for bound in bounds),
        )

    def _publish(self, put: _Put) -> None:
        requests, errors, total, count, bucket_names = self._names
        counts = list(self.buckets)  # one copy: the buckets and the count agree
        observed = sum(counts)
        put(requests, observed)
        put(errors, self.errors)
        put(total, self.seconds)
        put(count, observed)
        cumulative = 0
        for name, number in zip(bucket_names, counts):
            cumulative += number
            put(name, cumulative)


class HandlerStats:
    """The figures of one handler: the calls it got, those that failed, and (change handlers) those retried."""

    __slots__ = ("_names", "_retried", "deliveries", "failures", "retries")

    def __init__(self, kind: str, handler: str) -> None:
        self.deliveries = 0
        """Calls of the handler (changes of the types it asked for, instances, requests...)."""
        self.failures = 0
        """Calls that raised, or returned something the hook does not take."""
        self.retries = 0
        """Calls made again after a failure (durable and ``once_per_cluster`` change handlers)."""
        self._retried = kind in ("change", "durable_change")  # the only handlers a failure can be retried for
        labels = _labels(kind=kind, handler=handler)
        self._names = (_name("handler_deliveries_total", labels), _name("handler_failures_total", labels),
                       _name("handler_retries_total", labels))

    def _publish(self, put: _Put) -> None:
        deliveries, failures, retries = self._names
        put(deliveries, self.deliveries)
        put(failures, self.failures)
        if self._retried:
            put(retries, self.retries)


class DurableStats:
    """Where a durable change handler stands in Orthanc's change log (set by its thread, read here)."""

    __slots__ = ("_names", "checkpoint", "dead_letters", "last_seq", "lost", "oldest", "recovered")

    def __init__(self, handler: str) -> None:
        self.checkpoint = 0
        """The number of the last change it finished, as last written to Orthanc's database."""
        self.last_seq = 0
        """The number of the last change of the log it knows of."""
        self.oldest = 0.0
        """When the change it is on was logged (epoch seconds); 0 when it has caught up."""
        self.dead_letters = 0
        """Changes it gave up on, kept to be replayed."""
        self.recovered = 0
        """``STABLE_*`` changes it made for resources whose own a crash lost."""
        self.lost = 0
        """Changes removed from the log before it read them."""
        labels = _labels(handler=handler)
        self._names = tuple(_name(metric, labels) for metric in (
            "durable_checkpoint", "durable_backlog", "durable_oldest_age_seconds", "durable_dead_letters",
            "durable_recovered_total", "durable_lost_total"))

    def backlog(self) -> int:
        """Changes of the log after the checkpoint (every type, its own or not)."""
        return max(0, self.last_seq - self.checkpoint)

    def _publish(self, put: _Put) -> None:
        oldest = self.oldest
        values = (self.checkpoint, self.backlog(), max(0.0, time.time() - oldest) if oldest else 0.0,
                  self.dead_letters, self.recovered, self.lost)
        for name, value in zip(self._names, values):
            put(name, value)


class OffloadStats:
    """The calls offloaded to worker processes: running, waiting for a worker, done, crashed."""

    __slots__ = ("_lock", "calls", "crashes", "elsewhere", "in_pool", "workers")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.workers = 0
        """Worker processes of orthanc_py's pool (0 until the first offloaded call starts it)."""
        self.in_pool = 0
        """Calls submitted to orthanc_py's pool and not finished: those running, then those waiting."""
        self.elsewhere = 0
        """Calls submitted to another executor (a dask cluster's) and not finished."""
        self.calls = 0
        """Calls finished, whatever the executor and the outcome."""
        self.crashes = 0
        """Calls failed because the worker running them died."""

    def started(self, own_pool: bool) -> None:
        """A call was submitted: to orthanc_py's pool (``own_pool``) or another executor."""
        with self._lock:
            if own_pool:
                self.in_pool += 1
            else:
                self.elsewhere += 1

    def finished(self, own_pool: bool, crashed: bool = False) -> None:
        """A call :meth:`started` is over; ``crashed`` when its worker died."""
        with self._lock:
            if own_pool:
                self.in_pool -= 1
            else:
                self.elsewhere -= 1
            self.calls += 1
            if crashed:
                self.crashes += 1

    def _publish(self, put: _Put) -> None:
        with self._lock:
            workers, in_pool, elsewhere, calls, crashes = (self.workers, self.in_pool, self.elsewhere, self.calls,
                                                           self.crashes)
        # The pool starts calls in order, as soon as a worker is free: the
        # first `workers` of them run, the others wait.
        busy = min(in_pool, workers)
        put(_OFFLOAD_NAMES[0], workers)
        put(_OFFLOAD_NAMES[1], busy)
        put(_OFFLOAD_NAMES[2], in_pool - busy)
        put(_OFFLOAD_NAMES[3], elsewhere)
        put(_OFFLOAD_NAMES[4], calls)
        put(_OFFLOAD_NAMES[5], crashes)


_OFFLOAD_NAMES = tuple(_name(metric) for metric in (
    "offload_workers", "offload_busy", "offload_waiting", "offload_external_in_flight", "offload_calls_total",
    "offload_crashes_total"))


class ClusterStats:
    """The claims of ``once_per_cluster`` work on this node."""

    __slots__ = ("conflicts", "lost", "taken_over", "won")

    def __init__(self) -> None:
        self.won = 0
        """Claims this node won: it does the work."""
        self.lost = 0
        """Claims it did not win: another node held a live lease, or the work was done already."""
        self.taken_over = 0
        """Claims won from another node whose lease had ended or whose handler had failed (counted in ``won`` too)."""
        self.conflicts = 0
        """Writes of claims refused because another node wrote first (HTTP 409); read again and retried."""

    def _publish(self, put: _Put) -> None:
        for name, value in zip(_CLUSTER_NAMES, (self.won, self.lost, self.taken_over, self.conflicts)):
            put(name, value)


_CLUSTER_NAMES = tuple(_name(metric) for metric in (
    "cluster_claims_won_total", "cluster_claims_lost_total", "cluster_claims_taken_over_total",
    "cluster_claim_conflicts_total"))

_CHANGE_NAMES = tuple(_name(metric) for metric in (
    "change_backlog", "change_oldest_age_seconds", "changes_delivered_total"))

ChangeQueue = Callable[[], "tuple[int, float, int]"]
"""Reads the change queue: ``(events waiting, seconds the oldest has waited, events delivered)``."""


def _empty_queue() -> tuple[int, float, int]:
    return 0, 0.0, 0


# --- the registry of a run -------------------------------------------------------------------

_routes: dict[str, RouteStats] = {}
_handlers: dict[tuple[str, str], HandlerStats] = {}
_durable: dict[str, DurableStats] = {}
offload = OffloadStats()
"""The offload pool's figures (:mod:`orthanc_py.offload` keeps them)."""
cluster = ClusterStats()
"""The claims' figures (:mod:`orthanc_py.cluster` keeps them)."""
_change_queue: ChangeQueue = _empty_queue


def route(name: str) -> RouteStats:
    """The figures of the route ``name`` (its rule, or its regular expression), made on first use.

    Routes of one name share them: a decorator route and an ``orthanc``
    module callback on the same path are one route to Orthanc.
    """
    stats = _routes.get(name)
    if stats is None:
        stats = _routes.setdefault(name, RouteStats(name))
    return stats


def handler(kind: str, name: str) -> HandlerStats:
    """The figures of the handler ``name`` of ``kind`` (``"change"``, ``"http_filter"``...), made on first use.

    Handlers of one kind and name share them (two functions ``forward`` in two modules are one).
    """
    key = (kind, name)
    stats = _handlers.get(key)
    if stats is None:
        stats = _handlers.setdefault(key, HandlerStats(kind, name))  # setdefault: one wins a race, under the GIL
    return stats


def durable(name: str) -> DurableStats:
    """The figures of the durable change handler ``name``, made on first use."""
    stats = _durable.get(name)
    if stats is None:
        stats = _durable.setdefault(name, DurableStats(name))
    return stats


def watch_changes(queue: ChangeQueue) -> None:
    """Makes ``queue()`` the reading of the change queue published (the dispatcher of the run)."""
    global _change_queue
    _change_queue = queue


def new_run() -> None:
    """Forgets the previous run's figures: Orthanc restarting in the process starts its metrics afresh too."""
    global offload, cluster, _change_queue
    _routes.clear()
    _handlers.clear()
    _durable.clear()
    offload = OffloadStats()
    cluster = ClusterStats()
    _change_queue = _empty_queue


# --- publishing ---------------------------------------------------------------------------------

_Put = Callable[[bytes, "int | float"], None]

_INTEGER_SINCE = (1, 12, 1)  # OrthancPluginSetMetricsIntegerValue
_DEFAULT = int(_sdk.OrthancPluginMetricsType.Default)  # the value as set (a Timer keeps a maximum)


def _setter() -> _Put:
    """Sets one metric in Orthanc: integers exactly where Orthanc takes them, floats as its float metrics.

    The params structures are this refresh's own: two scrapes may refresh at once.
    """
    floats = _sdk._OrthancPluginSetMetricsValue()
    floats.type = _DEFAULT
    float_address, float_service = ctypes.addressof(floats), int(_capi.Service.SetMetricsValue)
    call = _capi.call
    if _capi.release < _INTEGER_SINCE:
        def put(name: bytes, value: int | float) -> None:
            floats.name = name
            floats.value = value
            call(float_service, float_address, "SetMetricsValue")

        return put
    integers = _sdk._OrthancPluginSetMetricsIntegerValue()
    integers.type = _DEFAULT
    integer_address, integer_service = ctypes.addressof(integers), int(_capi.Service.SetMetricsIntegerValue)

    def put_exactly(name: bytes, value: int | float) -> None:
        if type(value) is int:
            integers.name = name
            integers.value = value
            call(integer_service, integer_address, "SetMetricsIntegerValue")
        else:
            floats.name = name
            floats.value = value
            call(float_service, float_address, "SetMetricsValue")

    return put_exactly


def refresh() -> None:
    """Sets every figure in Orthanc's metrics: the handler Orthanc's refresh-metrics hook calls."""
    put = _setter()
    for stats in list(_routes.values()):
        stats._publish(put)
    for handler_stats in list(_handlers.values()):
        handler_stats._publish(put)
    for durable_stats in list(_durable.values()):
        durable_stats._publish(put)
    backlog, oldest, delivered = _change_queue()
    put(_CHANGE_NAMES[0], backlog)
    put(_CHANGE_NAMES[1], oldest)
    put(_CHANGE_NAMES[2], delivered)
    offload._publish(put)
    cluster._publish(put)
