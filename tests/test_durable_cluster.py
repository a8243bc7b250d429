# SPDX-License-Identifier: GPL-3.0-or-later
"""Durable ``once_per_cluster`` change handlers on two Orthanc nodes sharing PostgreSQL, a node killed (#25).

Each node reads the shared change log from its own checkpoint, kept in the
database; the claims of :mod:`orthanc_py.cluster` make one node forward each
study to a real DICOM peer (DCMTK's ``storescp``). A node is killed with
SIGKILL while forwarding is under way and started again at once on the same
database: every study must still reach the peer, at most two of them more
than once (the one the killed node was sending, and a store job Orthanc
itself saved in the database and runs again when the node starts), and the
node must go on from its checkpoint. A node killed before the studies it
received became stable, and never started again, must not take their
``STABLE_STUDY`` with it: the surviving node forwards them as recovered changes.

Each test starts its own cluster and peer, so each log tells one story. The
one traceback allowed in the logs is a serialization failure of PostgreSQL
on a checkpoint's write, which the handler survives; the tests print how many.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom

from orthanc_py.cluster_server import OrthancCluster
from orthanc_py.server import OrthancServer
from orthanc_py.testing import orthanc_cluster

from .dicom import make_study
from .fixtures_dicom import StoreScp

STABLE_AGE = 2
LEASE = 4

SCRIPT = f"""
from orthanc_py import ChangeType, cluster, on_change, rest

@on_change(ChangeType.STABLE_STUDY, durable=True, once_per_cluster=True, lease={LEASE})
def forward(change):
    rest.post("/modalities/peer/store", change.resource_id)
    print(f"FORWARDED {{change.resource_id}} SEQ {{change.seq}} RECOVERED {{change.recovered}} "
          f"BY {{cluster.node_id()}}")
"""

_FORWARDED = re.compile(r"FORWARDED (\S+) SEQ (\d+) RECOVERED (True|False) BY (\S+)")
_STORED = re.compile(r"storing DICOM file: (.+)$", re.M)
_TAKEN_OVER = re.compile(r"takes over STABLE_STUDY:\S+ of /studies/(\S+) from (\S+) \(([^)]*)\)")
_RECOVERED = re.compile(r"STABLE_STUDY of study (\S+) was never logged")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*(.*)")
# PostgreSQL (SERIALIZABLE) refusing a transaction of the PostgreSQL index plugin, here a durable
# handler's write of its checkpoint: the handler logs the traceback and reads on 5 s later.
_SERIALIZATION = "could not serialize access due to read/write dependencies among transactions"
_DATABASE_ERROR = "orthanc_py._capi.OrthancError: (11, 'Error with the database engine')"


class Peer:
    """What the DICOM peer received, per study, from its log (one line per file received, again or not)."""

    def __init__(self, scp: StoreScp) -> None:
        self.scp = scp
        self._study_of_file: dict[str, str] = {}  # a received file's name (its SOPInstanceUID) -> its study

    def received(self) -> Counter[str]:
        """Files received per StudyInstanceUID, counting each receipt of the same file."""
        for path in self.scp.received_files():
            if path.name not in self._study_of_file:
                with contextlib.suppress(Exception):  # still being written: read at the next look
                    dataset = pydicom.dcmread(path, stop_before_pixels=True)
                    self._study_of_file[path.name] = str(dataset.StudyInstanceUID)
        counts: Counter[str] = Counter()
        for stored in _STORED.finditer(self.scp.log):
            name = Path(stored.group(1).strip()).name
            if name in self._study_of_file:
                counts[self._study_of_file[name]] += 1
        return counts

    def wait_all(self, studies: dict[str, int], timeout: float, logs: list[OrthancServer]) -> Counter[str]:
        """Waits until every study (StudyInstanceUID -> its number of instances) arrived whole at least once."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.received()
            missing = {uid: received[uid] for uid, count in studies.items() if received[uid] < count}
            if not missing:
                return received
            if time.monotonic() > deadline:
                tails = "\n".join(node.log[-4000:] for node in logs)
                raise TimeoutError(f"{len(missing)} of {len(studies)} studies not received whole in {timeout:g} s "
                                   f"(files received: {missing}):\n{tails}")
            time.sleep(0.25)


@contextlib.contextmanager
def _cluster(folder: Path) -> Iterator[tuple[OrthancCluster, Peer]]:
    scp = StoreScp(folder / "received", folder / "storescp.log").start()
    config = {"StableAge": STABLE_AGE, "DicomModalities": {"peer": scp.modality()}}
    try:
        with orthanc_cluster(nodes=2, script=SCRIPT, config=config, workdir=folder / "nodes") as cluster:
            yield cluster, Peer(scp)
    finally:
        scp.stop()


def _forwarded(text: str) -> list[tuple[str, int, bool, str]]:
    """The FORWARDED lines of a log: (Orthanc ID, change.seq, change.recovered, node)."""
    return [(m.group(1), int(m.group(2)), m.group(3) == "True", m.group(4)) for m in _FORWARDED.finditer(text)]


def _durable_status(node: OrthancServer) -> dict[str, Any]:
    status = node.get_json("/orthanc-py/durable")
    assert isinstance(status, dict) and len(status) == 1, status
    return dict(next(iter(status.values())))


def _wait_caught_up(nodes: list[OrthancServer], timeout: float) -> list[dict[str, Any]]:
    """Waits until every node's durable handler has read the whole log and waits for no study.

    ``Backlog`` alone does not tell: it counts from the last change of the
    page the handler read last, not from the end of the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = nodes[0].get_json("/changes?last")
        assert isinstance(last, dict)
        states = [_durable_status(node) for node in nodes]
        if all(s["Checkpoint"] >= last["Last"] and s["Backlog"] == 0 and s["WaitingToBeStable"] == 0
               for s in states):
            return states
        if time.monotonic() > deadline:
            raise TimeoutError(f"the durable handlers did not reach change {last['Last']} in {timeout:g} s: "
                               f"{states}")
        time.sleep(0.25)


def _tracebacks(log: str) -> tuple[int, list[str]]:
    """How many tracebacks of a log are a serialization failure of PostgreSQL's, and the others."""
    tolerated, others = 0, []
    for match in _TRACEBACK.finditer(log):
        if match.group(1) == _DATABASE_ERROR and _SERIALIZATION in log[max(0, match.start() - 1500):match.start()]:
            tolerated += 1
        else:
            others.append(log[max(0, match.start() - 500):match.end()])
    return tolerated, others


def _kill(node: OrthancServer) -> None:
    assert node.process is not None and node.process.poll() is None
    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    node.stop()  # closes the log the process wrote to; it is dead already


def _stamp() -> str:
    """Now, as Orthanc stamps its jobs (UTC, microseconds)."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}"


def _stable_studies_logged(node: OrthancServer) -> set[str]:
    changes = node.get_json("/changes?since=0&limit=10000")
    assert isinstance(changes, dict) and changes["Done"], "the log holds more than one page"
    return {c["ID"] for c in changes["Changes"] if c["ChangeType"] == "StableStudy"}


def test_a_node_killed_while_forwarding_and_started_again_loses_no_study(tmp_path: Path) -> None:
    count = 30
    with _cluster(tmp_path) as (cluster, peer):
        nodes = cluster.nodes
        studies: dict[str, int] = {}  # StudyInstanceUID -> instances
        orthanc_ids: dict[str, str] = {}  # Orthanc ID -> StudyInstanceUID
        started = time.monotonic()
        for number in range(count):
            instances = 1 + number % 2
            uid, files = make_study(instances, patient_id=f"D{number}", rows=2, cols=2)
            node = nodes[number % 2]  # studies alternate between the nodes
            for data in files:
                orthanc_ids[node.upload(data)["ParentStudy"]] = uid
            studies[uid] = instances
            time.sleep(0.1)  # spread the studies' STABLE_STUDY over a few seconds of forwarding
        uploaded = time.monotonic() - started

        def forwarded_now() -> list[tuple[str, int, bool, str]]:
            return [f for node in nodes for f in _forwarded(node.log)]

        nodes[0].wait_until(lambda: len(forwarded_now()) >= 5, 60, "forwarding under way")
        # Kill the node forwarding most so far: the one likely to hold a claim right now.
        by_node = [len(_forwarded(node.log)) for node in nodes]
        victim_index = 0 if by_node[0] >= by_node[1] else 1
        victim, survivor = nodes[victim_index], nodes[1 - victim_index]
        before_kill = _durable_status(victim)
        _kill(victim)
        killed_at = time.monotonic()
        at_kill = {study for study, *_ in forwarded_now()}
        assert len(at_kill) < count, "every study was forwarded before the kill: the test proves nothing"
        killed_log = len(victim.log)

        ports = (victim.http_port, victim.dicom_port)
        restart_stamp = _stamp()
        victim.start(timeout=60)
        restarted_at = time.monotonic()
        assert (victim.http_port, victim.dicom_port) == ports, "started again on other ports: another node"

        peer.wait_all(studies, timeout=4 * LEASE + 60, logs=nodes)
        all_received = time.monotonic()
        _wait_caught_up(nodes, timeout=30)
        time.sleep(LEASE + 2)  # a study forwarded again late would show by now
        states = _wait_caught_up(nodes, timeout=30)
        received = peer.received()

        forwards = forwarded_now()
        again = {uid: received[uid] / instances for uid, instances in studies.items() if received[uid] > instances}
        missing = {uid: received[uid] for uid, instances in studies.items() if received[uid] < instances}
        restarted = victim.log[killed_log:]
        taken = [m.groups() for node in nodes for m in _TAKEN_OVER.finditer(node.log)]
        # Diagnostics: recovered changes of studies whose STABLE_STUDY a live node did log, and the
        # store jobs Orthanc itself resumed at the restart (its jobs are saved in the database).
        logged = _stable_studies_logged(survivor)
        early = sorted({study[:8] for study, _, recovered, _ in forwards if recovered and study in logged})
        needless = Counter(study in logged for node in nodes for study in _RECOVERED.findall(node.log))
        jobs = victim.get_json("/jobs?expand")
        assert isinstance(jobs, list)
        resumed = [job["Content"].get("ParentResources") for job in jobs
                   if job["CreationTime"] < restart_stamp <= job.get("CompletionTime", restart_stamp)]
        print(f"\n{count} studies uploaded alternately through both nodes in {uploaded:.1f} s; "
              f"{victim.configuration['Name']} (FORWARDED lines so far by node: {by_node}; durable checkpoint "
              f"{before_kill['Checkpoint']}) killed when {len(at_kill)} studies were forwarded; started again in "
              f"{restarted_at - killed_at:.1f} s; every study received {all_received - killed_at:.1f} s after the "
              f"kill; FORWARDED lines by process {dict(Counter(f[3] for f in forwards))}, "
              f"{sum(f[2] for f in forwards)} of them recovered; claims taken over: {taken}; store jobs resumed "
              f"by the restarted Orthanc: {resumed}; studies received more than once (times): {len(again)} {again}; "
              f"recovered deliveries of studies whose STABLE_STUDY was logged: {early}; 'never logged' warnings "
              f"about studies whose STABLE_STUDY is in the log: {needless[True]} (others {needless[False]}); "
              f"serialization failures of PostgreSQL logged as tracebacks (survivor, restarted node): "
              f"{_tracebacks(survivor.log)[0]}, {_tracebacks(restarted)[0]}; durable status at the end: {states}")

        assert not missing, missing
        assert set(orthanc_ids.values()) == set(studies)
        assert all(seq > 0 for _, seq, _, _ in forwards), forwards
        # Sent again: the study the killed node had claimed when it died (sent, not yet marked done), and
        # what a store job Orthanc saved before the kill sends once more when the node starts again.
        assert len(again) <= 2, again
        # Every FORWARDED line of a study received once is that study's only one, kill aside.
        counted = Counter(orthanc_ids[study] for study, *_ in forwards)
        assert all(counted[uid] <= 1 for uid in studies if uid not in again), counted
        # The node started again found its checkpoint in the database: it did not start from the log's end.
        assert "starts after change" not in restarted, restarted
        assert "CHANGES LOST" not in restarted, restarted
        assert not _tracebacks(restarted)[1], _tracebacks(restarted)[1]
        assert not _tracebacks(survivor.log)[1], _tracebacks(survivor.log)[1]
        for state in states:
            assert state["Backlog"] == 0 and state["DeadLetters"] == 0, states


def test_studies_of_a_node_killed_before_they_were_stable_are_forwarded_by_the_other_recovered(
        tmp_path: Path) -> None:
    with _cluster(tmp_path) as (cluster, peer):
        survivor, victim = cluster.nodes
        studies: dict[str, int] = {}
        orthanc_ids: dict[str, str] = {}
        files_of = {uid: files for uid, files in (make_study(2, patient_id=f"R{n}", rows=2, cols=2) for n in range(3))}
        first = time.monotonic()
        for uid, files in files_of.items():
            for data in files:
                orthanc_ids[victim.upload(data)["ParentStudy"]] = uid
            studies[uid] = 2
        _kill(victim)
        killed_after = time.monotonic() - first
        # Orthanc counts StableAge from a study's last instance: none was that old.
        assert killed_after < STABLE_AGE - 0.5, f"killed {killed_after:.2f} s after the uploads began: too late"
        killed_at = time.monotonic()

        received = peer.wait_all(studies, timeout=4 * STABLE_AGE + 30, logs=[survivor])
        delay = time.monotonic() - killed_at
        _wait_caught_up([survivor], timeout=30)
        time.sleep(STABLE_AGE + 1)
        states = _wait_caught_up([survivor], timeout=30)
        received = peer.received()
        forwards = _forwarded(survivor.log)
        print(f"\n3 studies received by {victim.configuration['Name']}, killed {killed_after:.2f} s after the "
              f"uploads began; forwarded by the survivor {delay:.1f} s after the kill: {forwards}; "
              f"received {dict(received)}; serialization failures of PostgreSQL logged as tracebacks: "
              f"{_tracebacks(survivor.log)[0]}; durable status {states}")

        assert not _stable_studies_logged(survivor) & set(orthanc_ids), "a STABLE_STUDY was logged after all"
        assert sorted(orthanc_ids) == sorted(f[0] for f in forwards), forwards
        assert all(recovered for _, _, recovered, _ in forwards), forwards
        assert all(node.startswith(f"{survivor.configuration['Name']}@") for *_, node in forwards), forwards
        assert set(_RECOVERED.findall(survivor.log)) == set(orthanc_ids), survivor.log[-4000:]
        assert {uid: received[uid] for uid in studies} == studies, received
        assert not _tracebacks(survivor.log)[1], _tracebacks(survivor.log)[1]
        assert states[0]["Backlog"] == 0 and states[0]["DeadLetters"] == 0, states
