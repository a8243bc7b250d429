# SPDX-License-Identifier: GPL-3.0-or-later
"""Two Orthanc nodes on one PostgreSQL, behind nginx: work done once per cluster.

Every study's instances arrive half through each node, so both nodes fire
``STABLE_STUDY`` for it; the ``once_per_cluster`` handler must still forward
each study once to a real DICOM peer (DCMTK's ``storescp``), a periodic
``once_per_cluster`` job must run once per period, and killing a node while
it forwards must lose no study. The tests of this module share one cluster
and run in order (the node is killed last).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pydicom
import pytest

from orthanc_py import ChangeType, cluster, every, on_change
from orthanc_py.cluster_server import OrthancCluster
from orthanc_py.server import OrthancServer
from orthanc_py.testing import orthanc_cluster

from .dicom import make_study
from .fixtures_dicom import StoreScp

LEASE = 4.0
PERIOD = 1.0

SCRIPT = f"""
import time
from orthanc_py import ChangeType, every, on_change, rest, route
from orthanc_py import cluster

@on_change(ChangeType.STABLE_STUDY, once_per_cluster=True, lease={LEASE})
def forward(change):
    rest.post("/modalities/peer/store", change.resource_id)
    print(f"FORWARDED {{change.resource_id}} BY {{cluster.node_id()}}")

@on_change(ChangeType.STABLE_SERIES, once_per_cluster=True, lease={LEASE})
def flaky(change):
    # The first run in the cluster for each series fails: its claim is released and the work redone.
    try:
        open(f"MARKERS/{{change.resource_id}}", "x").close()
    except FileExistsError:
        print(f"FLAKY-DONE {{change.resource_id}} BY {{cluster.node_id()}}")
        return
    raise RuntimeError(f"FLAKY-FAILED {{change.resource_id}}")

@every({PERIOD}, once_per_cluster=True)
def purge():
    print(f"PERIOD {{int(time.time() // {PERIOD})}} BY {{cluster.node_id()}}")

@route("/race/<study>")
def race(request, study):
    return cluster.claim(f"/studies/{{study}}", "race", 60).outcome.value
"""

_FORWARDED = re.compile(r"FORWARDED (\S+) BY (\S+)")
_PERIOD = re.compile(r"PERIOD (\d+) BY (\S+)")
_STORED = re.compile(r"storing DICOM file: (.+)$", re.M)
_FLAKY_DONE = re.compile(r"FLAKY-DONE (\S+) BY (\S+)")
_FLAKY_FAILED = re.compile(r"RuntimeError: FLAKY-FAILED (\S+)")


class Env:
    def __init__(self, cluster: OrthancCluster, peer: StoreScp) -> None:
        self.cluster = cluster
        self.peer = peer
        self.studies: dict[str, str] = {}  # StudyInstanceUID -> Orthanc ID
        self._study_of_file: dict[str, str] = {}  # a received file's name -> its StudyInstanceUID

    def upload_split(self, count: int) -> list[str]:
        """``count`` studies of two instances, the first through node 1, the second through node 2."""
        first, second = self.cluster.nodes[0], self.cluster.nodes[1]
        uids = []
        for number in range(count):
            uid, files = make_study(2, patient_id=f"P{len(self.studies) + number}", rows=2, cols=2)
            self.studies[uid] = first.upload(files[0])["ParentStudy"]
            second.upload(files[1])
            uids.append(uid)
        return uids

    def received(self) -> Counter[str]:
        """How many instances of each study the peer received, counting each time one was received again.

        storescp names a file after its SOPInstanceUID, so an instance received
        twice is one file: its log, one "storing DICOM file" line per receipt, counts.
        """
        for path in self.peer.received_files():
            if path.name not in self._study_of_file:
                # A file storescp is still writing fails to parse: it counts at the next look.
                with contextlib.suppress(Exception):
                    dataset = pydicom.dcmread(path, stop_before_pixels=True)
                    self._study_of_file[path.name] = str(dataset.StudyInstanceUID)
        counts: Counter[str] = Counter()
        for stored in _STORED.finditer(self.peer.log):
            name = Path(stored.group(1).strip()).name
            if name in self._study_of_file:
                counts[self._study_of_file[name]] += 1
        return counts

    def wait_received(self, uids: list[str], timeout: float) -> Counter[str]:
        """Waits until the peer has both files of every study of ``uids``."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.received()
            if all(received[uid] >= 2 for uid in uids):
                return received
            if time.monotonic() > deadline:
                missing = [uid for uid in uids if received[uid] < 2]
                logs = "\n".join(node.log[-3000:] for node in self.cluster.nodes)
                raise TimeoutError(f"{len(missing)} of {len(uids)} studies not received in {timeout:g} s:\n{logs}")
            time.sleep(0.5)

    def log_matches(self, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
        return [m.groups() for node in self.cluster.nodes for m in pattern.finditer(node.log)]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("cluster")
    peer = StoreScp(folder / "received", folder / "storescp.log").start()
    config = {"StableAge": 2, "DicomModalities": {"peer": peer.modality()}}
    try:
        (folder / "markers").mkdir()
        script = SCRIPT.replace("MARKERS", str(folder / "markers"))
        with orthanc_cluster(nodes=2, script=script, config=config, workdir=folder / "nodes") as cluster:
            yield Env(cluster, peer)
    finally:
        peer.stop()


def test_once_per_cluster_on_a_node_not_configured_for_claims_fails_to_load_and_names_the_options(
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    orthanc = orthanc_factory("""
from orthanc_py import ChangeType, on_change

@on_change(ChangeType.STABLE_STUDY, once_per_cluster=True)
def forward(change):
    pass
""", start=False)
    orthanc.start(wait=False)
    orthanc.wait_for_log("failed while loading", timeout=60)
    log = orthanc.log
    assert "ClusterConfigError" in log and '"CheckRevisions": true' in log and "orthanc_py_claim" in log, log


def test_every_runs_on_each_period_and_once_per_cluster_works_on_a_single_node(
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    orthanc = orthanc_factory("""
import time
from orthanc_py import every

@every(0.5)
def plain():
    print(f"PLAIN {int(time.time() // 0.5)}")

@every(0.5, once_per_cluster=True)
def claimed():
    print(f"CLAIMED {int(time.time() // 0.5)}")
""", config={"CheckRevisions": True, "UserMetadata": {"orthanc_py_claim": 4242}})
    orthanc.wait_until(lambda: len(re.findall(r"CLAIMED \d+", orthanc.log)) >= 4, 30, "4 claimed periods")
    plain = [int(p) for p in re.findall(r"PLAIN (\d+)", orthanc.log)]
    claimed = [int(p) for p in re.findall(r"CLAIMED (\d+)", orthanc.log)]
    assert len(plain) >= 3 and len(set(plain)) == len(plain), plain
    assert len(set(claimed)) == len(claimed), claimed
    # The claims live on orthanc_py's own small instance, the same UIDs on every node.
    patients = [orthanc.get_json(f"/patients/{p}")["MainDicomTags"]["PatientID"] for p in orthanc.get_json("/patients")]
    assert patients == ["ORTHANC_PY_CLUSTER"], patients
    # once_per_cluster handlers skip it by its Orthanc IDs, computed as Orthanc does.
    assert set(orthanc.get_json("/patients") + orthanc.get_json("/studies")) <= cluster._ANCHOR_IDS


def test_a_change_about_a_deleted_resource_runs_where_it_fired(orthanc_factory: Callable[..., OrthancServer]) -> None:
    # Nothing is left to claim on: Orthanc fires DELETED on the node that deleted only.
    orthanc = orthanc_factory("""
from orthanc_py import ChangeType, on_change

@on_change(ChangeType.DELETED, once_per_cluster=True)
def deleted(change):
    print(f"DELETED {change.resource_type.name} {change.resource_id}")
""", config={"CheckRevisions": True, "UserMetadata": {"orthanc_py_claim": 4242}})
    study = orthanc.upload(make_study(1, rows=2, cols=2)[1][0])["ParentStudy"]
    assert orthanc.request("DELETE", f"/studies/{study}").status == 200
    orthanc.wait_for_log(f"DELETED STUDY {study}")
    assert orthanc.log.count(f"DELETED STUDY {study}") == 1


def test_misused_options_say_what_to_do() -> None:
    with pytest.raises(TypeError, match="lease= goes with once_per_cluster=True"):
        on_change(ChangeType.STABLE_STUDY, lease=5)
    with pytest.raises(ValueError, match="positive number"):
        every(0)


USER_SUITE = '''
import json

SCRIPT = """
from orthanc_py import rest, route

@route("/who")
def who(request):
    return rest.get_json("/system")["Name"]
"""


def test_two_nodes_one_database(orthanc_cluster_factory):
    cluster = orthanc_cluster_factory(SCRIPT, nodes=2)
    first, second = cluster.nodes
    assert {first.get("/who").text, second.get("/who").text} == {"node-1", "node-2"}
    answer = first.post("/tools/create-dicom", json.dumps({"Tags": {"PatientID": "SHARED"}}))
    assert answer.status == 200, answer
    assert second.get_json("/patients") == first.get_json("/patients") != []
    assert cluster.url not in (first.url, second.url)  # nginx in front
'''


def test_a_users_suite_gets_a_cluster_from_the_kit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(USER_SUITE)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_without_postgresql_a_cluster_test_skips_and_says_how_to_install_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_BIN", "/nowhere")
    pytester.makepyfile("def test_cluster(orthanc_cluster_factory):\n    orthanc_cluster_factory(None)\n")
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *PG_BIN names /nowhere, which holds no initdb; install PostgreSQL*"])


def test_the_balancer_spreads_requests_over_nodes_that_share_one_database(env: Env) -> None:
    cluster = env.cluster
    assert cluster.balancer is not None
    names = Counter(json.loads(_get(cluster.url + "/system"))["Name"] for _ in range(10))
    assert set(names) == {"node-1", "node-2"}, names
    uid, files = make_study(1, rows=2, cols=2)
    study = cluster.nodes[0].upload(files[0])["ParentStudy"]
    assert cluster.nodes[1].get_json(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"] == uid
    env.studies[uid] = study


def test_of_two_nodes_claiming_at_once_exactly_one_wins(env: Env) -> None:
    studies = list(env.studies.values()) + [env.cluster.nodes[0].upload(make_study(1, rows=2, cols=2)[1][0])
                                            ["ParentStudy"] for _ in range(29)]
    winners = Counter()
    for study in studies:
        barrier, outcomes = threading.Barrier(2), []

        def claim(node_index: int, study: str = study, barrier: threading.Barrier = barrier,
                  outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            outcomes.append(env.cluster.nodes[node_index].get(f"/race/{study}").text)

        threads = [threading.Thread(target=claim, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["held", "won"], (study, outcomes)
        winners[outcomes[0]] += 1
    print(f"{len(studies)} races on PostgreSQL, one winner each: {dict(winners)} (first answer)")


def test_each_study_arriving_through_both_nodes_is_forwarded_once(env: Env) -> None:
    started = time.monotonic()
    uids = env.upload_split(100)
    uploaded = time.monotonic() - started
    env.wait_received(uids, timeout=120)
    # Both nodes fired STABLE_STUDY for each study: give the later one time to show a second forward.
    time.sleep(2 * 2 + 1)
    received = env.received()
    assert all(received[uid] == 2 for uid in uids), {uid: received[uid] for uid in uids if received[uid] != 2}
    forwards = Counter(study for study, _ in env.log_matches(_FORWARDED))
    twice = {study: n for study, n in forwards.items() if n > 1}
    assert not twice, twice
    by_node = Counter(node.split("@")[0] for _, node in env.log_matches(_FORWARDED))
    print(f"100 studies uploaded half through each node in {uploaded:.1f} s; forwarded once each in "
          f"{time.monotonic() - started:.1f} s; forwards by node (all tests so far) {dict(by_node)}; "
          f"files received {sum(received.values())}")
    assert len(by_node) == 2, by_node  # both nodes won some claims


def test_a_handler_that_raises_releases_its_claim_and_the_work_is_done_once_after(env: Env) -> None:
    series = {study: env.cluster.nodes[0].get_json(f"/studies/{study}")["Series"][0]
              for study in list(env.studies.values())[-100:]}
    wanted = set(series.values())
    env.cluster.nodes[0].wait_until(lambda: wanted <= {s for s, _ in env.log_matches(_FLAKY_DONE)}, 60,
                                    "every series handled after its failure")
    done = Counter(s for s, _ in env.log_matches(_FLAKY_DONE) if s in wanted)
    failed = Counter(m.group(1) for node in env.cluster.nodes for m in _FLAKY_FAILED.finditer(node.log)
                     if m.group(1) in wanted)
    assert set(failed) == wanted and max(failed.values()) == 1, failed
    assert max(done.values()) == 1, {s: n for s, n in done.items() if n > 1}
    print(f"{len(wanted)} series: the first run of each failed, the next one succeeded, none ran twice")


def test_the_periodic_job_runs_once_per_period_in_the_cluster(env: Env) -> None:
    runs = env.log_matches(_PERIOD)
    periods = Counter(int(period) for period, _ in runs)
    assert periods, "the periodic job never ran"
    assert max(periods.values()) == 1, {p: n for p, n in periods.items() if n > 1}
    span = max(periods) - min(periods) + 1
    nodes = Counter(node.split("@")[0] for _, node in runs)
    print(f"periodic job: {len(periods)} runs over {span} periods of {PERIOD:g} s, none twice; by node {dict(nodes)}")
    assert len(periods) >= 0.9 * span, (len(periods), span)


def test_a_study_that_receives_instances_after_it_was_forwarded_is_forwarded_again_once(env: Env) -> None:
    first, second = env.cluster.nodes
    uid, files = make_study(1, patient_id="LATE", rows=2, cols=2)
    study = first.upload(files[0])["ParentStudy"]
    env.studies[uid] = study

    def forwards() -> int:
        return sum(1 for forwarded, _ in env.log_matches(_FORWARDED) if forwarded == study)

    first.wait_until(lambda: forwards() == 1, 30, "the first forward")
    time.sleep(1.1)  # Orthanc's LastUpdate counts whole seconds
    _, more = make_study(1, patient_id="LATE", study_uid=uid, rows=2, cols=2)
    second.upload(more[0])  # a late series, through the other node
    first.wait_until(lambda: forwards() == 2, 30, "the forward of the study with its late series")
    time.sleep(2 * 2 + 1)  # a third forward would show by now
    assert forwards() == 2
    assert env.received()[uid] == 3  # its first instance, then both


def test_a_node_killed_while_forwarding_loses_no_study(env: Env) -> None:
    survivor, victim = env.cluster.nodes
    before = Counter(node.split("@")[0] for _, node in env.log_matches(_FORWARDED))
    uids = env.upload_split(40)
    # Kill node 2 once forwarding of this batch is under way, without warning (SIGKILL).
    survivor.wait_until(lambda: len(env.log_matches(_FORWARDED)) >= sum(before.values()) + 8, 60,
                        "forwarding under way")
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    killed_at = time.monotonic()
    at_kill = Counter(node.split("@")[0] for _, node in env.log_matches(_FORWARDED)) - before
    assert sum(at_kill.values()) < 40, "the batch was forwarded before the kill: the test proves nothing"
    # The balancer sends requests to the node that lives.
    assert all(json.loads(_get(env.cluster.url + "/system"))["Name"] == "node-1" for _ in range(4))
    env.wait_received(uids, timeout=LEASE * 4 + 60)
    time.sleep(LEASE + 2)  # anything done twice would show by now
    received = env.received()
    missing = [uid for uid in uids if received[uid] < 2]
    assert not missing, missing
    again = {uid: received[uid] for uid in uids if received[uid] > 2}
    taken = len(re.findall(r"takes over STABLE_STUDY:\S+ of /studies/\S+ from node-2\S* \(its lease ended\)",
                           survivor.log))
    # Only a study node 2 had claimed when it died is done again (at least once, never zero): sent
    # twice when node 2 died after sending it and before marking it done.
    assert len(again) <= taken <= 2, (again, taken)
    after = Counter(node.split("@")[0] for _, node in env.log_matches(_FORWARDED)) - before
    print(f"node 2 killed when {dict(at_kill)} of the 40 studies were forwarded; in the end {dict(after)}, "
          f"{taken} taken over from node 2 after its lease ended; all 40 received (checked "
          f"{time.monotonic() - killed_at:.1f} s after the kill); sent twice: {len(again)}")


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as answer:
        return bytes(answer.read())
