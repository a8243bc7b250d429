# SPDX-License-Identifier: GPL-3.0-or-later
"""Work done once per cluster of Orthanc nodes that share one database.

Several nodes on one PostgreSQL database see the same studies, but Orthanc
fires a change only on the node that received the instances: when a study
arrives through two nodes, both fire ``STABLE_STUDY``; a timer runs on every
node. Here each such piece of work is *claimed* first, through Orthanc itself:

- A claim is a JSON value in the user-defined metadata ``orthanc_py_claim``
  of the resource concerned (the study of a ``STABLE_STUDY``), one entry per
  handler: ``{"node": ..., "until": <epoch seconds>, "done": false}``.
- It is written with Orthanc's revisions: ``PUT .../metadata/orthanc_py_claim``
  with ``If-Match`` set to the ETag just read. With ``"CheckRevisions": true``
  Orthanc also refuses to overwrite an existing metadata without ``If-Match``,
  so creating the first claim is a compare-and-set as well. Orthanc checks the
  revision and writes in one database transaction: of two nodes writing
  after the same read, one gets ``200``, the other ``409 Conflict`` and reads
  again.
- The winner runs the handler while renewing its lease, then marks the entry
  ``done``. A node that lost to a live lease checks again when that lease
  ends: if the winner died (or its handler raised, which releases the claim),
  it takes the work over. Work is therefore done once, except when a node
  dies after the work and before marking it done: then it is done again by
  the node that takes over (at least once, never zero times).

Periodic jobs (:func:`orthanc_py.every` with ``once_per_cluster=True``) claim period
number ``floor(time / seconds)`` the same way, on one small instance that
orthanc_py stores for the purpose (patient ``ORTHANC_PY_CLUSTER``); nodes'
clocks are assumed synchronised (NTP).

Nodes need ``"CheckRevisions": true`` and ``"UserMetadata":
{"orthanc_py_claim": 4242}`` (any free number from 1024 to 65535) in their
configuration; :class:`~orthanc_py.cluster_server.OrthancCluster` sets both.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from . import _capi, _metrics, _runtime, rest
from ._enums import ResourceType

__all__ = [
    "CLAIM_METADATA", "DEFAULT_LEASE", "RETRIES", "ClaimResult", "ClusterConfigError", "Outcome", "claim", "node_id",
    "run_claimed",
]

CLAIM_METADATA = "orthanc_py_claim"
"""The user-defined metadata that holds the claims of a resource."""

DEFAULT_LEASE = 60.0
"""Seconds a claim holds without renewal; a running handler renews it every third of that."""

RETRIES = 3
"""How many times one node runs a ``once_per_cluster`` change handler that raises (``lease`` seconds apart)."""

# The instance that holds the claims of periodic jobs: fixed UIDs, so every
# node that stores it stores the same one (Orthanc answers "AlreadyStored").
_ANCHOR_TAGS = {
    "PatientID": "ORTHANC_PY_CLUSTER",
    "PatientName": "orthanc_py^cluster",
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.1466.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.10.1466.1.1",
    "SOPInstanceUID": "1.2.826.0.1.3680043.10.1466.1.1.1",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
    "StudyDescription": "orthanc_py: claims of periodic jobs (once_per_cluster)",
}



def _orthanc_id(*parts: str) -> str:
    """The Orthanc ID of a resource: the SHA-1 of its DICOM identifiers, as Orthanc computes it."""
    digest = hashlib.sha1("|".join(parts).encode("utf-8")).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


_ANCHOR_UIDS = [_ANCHOR_TAGS[name] for name in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
_ANCHOR_IDS = frozenset(_orthanc_id(*_ANCHOR_UIDS[:count]) for count in range(1, 5))

_LEVELS = {
    int(ResourceType.PATIENT): "patients",
    int(ResourceType.STUDY): "studies",
    int(ResourceType.SERIES): "series",
    int(ResourceType.INSTANCE): "instances",
}


class ClusterConfigError(RuntimeError):
    """The node's configuration lacks what claims need; the message names the options to set."""


class Outcome(Enum):
    """What :func:`claim` found."""

    WON = "won"
    """This node holds the claim now: it does the work."""
    HELD = "held"
    """Another node holds a live lease: look again when it ends."""
    DONE = "done"
    """The work is done (or a later period was claimed): nothing to do."""
    GONE = "gone"
    """The resource does not exist (deleted): there is nothing to claim on."""


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of :func:`claim`, and until when the lease that beat us holds."""

    outcome: Outcome
    until: float = 0.0


_node: str | None = None


def node_id() -> str:
    """This node's name in claims: Orthanc's ``Name``, the host and the process id."""
    global _node
    if _node is None:
        config = json.loads(_capi.get_configuration())
        _node = f"{config.get('Name', 'orthanc')}@{socket.gethostname()}:{os.getpid()}"
    return _node


def check_configuration() -> None:
    """Raises :class:`ClusterConfigError` unless claims can work on this node."""
    config = json.loads(_capi.get_configuration())
    missing = []
    if config.get("CheckRevisions") is not True:
        missing.append('"CheckRevisions": true')
    if CLAIM_METADATA not in (config.get("UserMetadata") or {}):
        missing.append(f'"UserMetadata": {{"{CLAIM_METADATA}": 4242}} (any free number from 1024 to 65535)')
    if missing:
        raise ClusterConfigError(
            "once_per_cluster needs, in the configuration of every node: " + " and ".join(missing)
            + "; see the 'Scale-out' page of the documentation"
        )


def _read(resource: str) -> tuple[dict[str, Any] | None, str | None]:
    """The claims of ``resource`` (``/studies/<id>``) and their ETag; ``(None, None)`` when it is gone."""
    answer = rest.request("GET", f"{resource}/metadata/{CLAIM_METADATA}")
    if answer.status == 200:
        try:
            claims = answer.json()
        except ValueError:
            claims = {}
        return (claims if isinstance(claims, dict) else {}), answer.headers.get("etag")
    if answer.status == 404:
        exists = rest.request("GET", resource).status
        return ({}, None) if exists == 200 else (None, None)
    raise RuntimeError(f"orthanc_py: reading the claims of {resource} answered HTTP {answer.status}: "
                       f"{answer.body[:200]!r}")


def _write(resource: str, claims: dict[str, Any], etag: str | None) -> bool:
    """Compare-and-set: ``True`` when written, ``False`` when another node wrote first."""
    headers = {"If-Match": etag} if etag else {}
    answer = rest.request("PUT", f"{resource}/metadata/{CLAIM_METADATA}", json.dumps(claims, sort_keys=True), headers)
    if answer.status == 200:
        return True
    if answer.status == 409:  # a newer revision (or a claim created meanwhile): read again
        _metrics.cluster.conflicts += 1
        return False
    if answer.status == 404:
        return False
    raise RuntimeError(f"orthanc_py: writing the claims of {resource} answered HTTP {answer.status}: "
                       f"{answer.body[:200]!r}")


def _update(resource: str, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> None:
    """Read-modify-write of one entry until it sticks; ``change`` returns ``None`` to leave it."""
    while True:
        claims, etag = _read(resource)
        if claims is None:
            return
        entry = change(claims.get(key))
        if entry is None:
            return
        claims[key] = entry
        if _write(resource, claims, etag):
            return


def claim(resource: str, key: str, lease: float = DEFAULT_LEASE, period: int | None = None) -> ClaimResult:
    """Tries to claim the work ``key`` on ``resource`` (a REST path such as ``/studies/<id>``).

    :param lease: seconds the claim holds unless renewed (:func:`renew`).
    :param period: for periodic work, the period number: a claim of an
        earlier period is free, one of a later period means this one is over.
    :returns: :attr:`Outcome.WON` for exactly one node among those racing.
    """
    me = node_id()
    while True:
        claims, etag = _read(resource)
        if claims is None:
            return ClaimResult(Outcome.GONE)
        entry = claims.get(key)
        now = time.time()
        taking_over = None
        updated = _last_update(resource) if period is None else None
        if isinstance(entry, dict) and (period is None or entry.get("period", -1) >= period):
            if (period is not None and entry.get("period", -1) > period) or (
                    entry.get("done") and not _changed_since(entry, updated)):
                _metrics.cluster.lost += 1
                return ClaimResult(Outcome.DONE)
            until = float(entry.get("until", 0))
            if until > now and entry.get("node") != me:
                _metrics.cluster.lost += 1
                return ClaimResult(Outcome.HELD, until)
            if entry.get("node") != me and not entry.get("done"):
                taking_over = (entry.get("node"), "its handler failed" if until == 0 else "its lease ended")
        claims[key] = {"node": me, "until": now + lease, "done": False}
        if period is not None:
            claims[key]["period"] = period
        if updated:
            claims[key]["updated"] = updated
        if _write(resource, claims, etag):
            figures = _metrics.cluster
            figures.won += 1
            if taking_over is not None:
                figures.taken_over += 1
                # Worth a line in the log: a node died, hung or failed with this work.
                _capi.log_warning(f"orthanc_py: {me} takes over {key} of {resource} from {taking_over[0]} "
                                  f"({taking_over[1]})")
            return ClaimResult(Outcome.WON)


def _last_update(resource: str) -> str | None:
    """The resource's ``LastUpdate`` (Orthanc sets it when an instance is added below it), or ``None``."""
    answer = rest.request("GET", f"{resource}/metadata/LastUpdate")
    return answer.body.decode("ascii", "replace") if answer.status == 200 else None


def _changed_since(entry: dict[str, Any], updated: str | None) -> bool:
    """Whether instances arrived below the resource after the work of the done ``entry`` began.

    Both are Orthanc's time stamps (``20261206T221500``), which sort as text.
    A claim written before claims recorded it has no ``updated``: done for good.
    """
    return bool(updated and entry.get("updated") and updated > entry["updated"])


def _mine(entry: dict[str, Any] | None) -> bool:
    return isinstance(entry, dict) and entry.get("node") == node_id() and not entry.get("done")


def renew(resource: str, key: str, lease: float = DEFAULT_LEASE) -> None:
    """Extends this node's claim of ``key`` by ``lease`` seconds from now."""
    _update(resource, key, lambda e: {**e, "until": time.time() + lease} if e is not None and _mine(e) else None)


def finish(resource: str, key: str) -> None:
    """Marks this node's claim of ``key`` as done: no node does the work again."""
    _update(resource, key, lambda e: {**e, "done": True} if e is not None and _mine(e) else None)


def release(resource: str, key: str) -> None:
    """Gives up this node's claim of ``key`` (the work failed): another node may take it at once."""
    _update(resource, key, lambda e: {**e, "until": 0} if e is not None and _mine(e) else None)


def run_claimed(resource: str, key: str, work: Callable[[], Any], lease: float = DEFAULT_LEASE,
                period: int | None = None) -> ClaimResult:
    """Claims ``key`` and, when this node wins, runs ``work()`` while renewing the lease.

    ``work`` that raises releases the claim (and the exception goes on);
    otherwise the claim is marked done.
    """
    with _running_lock:
        if (resource, key) in _running:
            # This process runs it already (a change handled while its lease's
            # check is due): the claim names this node, so claim() would win again.
            return ClaimResult(Outcome.HELD, time.time() + lease)
        _running.add((resource, key))
    try:
        return _run_claimed(resource, key, work, lease, period)
    finally:
        with _running_lock:
            _running.discard((resource, key))


_running: set[tuple[str, str]] = set()
_running_lock = threading.Lock()


def _run_claimed(resource: str, key: str, work: Callable[[], Any], lease: float, period: int | None) -> ClaimResult:
    result = claim(resource, key, lease, period)
    if result.outcome is not Outcome.WON:
        return result
    stop = threading.Event()

    def keep_lease() -> None:
        while not stop.wait(lease / 3):
            try:
                renew(resource, key, lease)
            except Exception:
                _capi.report_exception(f"renewing the claim {key} of {resource}")

    renewer = threading.Thread(target=keep_lease, name="orthanc_py-claim-lease", daemon=True)
    renewer.start()
    try:
        work()
    except BaseException:
        stop.set()
        renewer.join()
        release(resource, key)
        raise
    stop.set()
    renewer.join()
    finish(resource, key)
    return result


# --- one timer thread: lease ends to look at again, and the periods of @every ----------

class _Scheduler:
    """Runs callables at given times (``time.time()``) on one thread of orthanc_py's."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def at(self, when: float, action: Callable[[], None]) -> None:
        with self._wake:
            if self._stopped:
                return
            heapq.heappush(self._heap, (when, next(self._counter), action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="orthanc_py-timers", daemon=True)
                self._thread.start()
                # Hooks last one run of the script; so does this scheduler.
                _runtime.when_stopping(self.stop)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._wake.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.time()))
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                _capi.report_exception("an orthanc_py timer")

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._heap.clear()
            self._wake.notify()


_scheduler = _Scheduler()


def schedule(when: float, action: Callable[[], None]) -> None:
    """Runs ``action()`` at ``when`` (``time.time()``) on orthanc_py's timer thread, until Orthanc stops.

    An action that raises is logged. The periodic jobs of
    :func:`orthanc_py.every` run here too, one at a time.
    """
    _scheduler.at(when, action)


def _new_run() -> None:
    global _scheduler, _anchor
    _scheduler.stop()
    _scheduler = _Scheduler()
    _anchor = None


_runtime.on_new_run(_new_run)


def _key(function: Callable[..., Any], what: str) -> str:
    return f"{what}:{getattr(function, '__module__', '?')}.{_capi.name_of(function)}"


def once_per_cluster(function: Callable[..., Any], lease: float = DEFAULT_LEASE) -> Callable[[Any], None]:
    """Wraps an ``on_change`` handler so that one node of the cluster runs it per resource and change type.

    A change about no resource (``ORTHANC_STARTED``...) runs on every node.
    """
    if _capi.is_attached():
        check_configuration()

    @functools.wraps(function)
    def deliver(change: Any) -> None:
        level = _LEVELS.get(int(change.resource_type))
        if change.resource_id is None or level is None:
            function(change)
            return
        resource = f"/{level}/{change.resource_id}"
        key = _key(function, change.change_type.name)
        if change.resource_id in _ANCHOR_IDS:
            return  # orthanc_py's own instance of periodic claims: no work of the script's

        def attempt(tries: int, first: bool) -> None:
            try:
                result = run_claimed(resource, key, lambda: function(change), lease)
            except Exception:
                _capi.report_exception(f"once_per_cluster handler {key} for {resource}")
                # Caught here, not by the change queue: the handler's figures are counted here.
                _metrics.handler("change", _capi.name_of(function)).failures += 1
                if tries > 1:  # released: another node that fired the change, or this one later, tries again
                    schedule(time.time() + lease, lambda: retry(tries - 1))
                return
            if result.outcome is Outcome.HELD:
                # The holder may die or fail: look again when its lease ends.
                schedule(result.until + 0.5, lambda: attempt(tries, False))
            elif result.outcome is Outcome.GONE and first:
                # Nothing to claim on (a DELETED change...): Orthanc fired it on this node only.
                # Gone at a later look, it was deleted meanwhile: nothing left to do.
                function(change)

        def retry(tries: int) -> None:
            _metrics.handler("change", _capi.name_of(function)).retries += 1
            attempt(tries, False)

        attempt(RETRIES, True)

    return deliver


# --- the periods of @every(once_per_cluster=True) -------------------------------------

_anchor: str | None = None
_anchor_lock = threading.Lock()


def _anchor_resource() -> str:
    """The REST path of the instance that holds periodic claims; stored by the first node that needs it."""
    global _anchor
    with _anchor_lock:
        if _anchor is None:
            answer = rest.request("POST", "/tools/create-dicom", {"Tags": _ANCHOR_TAGS, "Force": True})
            if answer.status != 200:
                raise RuntimeError(f"orthanc_py: storing the instance of periodic claims answered HTTP "
                                   f"{answer.status}: {answer.body[:300]!r}")
            _anchor = f"/instances/{answer.json()['ID']}"
        return _anchor


def _forget_anchor() -> None:
    global _anchor
    with _anchor_lock:
        _anchor = None


def run_period(job: Callable[[], Any], period: int, lease: float) -> ClaimResult:
    """Runs period number ``period`` of the periodic ``job`` if this node claims it (:func:`run_claimed`).

    The claims of periods live on orthanc_py's own instance, stored again
    when it was deleted. A claim of a later period means this one is over
    (:attr:`Outcome.DONE`).
    """
    key = _key(job, "every")
    result = run_claimed(_anchor_resource(), key, job, lease, period)
    if result.outcome is Outcome.GONE:  # someone deleted it: store it again
        _forget_anchor()
        result = run_claimed(_anchor_resource(), key, job, lease, period)
    return result
