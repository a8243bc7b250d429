# SPDX-License-Identifier: GPL-3.0-or-later
"""Durable change handlers: each change of Orthanc's log delivered at least once, across crashes.

``@on_change(..., durable=True)`` hands its handler to this module. Orthanc
keeps a log of its changes in its database (``GET /changes``), each with a
sequence number; a durable handler reads that log, not the live callback:

- Each handler has a *checkpoint* in Orthanc's database: the number of the
  last change it finished (handled, or given up on), and the resources whose
  ``NEW_*`` change it saw and whose ``STABLE_*`` change it waits for. At
  start, it reads the log from the checkpoint, in order; the live changes are
  the log's next entries, so there is no seam to miss or reorder. Orthanc's
  on-change callback only wakes the reader up (a change of the handler's
  types is in the log by then: Orthanc signals changes after its commit),
  and the log is read every second too, for the changes other nodes of a
  cluster write.
- The checkpoint is written after each delivery that took ``SLOW_DELIVERY``
  or more (a forward), otherwise at most every ``SAVE_SECONDS`` and at the
  end of each page of the log: after a crash, the change being delivered is
  delivered again, with the quick deliveries of the last quarter second.
  Handlers get the change's ``seq`` to make their work idempotent.
- Orthanc keeps the resources that wait to become stable in memory only: a
  crash loses their ``STABLE_*`` change. A resource whose ``NEW_*`` change
  the handler saw, without a ``STABLE_*`` change after it, gets one made
  here (``recovered=True``) once its ``LastUpdate`` is ``StableAge`` seconds
  old, if Orthanc does not send its own (see :meth:`Handler._recover`).
- A handler that raises is called again after 1, 2, 4... times ``backoff``
  seconds, ``retries`` times; then the change becomes a *dead letter*, kept
  in Orthanc's database, and the checkpoint moves on. The REST routes below
  (and ``orthanc-py dead-letters``) list, replay and discard dead letters.

Where the state is kept: the key-value store ``orthanc_py.durable`` where
Orthanc has one (1.12.8+, with a database back-end that keeps them), else
global properties from :data:`PROPERTY_DIRECTORY` on, a range the core leaves
to plugins (1024 and up). Both are per node (global properties of plugins
are not shared between nodes, and keys of the store carry the node's
database identifier), so on nodes sharing one database each node reads the
whole shared log: with ``once_per_cluster`` the claims of :mod:`.cluster`
make one node do each piece of work, and a node that finds a piece claimed
by another waits until that node has finished it or lost its lease.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import contextlib
import json
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import _calls, _capi, _capi_rest, _events, _metrics, _runtime, _sdk_calls, _stores, cluster, rest
from ._enums import ChangeType, ResourceType

Deliver = Callable[[int, int, Optional[str], int, bool], None]
"""``deliver(change_type, resource_type, resource_id, seq, recovered)``: runs the script's handler, or raises."""

LOGGED = {
    "CompletedSeries": ChangeType.COMPLETED_SERIES, "Deleted": ChangeType.DELETED,
    "NewChildInstance": ChangeType.NEW_CHILD_INSTANCE, "NewInstance": ChangeType.NEW_INSTANCE,
    "NewPatient": ChangeType.NEW_PATIENT, "NewSeries": ChangeType.NEW_SERIES, "NewStudy": ChangeType.NEW_STUDY,
    "StablePatient": ChangeType.STABLE_PATIENT, "StableSeries": ChangeType.STABLE_SERIES,
    "StableStudy": ChangeType.STABLE_STUDY, "UpdatedAttachment": ChangeType.UPDATED_ATTACHMENT,
    "UpdatedMetadata": ChangeType.UPDATED_METADATA,
}
"""The changes Orthanc's log holds, by the names ``GET /changes`` gives them, as plugins number them.

The log holds a few more (``ModifiedStudy``, ``AnonymizedSeries``...) that
plugins are never told of: durable handlers skip them too."""

LEVELS = {"Patient": ResourceType.PATIENT, "Study": ResourceType.STUDY, "Series": ResourceType.SERIES,
          "Instance": ResourceType.INSTANCE}
_PATHS = {ResourceType.PATIENT: "patients", ResourceType.STUDY: "studies", ResourceType.SERIES: "series",
          ResourceType.INSTANCE: "instances"}
STABLE_AFTER = {ChangeType.NEW_PATIENT: ChangeType.STABLE_PATIENT, ChangeType.NEW_STUDY: ChangeType.STABLE_STUDY,
                ChangeType.NEW_SERIES: ChangeType.STABLE_SERIES}
"""Which ``STABLE_*`` change Orthanc owes a resource after its ``NEW_*`` one."""
_KINDS = {name: int(kind) for name, kind in LOGGED.items()}
_LEVEL_NUMBERS = {name: int(level) for name, level in LEVELS.items()}

PAGE = 500
"""Changes read from the log at once."""
POLL_SECONDS = 1.0
"""How often the log is read when nothing woke the reader (changes written by other nodes)."""
SAVE_SECONDS = 0.25
"""How often the checkpoint records quick deliveries, and changes of other types, while the handler reads on."""
SLOW_DELIVERY = 0.01
"""A delivery that took this many seconds or more is recorded in the checkpoint at once."""
READ_INTERVAL = 0.01
"""The shortest time between two reads of the log that a change woke up: a burst of changes is read in pages."""
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0
MAX_BACKOFF = 300.0
DEAD_LETTERS_KEPT = 1000
"""Dead letters kept per handler; beyond, the oldest is dropped, with an error in the log naming it."""
WRITE_ATTEMPTS = 5
"""Writes of a checkpoint the database refused (a serialisation failure of PostgreSQL) are tried this often."""
PROPERTY_DIRECTORY = 30466
"""The global property that says which global property holds what (the next ones hold it)."""
STORE = "orthanc_py.durable"


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of one of Orthanc's UTC time stamps (``20261206T221500``); 0 when unreadable.

    Read by slicing: ``time.strptime`` costs ten times more, on a path that runs for changes of the log.
    """
    try:
        return float(calendar.timegm((int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]),
                                      int(stamp[11:13]), int(stamp[13:15]), 0, 0, 0)))
    except (TypeError, ValueError):
        return 0.0


# --- where the state is kept -----------------------------------------------------------------

class _Storage:
    """Named text values in Orthanc's database, for this node; one writer per name (its handler's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._directory: dict[str, int] | None = None
        self._kv: bool | None = None  # decided at the first use, once Orthanc's database is open
        self._prefix = ""

    def _use_kv(self) -> bool:
        if self._kv is None:
            self._kv = False
            if _capi.release >= _stores.KEY_VALUE_STORES.since:
                try:
                    _stores.call(_stores.KEY_VALUE_STORES, "GetKeyValue", STORE, "probe")
                    self._prefix = str(_sdk_calls.call("GetDatabaseServerIdentifier")) + "/"
                    self._kv = True
                except _stores.StoreUnavailableError:
                    pass  # a back-end without stores (the PostgreSQL plugin before 8.0): global properties
        return self._kv

    def _properties(self) -> dict[str, int]:
        if self._directory is None:
            text = _sdk_calls.call("GetGlobalProperty", PROPERTY_DIRECTORY, "")
            try:
                directory = json.loads(text) if text else {}
            except ValueError:
                directory = {}
            self._directory = {str(k): int(v) for k, v in directory.items()} if isinstance(directory, dict) else {}
        return self._directory

    def get(self, name: str) -> str | None:
        with self._lock:
            if self._use_kv():
                value, found = _sdk_calls.call("GetKeyValue", STORE, self._prefix + name)
                if found:
                    return bytes(value).decode("utf-8")
            # Also where an Orthanc upgraded to one with stores kept it before.
            number = self._properties().get(name)
            if number is None:
                return None
            return str(_sdk_calls.call("GetGlobalProperty", number, "")) or None

    def set(self, name: str, value: str) -> None:
        """Writes ``value``; a write the database refused is tried again (PostgreSQL's serialisation failures)."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                self._set(name, value)
                return
            except _capi.OrthancError as error:
                if error.code != _capi.ErrorCode.Database or attempt + 1 == WRITE_ATTEMPTS:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _set(self, name: str, value: str) -> None:
        with self._lock:
            if self._use_kv():
                _sdk_calls.call("StoreKeyValue", STORE, self._prefix + name, value.encode("utf-8"))
                return
            directory = self._properties()
            number = directory.get(name)
            if number is None:
                number = max(directory.values(), default=PROPERTY_DIRECTORY) + 1
                grown = {**directory, name: number}
                _sdk_calls.call("SetGlobalProperty", PROPERTY_DIRECTORY, json.dumps(grown, sort_keys=True))
                directory[name] = number  # only once the database has it
            _sdk_calls.call("SetGlobalProperty", number, value)


# --- one durable handler -----------------------------------------------------------------------

@dataclass
class _Pending:
    """A resource whose ``NEW_*`` change was seen, waiting for its ``STABLE_*`` one."""

    level: int
    seq: int
    """The number of its ``NEW_*`` change."""
    logged: float
    """When that change was logged (epoch seconds); later, when to look at the resource again."""


class _Stopped(Exception):
    """The run ends while a change is being delivered: the checkpoint stays before it."""


class Handler:
    """A durable handler: its checkpoint, its dead letters, and the thread that delivers the log to it."""

    def __init__(self, name: str, deliver: Deliver, types: frozenset[int], lease: float | None, retries: int,
                 backoff: float) -> None:
        self.name = name
        self._deliver = deliver
        self.types = types
        self._lease = lease  # once_per_cluster: the claims' lease; None: every node runs every change
        self.retries = retries
        self.backoff = backoff
        self._tracks = {int(new): int(stable) for new, stable in STABLE_AFTER.items() if int(stable) in types}
        # The changes that end a wait for stability, and every change this handler looks at at all.
        self._ends_wait = {*self._tracks.values(), int(ChangeType.DELETED)} if self._tracks else set()
        self._relevant = frozenset({*types, *self._tracks, *self._ends_wait})
        self._pending_text: str | None = None  # the JSON of `pending` as last saved; None once it changed
        self._read_at = 0.0
        self.stats = _metrics.handler("durable_change", name)
        self.figures = _metrics.durable(name)
        self.seq = 0
        self.pending: dict[str, _Pending] = {}
        self.dead: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the dead letters, read by the REST routes
        self._commands: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_at = 0.0
        self._dirty = False
        self._stable_age = 60.0
        self._started = time.time()  # when Orthanc started: it knows nothing older of its resources' stability

    # --- the thread ---

    def start(self, stable_age: float) -> None:
        self._stable_age = stable_age
        self._started = time.time()
        self._thread = threading.Thread(target=self._run, name=f"orthanc_py-durable-{self.name}", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._load()
                break
            except Exception:
                _capi.report_exception(f"durable change handler {self.name}: reading its checkpoint")
                self._stop.wait(5.0)
        while not self._stop.is_set():
            try:
                self._run_commands()
                if not self._read_page():  # caught up with the log
                    self._recover()
                    self._save(force=True)
                    if self._wake.wait(self._next_wait()):
                        time.sleep(max(0.0, self._read_at + READ_INTERVAL - time.monotonic()))
                    self._wake.clear()
            except _Stopped:
                break
            except Exception:
                if self._stop.is_set():
                    break
                _capi.report_exception(f"durable change handler {self.name}: reading Orthanc's change log")
                self._stop.wait(5.0)
        with contextlib.suppress(Exception):  # Orthanc may be stopping: the checkpoint of the last write stands
            self._save(force=True)
        for _, future in self._take_commands():
            future.set_exception(RuntimeError("Orthanc is stopping"))

    def _next_wait(self) -> float:
        due = [p.logged for p in self.pending.values()]
        if not due:
            return POLL_SECONDS
        return max(0.05, min(POLL_SECONDS, min(due) + self._stable_age - time.time()))

    def _recovery_due(self) -> bool:
        now = time.time() - self._stable_age
        return any(p.logged <= now for p in self.pending.values())

    # --- the checkpoint ---

    def _load(self) -> None:
        text = _storage.get(f"{self.name}/checkpoint")
        dead = _storage.get(f"{self.name}/dead-letters")
        with self._lock:
            self.dead = json.loads(dead) if dead else []
        self.figures.dead_letters = len(self.dead)
        last = int(rest.get_json("/changes?last").get("Last", 0))
        if text is None:
            self.seq = last
            self._dirty = True
            self._save(force=True)
            _capi.log_warning(f"orthanc_py: the durable change handler {self.name} starts after change {last}, "
                              "the last of Orthanc's log: it is delivered the changes from now on")
        else:
            state = json.loads(text)
            self.seq = int(state["seq"])
            self.pending = {rid: _Pending(int(p[0]), int(p[1]), float(p[2]))
                            for rid, p in state.get("pending", {}).items()}
            oldest = rest.get_json("/changes?since=0&limit=1").get("Changes") or []
            if oldest and int(oldest[0]["Seq"]) > self.seq + 1:
                self._gap(int(oldest[0]["Seq"]))
        self.figures.checkpoint = self.seq
        self.figures.last_seq = last

    def _gap(self, first: int) -> None:
        _capi.log_error(
            f"orthanc_py: CHANGES LOST for the durable change handler {self.name}: its checkpoint is change "
            f"{self.seq}, and Orthanc's log now starts at change {first}: changes {self.seq + 1} to {first - 1} "
            "were removed from the log (DELETE /changes, or a database restored from a backup) before it read "
            "them, and are not delivered. It goes on from change " + str(first))
        self.figures.lost += first - self.seq - 1

    def _save(self, force: bool) -> None:
        if not self._dirty or (not force and time.monotonic() - self._saved_at < SAVE_SECONDS):
            return
        if self._pending_text is None:  # encoded again only when it changed: it may hold many studies
            self._pending_text = json.dumps({rid: [p.level, p.seq, p.logged] for rid, p in self.pending.items()})
        _storage.set(f"{self.name}/checkpoint", f'{{"seq": {int(self.seq)}, "pending": {self._pending_text}}}')
        self._saved_at = time.monotonic()
        self._dirty = False
        self.figures.checkpoint = self.seq

    # --- reading the log ---

    def _read_page(self) -> bool:
        """Delivers the next page of the log; ``False`` once the handler has caught up with it.

        Before a stable change is recovered, caught up means an empty read,
        not a page that said it was the last: delivering its changes took
        time, and Orthanc logs on meanwhile.
        """
        self._read_at = time.monotonic()
        page = rest.get_json(f"/changes?since={self.seq}&limit={PAGE}")
        changes = page.get("Changes") or []
        if not changes:
            return False
        if int(changes[0]["Seq"]) > self.seq + 1:
            oldest = rest.get_json("/changes?since=0&limit=1").get("Changes") or []
            if oldest and int(oldest[0]["Seq"]) == int(changes[0]["Seq"]):  # not a gap of numbers: a cleared log
                self._gap(int(changes[0]["Seq"]))
        # How far the log goes, for the backlog: this page's end, or the log's when more pages follow.
        last = page.get("Last", 0) if page.get("Done", True) else rest.get_json("/changes?last").get("Last", 0)
        self.figures.last_seq = max(self.figures.last_seq, int(last))
        self.figures.oldest = _epoch(changes[0].get("Date", ""))
        for change in changes:
            self._one(change)
        self.figures.oldest = 0.0
        self._save(force=True)
        return not page.get("Done", True) or self._recovery_due()

    def _one(self, change: dict[str, Any]) -> None:
        # Runs for each change of the log, most of them of no interest (NEW_INSTANCE...): cheap first.
        seq = int(change["Seq"])
        kind = _KINDS.get(change.get("ChangeType", ""), -1)
        if kind in self._relevant:
            level = _LEVEL_NUMBERS.get(change.get("ResourceType", ""))
            rid = change.get("ID")
            if level is not None and rid:
                if kind in self._tracks:
                    self.pending[rid] = _Pending(level, seq, _epoch(change.get("Date", "")))
                    self._pending_text = None
                elif kind in self._ends_wait and rid in self.pending:
                    del self.pending[rid]
                    self._pending_text = None
                if kind in self.types:
                    self.figures.oldest = _epoch(change.get("Date", ""))
                    started = time.monotonic()
                    self._handle(kind, level, rid, seq, False)
                    self.seq = seq
                    self._dirty = True
                    # Work that took time is recorded at once: after a crash, only the change in progress
                    # comes again. Quick deliveries are recorded every SAVE_SECONDS, and at each page's end.
                    self._save(force=time.monotonic() - started >= SLOW_DELIVERY)
                    return
        self.seq = seq
        self._dirty = True

    def _recover(self) -> None:
        """Makes the ``STABLE_*`` changes a crash lost, for the resources stable by now.

        A resource last updated before this run started was never seen by
        the Orthanc running now, which will not send its ``STABLE_*`` change:
        it gets one ``StableAge`` seconds after its ``LastUpdate``. One
        updated since is Orthanc's to send: it gets one here only if Orthanc
        has not sent it ``StableAge`` seconds after it was due (the node that
        received it died, in a cluster). With ``once_per_cluster``, every
        resource gets that grace: another node, alive, may be counting its
        ``StableAge``. ``LastUpdate`` counts whole seconds: one of the second
        the run started counts as updated during the run.

        One recovered change at most per call, and only if the log has
        nothing new: the loop reads the log again first, where Orthanc may
        have logged the real change meanwhile.
        """
        now = time.time()
        for rid, waiting in sorted(self.pending.items(), key=lambda item: item[1].seq):
            if now < waiting.logged + self._stable_age:
                continue
            level = ResourceType(waiting.level)
            answer = rest.request("GET", f"/{_PATHS[level]}/{rid}")
            if answer.status == 404:
                del self.pending[rid]  # deleted meanwhile: nothing to deliver
                self._pending_text = None
                self._dirty = True
                continue
            resource = answer.json()
            updated = _epoch(resource.get("LastUpdate", "")) or waiting.logged
            alone = self._lease is None and updated + 1 < self._started
            grace = 0.0 if alone else self._stable_age
            if not resource.get("IsStable", True):
                waiting.logged = now  # Orthanc counts its StableAge again: look after it
                continue
            if now < updated + self._stable_age + grace:
                waiting.logged = updated + grace
                continue
            if rest.get_json(f"/changes?since={self.seq}&limit=1").get("Changes"):
                return  # logged meanwhile, perhaps the real change: the log first
            stable = STABLE_AFTER[_NEW_OF_LEVEL[level]]
            _capi.log_warning(f"orthanc_py: {stable.name} of {level.name.lower()} {rid} was never logged "
                              f"(Orthanc stopped before it was stable?): the durable change handler {self.name} "
                              f"gets it now, recovered (seq {waiting.seq}, its NEW change)")
            self.figures.recovered += 1
            self._handle(int(stable), int(level), rid, waiting.seq, True)
            del self.pending[rid]  # after: a stop during the delivery keeps it for the next start
            self._pending_text = None
            self._dirty = True
            self._save(force=True)
            return

    # --- delivering one change ---

    def _handle(self, kind: int, level: int, rid: str | None, seq: int, recovered: bool) -> None:
        """Delivers one change with its retries; a change that keeps failing becomes a dead letter."""
        attempts = 0
        while True:
            attempts += 1
            error = self._attempt(kind, level, rid, seq, recovered)
            if error is None:
                return
            if attempts > self.retries:
                self._bury(kind, level, rid, seq, recovered, attempts, error)
                return
            delay = min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF)
            _capi.log_warning(f"orthanc_py: the durable change handler {self.name} failed on change {seq} "
                              f"({ChangeType(kind).name} of {rid}): {error}; attempt {attempts} of "
                              f"{self.retries + 1}, the next in {delay:g} s")
            if self._stop.wait(delay):
                raise _Stopped
            self.stats.retries += 1

    def _attempt(self, kind: int, level: int, rid: str | None, seq: int, recovered: bool) -> str | None:
        """One call of the handler (under a claim with ``once_per_cluster``); the error it raised, or ``None``."""
        self.stats.deliveries += 1
        try:
            if self._lease is None or rid is None or rid in cluster._ANCHOR_IDS:
                self._deliver(kind, level, rid, seq, recovered)
            else:
                self._claimed(kind, level, rid, seq, recovered)
            return None
        except _Stopped:
            raise
        except BaseException as error:  # SystemExit too: one change must not end the handler's thread
            self.stats.failures += 1
            _capi.report_exception(f"durable change handler {self.name} on change {seq} "
                                   f"({ChangeType(kind).name} of {rid})")
            return f"{type(error).__name__}: {error}"

    def _claimed(self, kind: int, level: int, rid: str, seq: int, recovered: bool) -> None:
        resource = f"/{_PATHS[ResourceType(level)]}/{rid}"
        key = f"{ChangeType(kind).name}:{self.name}"
        lease = self._lease or cluster.DEFAULT_LEASE
        while True:
            result = cluster.run_claimed(resource, key, lambda: self._deliver(kind, level, rid, seq, recovered),
                                         lease)
            if result.outcome is cluster.Outcome.HELD:
                # Another node does it: the checkpoint waits until it is done (looked at every
                # second) or its lease ends, when this node takes the work over.
                if self._stop.wait(min(1.0, max(0.1, result.until - time.time() + 0.5))):
                    raise _Stopped
                continue
            if result.outcome is cluster.Outcome.GONE:
                self._deliver(kind, level, rid, seq, recovered)  # nothing left to claim on (a DELETED change)
            return

    def _bury(self, kind: int, level: int, rid: str | None, seq: int, recovered: bool, attempts: int,
              error: str) -> None:
        letter = {"Seq": seq, "ChangeType": ChangeType(kind).name, "ResourceType": ResourceType(level).name,
                  "ResourceId": rid, "Recovered": recovered, "Attempts": attempts, "Error": error,
                  "FailedAt": time.strftime("%Y%m%dT%H%M%S", time.gmtime())}
        _capi.log_error(f"orthanc_py: the durable change handler {self.name} gave up on change {seq} "
                        f"({letter['ChangeType']} of {rid}) after {attempts} attempts ({error}): kept as a dead "
                        "letter (GET /orthanc-py/dead-letters; replay with POST /orthanc-py/dead-letters/replay or "
                        "`orthanc-py dead-letters --replay`)")
        with self._lock:
            self.dead.append(letter)
            dropped = self.dead[:-DEAD_LETTERS_KEPT]
            del self.dead[:-DEAD_LETTERS_KEPT]
        for old in dropped:
            _capi.log_error(f"orthanc_py: the durable change handler {self.name} keeps {DEAD_LETTERS_KEPT} dead "
                            f"letters: the oldest, change {old['Seq']} ({old['ChangeType']} of "
                            f"{old['ResourceId']}), is dropped for good")
        self._save_dead()

    def _save_dead(self) -> None:
        with self._lock:
            text = json.dumps(self.dead)
            self.figures.dead_letters = len(self.dead)
        _storage.set(f"{self.name}/dead-letters", text)

    # --- commands of the REST routes, run on the handler's thread ---

    def command(self, action: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._commands.append((action, future))
        self._wake.set()
        return future

    def _take_commands(self) -> list[tuple[Callable[[], Any], Future[Any]]]:
        with self._lock:
            commands, self._commands = self._commands, []
        return commands

    def _run_commands(self) -> None:
        for action, future in self._take_commands():
            try:
                future.set_result(action())
            except _Stopped:
                future.set_exception(RuntimeError("Orthanc is stopping"))
                raise
            except Exception as error:
                future.set_exception(error)

    def letters(self, seqs: set[int] | None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(letter, Handler=self.name) for letter in self.dead if seqs is None or letter["Seq"] in seqs]

    def replay(self, seqs: set[int] | None) -> dict[str, Any]:
        """Calls the handler once more with each dead letter (all, or those numbered ``seqs``); keeps the failed."""
        succeeded: list[int] = []
        failed: list[int] = []
        for letter in self.letters(seqs):
            kind, level = int(ChangeType[letter["ChangeType"]]), int(ResourceType[letter["ResourceType"]])
            error = self._attempt(kind, level, letter["ResourceId"], letter["Seq"], letter["Recovered"])
            with self._lock:
                for kept in self.dead:
                    if kept["Seq"] == letter["Seq"] and kept["ChangeType"] == letter["ChangeType"]:
                        if error is None:
                            self.dead.remove(kept)
                        else:
                            kept.update(Attempts=kept["Attempts"] + 1, Error=error,
                                        FailedAt=time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
                        break
            (succeeded if error is None else failed).append(letter["Seq"])
        self._save_dead()
        if succeeded:
            _capi.log_warning(f"orthanc_py: dead letters of {self.name} replayed and delivered: changes {succeeded}")
        return {"Handler": self.name, "Succeeded": succeeded, "Failed": failed}

    def discard(self, seqs: set[int] | None) -> dict[str, Any]:
        with self._lock:
            gone = [letter["Seq"] for letter in self.dead if seqs is None or letter["Seq"] in seqs]
            self.dead = [letter for letter in self.dead if letter["Seq"] not in gone]
        self._save_dead()
        if gone:
            _capi.log_warning(f"orthanc_py: dead letters of {self.name} discarded by request: changes {gone}")
        return {"Handler": self.name, "Discarded": gone}


_NEW_OF_LEVEL = {ResourceType.PATIENT: ChangeType.NEW_PATIENT, ResourceType.STUDY: ChangeType.NEW_STUDY,
                 ResourceType.SERIES: ChangeType.NEW_SERIES}


# --- the handlers of a run ------------------------------------------------------------------------

_storage = _Storage()
_handlers: dict[str, Handler] = {}


def add(name: str, deliver: Deliver, types: frozenset[int], lease: float | None, retries: int,
        backoff: float) -> None:
    """Adds the durable handler ``name`` (the function's module and name: its checkpoint's name).

    :param types: the change types it is given; empty for every type the log holds.
    :param lease: the lease of its claims with ``once_per_cluster``, else ``None``.
    :raises ValueError: for a type Orthanc does not log, or a second handler of the same name.
    """
    logged = {int(t) for t in LOGGED.values()}
    wanted = frozenset(types) or frozenset(logged)
    others = sorted(ChangeType(t).name for t in wanted if t not in logged)
    if others:
        raise ValueError(
            f"on_change(durable=True): {', '.join(others)} {'is' if len(others) == 1 else 'are'} not kept in "
            "Orthanc's change log, which durable handlers read; handle "
            f"{'it' if len(others) == 1 else 'them'} with a handler without durable=True (or @on_startup)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"on_change(durable=True): retries must be a whole number, 0 or more, not {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff <= MAX_BACKOFF:
        raise ValueError(f"on_change(durable=True): backoff must be seconds from 0 to {MAX_BACKOFF:g}, "
                         f"not {backoff!r}")
    if name in _handlers:
        raise ValueError(f"on_change(durable=True): two durable handlers are named {name}, and the name keys "
                         "the checkpoint in Orthanc's database: rename one")
    if not _capi.is_attached():
        return  # a worker process importing the script: no log to read there
    _runtime.require_setup("@on_change(durable=True)")
    if lease is not None:
        cluster.check_configuration()
    handler = Handler(name, deliver, wanted, lease, retries, float(backoff))
    if not _handlers:
        _register_routes()
        _events.changes.wake_on({int(ChangeType.ORTHANC_STARTED)}, _start_all)
        _runtime.when_stopping(_stop_all)
    _handlers[name] = handler
    _events.changes.wake_on(wanted, lambda _kind: handler.wake())


def _start_all(_kind: int) -> None:
    config = json.loads(_capi.get_configuration())
    stable_age = config.get("StableAge", 60)
    stable_age = float(stable_age) if isinstance(stable_age, (int, float)) else 60.0
    for handler in list(_handlers.values()):
        handler.start(stable_age)


def _stop_all() -> None:
    for handler in _handlers.values():
        handler.stop()
    deadline = time.monotonic() + _runtime.settings.shutdown_grace
    for handler in _handlers.values():
        if not handler.join(max(0.0, deadline - time.monotonic())):
            _capi.log_warning(f"orthanc_py: the durable change handler {handler.name} still runs as Orthanc stops; "
                              "the change it handles is delivered again at the next start")


def _new_run() -> None:
    global _storage
    _handlers.clear()
    _storage = _Storage()


_runtime.on_new_run(_new_run)


# --- REST: /orthanc-py/durable and /orthanc-py/dead-letters ------------------------------------------

REPLAY_WAIT = 120.0
"""The longest a replay request waits for the handlers (which replay between two changes) before it answers 202."""


def _json(body: Any) -> _capi_rest.RouteResult:
    return 0, json.dumps(body, indent=2).encode("utf-8"), b"application/json"


def _send(name: str, output: int, *args: Any) -> int:
    """Answers with the SDK function ``OrthancPlugin<name>``; 0, what the route then returns to Orthanc."""
    rest_output = _calls.handle_class("OrthancPluginRestOutput")(output)
    try:
        _sdk_calls.call(name, rest_output, *args)
    finally:
        rest_output.detach()  # Orthanc's, not ours to free
    return 0


def _refuse(output: int, status: int, message: str) -> int:
    return _send("SendHttpStatus", output, status, json.dumps({"HttpStatus": status, "Message": message}).encode())


Selection = tuple[list[Handler], Optional[set[int]]]


def _selection(output: int, arguments: dict[str, Any]) -> Selection | int:
    """The handlers and change numbers a request names; or, once a refusal is sent, 0."""
    name = arguments.get("handler") or arguments.get("Handler")
    if name is not None and not isinstance(name, str):
        return _refuse(output, 400, f'"Handler" must be the name of a durable change handler, not {json.dumps(name)}')
    if name is not None and name not in _handlers:
        return _refuse(output, 404, f"no durable change handler is named {name!r}; "
                                    f"there are: {', '.join(sorted(_handlers)) or 'none'}")
    seqs = arguments.get("seq", arguments.get("Seq"))
    try:
        chosen = None if seqs in (None, "", []) else {int(s) for s in (seqs if isinstance(seqs, list)
                                                                        else str(seqs).split(","))}
    except ValueError:
        return _refuse(output, 400, f"seq must be change numbers (seq=12,15), not {seqs!r}")
    return [_handlers[name]] if name else list(_handlers.values()), chosen


def _status(output: int, uri: str, request: _capi_rest.HttpRequestView) -> _capi_rest.RouteResult:
    return _json({h.name: {"Checkpoint": h.figures.checkpoint, "Backlog": h.figures.backlog(),
                           "WaitingToBeStable": len(h.pending), "DeadLetters": h.figures.dead_letters,
                           "Types": sorted(ChangeType(t).name for t in h.types)} for h in _handlers.values()})


def _dead_letters(output: int, uri: str, request: _capi_rest.HttpRequestView) -> _capi_rest.RouteResult:
    method = request.method
    if method == "POST" and uri.endswith("/replay"):
        try:
            arguments = json.loads(request.body or b"{}")
        except ValueError:
            return _refuse(output, 400, 'the body must be JSON: {"Handler": "...", "Seq": [12, 15]}, both optional')
        if not isinstance(arguments, dict):
            return _refuse(output, 400, 'the body must be a JSON object: {"Handler": "...", "Seq": [12, 15]}')
        return _run_on_handlers(output, arguments, lambda h, seqs: h.replay(seqs))
    if uri.endswith("/replay"):
        return _send("SendMethodNotAllowed", output, "POST")
    arguments = dict(request.get)
    if method == "GET":
        selection = _selection(output, arguments)
        if not isinstance(selection, tuple):
            return selection
        handlers, seqs = selection
        return _json([letter for h in handlers for letter in h.letters(seqs)])
    if method == "DELETE":
        return _run_on_handlers(output, arguments, lambda h, seqs: h.discard(seqs))
    return _send("SendMethodNotAllowed", output, "GET,DELETE")


def _run_on_handlers(output: int, arguments: dict[str, Any],
                     action: Callable[[Handler, set[int] | None], Any]) -> _capi_rest.RouteResult:
    selection = _selection(output, arguments)
    if not isinstance(selection, tuple):
        return selection
    handlers, seqs = selection
    futures = [h.command(lambda h=h: action(h, seqs)) for h in handlers]  # type: ignore[misc]
    deadline = time.monotonic() + REPLAY_WAIT
    results = []
    for future in futures:
        try:
            results.append(future.result(max(0.0, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            return _refuse(output, 202, "the handlers are busy (a change being delivered or retried): the request "
                                        "is queued and runs between two changes; look again later")
    return _json(results)


def _register_routes() -> None:
    _capi_rest.register_rest_callback("/orthanc-py/durable", _status, "the route /orthanc-py/durable")
    _capi_rest.register_rest_callback("/orthanc-py/dead-letters(/replay)?", _dead_letters,
                                      "the route /orthanc-py/dead-letters", route="/orthanc-py/dead-letters")
