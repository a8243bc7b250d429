# SPDX-License-Identifier: GPL-3.0-or-later
"""Durable change handlers on a real Orthanc: nothing lost across ``kill -9``, resets and failing handlers.

Each test starts Orthanc with a script whose ``@on_change(..., durable=True)``
handler forwards studies to a real DICOM peer (DCMTK's ``storescp``) or
writes what it got to Orthanc's log, then interrupts Orthanc the way
production does: ``SIGKILL`` at random points, ``POST /tools/reset``, a
handler that raises, a change log cleared behind the handler's back.
What a user would check is checked: what the peer received, and the
handler's own lines.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest

from orthanc_py import ChangeType, on_change
from orthanc_py.server import OrthancServer

from .dicom import make_study
from .fixtures_dicom import StoreScp

OrthancFactory = Callable[..., OrthancServer]
CLI = shutil.which("orthanc-py", path=os.path.dirname(sys.executable)) or "orthanc-py"
STABLE_AGE = 2

FORWARD = """
from orthanc_py import ChangeType, on_change, rest

@on_change(ChangeType.STABLE_STUDY, durable=True)
def forward(change):
    rest.post("/modalities/peer/store", change.resource_id)
    print(f"FORWARDED {change.resource_id} seq={change.seq} recovered={change.recovered}")
"""
_FORWARDED = re.compile(r"FORWARDED (\S+) seq=(\d+) recovered=(True|False)")
_STORED = re.compile(r"storing DICOM file: (.+)$", re.M)


@pytest.fixture
def peer(tmp_path: Path) -> Any:
    receiver = StoreScp(tmp_path / "received", tmp_path / "storescp.log").start()
    yield receiver
    receiver.stop()


def _received(peer: StoreScp) -> Counter[str]:
    """How many times the peer received each study (by StudyInstanceUID), one count per file received.

    storescp names a file after its SOPInstanceUID, so a file received twice
    is one file: its log's "storing DICOM file" lines count the receipts.
    """
    study_of: dict[str, str] = {}
    for path in peer.directory.iterdir():
        try:
            study_of[path.name] = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        except Exception:  # a file still being written: counted at the next look
            continue
    counts: Counter[str] = Counter()
    for stored in _STORED.finditer(peer.log):
        name = Path(stored.group(1).strip()).name
        if name in study_of:
            counts[study_of[name]] += 1
    return counts


def _wait_received(peer: StoreScp, uids: list[str], timeout: float, server: OrthancServer) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        received = _received(peer)
        missing = [uid for uid in uids if not received[uid]]
        if not missing:
            return received
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} of {len(uids)} studies never reached the peer:\n{server.log[-6000:]}")
        time.sleep(0.3)


def _kill(server: OrthancServer) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    server.stop()  # closes the log; the process is gone already


def _upload_until_stored(server: OrthancServer, data: bytes, stop: threading.Event) -> None:
    """Uploads as a modality does: again after a failure, until Orthanc has it (it may be down a while)."""
    while not stop.is_set():
        try:
            server.upload(data)
            return
        except (OSError, AssertionError):
            time.sleep(0.1)


def _changes(server: OrthancServer) -> list[dict[str, Any]]:
    answer = server.get_json("/changes?since=0&limit=10000")
    assert isinstance(answer, dict)
    return list(answer["Changes"])


def test_forwarding_survives_sigkill_at_random_points(orthanc_factory: OrthancFactory, peer: StoreScp) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = orthanc_factory(FORWARD, config={"StableAge": STABLE_AGE, "DicomModalities": {"peer": peer.modality()}})
    studies = [make_study(1, patient_id=f"P{number}", rows=2, cols=2) for number in range(50)]
    uids = [uid for uid, _ in studies]
    kills = 3
    # Orthanc is killed once the modality has sent the studies of each cut, a random moment later:
    # studies wait to become stable, others are being forwarded, and studies come after the last kill.
    cuts = sorted(rng.sample(range(5, 40), kills))
    sent = threading.Semaphore(0)
    stop = threading.Event()

    def modality() -> None:  # one study every 0.2 s, sent again until Orthanc has it
        for _, files in studies:
            _upload_until_stored(server, files[0], stop)
            sent.release()
            time.sleep(0.2)

    sender = threading.Thread(target=modality)
    sender.start()
    try:
        done = 0
        for cut in cuts:
            while done < cut:
                assert sent.acquire(timeout=60), "the modality is stuck"
                done += 1
            time.sleep(rng.uniform(0.0, 1.5))
            _kill(server)
            time.sleep(rng.uniform(0.0, 1.0))
            server.start()
        sender.join(120)
        assert not sender.is_alive(), "the studies could not all be stored"
        _wait_received(peer, uids, 60, server)
    finally:
        stop.set()
        sender.join()
    time.sleep(STABLE_AGE + 2)  # anything forwarded twice would show by now
    received = _received(peer)
    forwarded = _FORWARDED.findall(server.log)
    duplicates = {uid: received[uid] for uid in uids if received[uid] > 1}
    recovered = sum(1 for *_, flag in forwarded if flag == "True")
    print(f"seed {seed}, kills after the studies {cuts}: {len(forwarded)} forwardings, {recovered} of them "
          f"recovered stable changes; received twice: {len(duplicates)}")
    assert all(received[uid] >= 1 for uid in uids)
    # A kill interrupts at most the one delivery in progress: only that one may be done again.
    assert len(duplicates) <= kills, duplicates
    # Both kinds met: stable changes Orthanc lost at a kill, and those it sent itself.
    assert 0 < recovered < len(forwarded)
    assert "Traceback" not in server.log


def test_a_study_stored_just_before_a_crash_gets_its_stable_change_recovered(
        orthanc_factory: OrthancFactory) -> None:
    script = """
    from orthanc_py import ChangeType, on_change

    @on_change(ChangeType.STABLE_STUDY)
    def plain(change):
        print(f"PLAIN {change.resource_id}")

    @on_change(ChangeType.STABLE_STUDY, durable=True)
    def durable(change):
        print(f"DURABLE {change.resource_id} seq={change.seq} recovered={change.recovered}")
    """
    server = orthanc_factory(script, config={"StableAge": STABLE_AGE})
    _, files = make_study(2, rows=2, cols=2)
    study = None
    for data in files:
        answer = server.upload(data)
        assert isinstance(answer, dict)
        study = answer["ParentStudy"]
    time.sleep(0.5)
    _kill(server)
    started = time.monotonic()
    server.start()
    line = server.wait_for_log(rf"DURABLE {study} seq=(\d+) recovered=(\w+)", timeout=STABLE_AGE + 15)
    waited = time.monotonic() - started
    new_study = [c for c in _changes(server) if c["ChangeType"] == "NewStudy" and c["ID"] == study]
    assert line.group(2) == "True"
    assert int(line.group(1)) == new_study[0]["Seq"]  # the number of its NEW_STUDY change
    # Orthanc's own behaviour, which the recovery makes up for: no StableStudy in its log, the
    # plain handler told nothing, while Orthanc calls the study stable.
    assert not [c for c in _changes(server) if c["ChangeType"] == "StableStudy" and c["ID"] == study]
    assert f"PLAIN {study}" not in server.log
    assert server.get_json(f"/studies/{study}")["IsStable"] is True  # type: ignore[index]
    assert "was never logged (Orthanc stopped before it was stable?)" in server.log
    print(f"recovered {waited:.1f} s after the restart began (StableAge {STABLE_AGE} s)")


RETRIED = """
import os
from orthanc_py import ChangeType, on_change

@on_change(ChangeType.STABLE_STUDY, durable=True, backoff=0.2)
def flaky(change):
    marker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attempts")
    with open(marker, "a") as attempts:
        attempts.write("x")
    tries = len(open(marker).read())
    if tries <= 2:
        raise ConnectionError(f"the peer is down (attempt {tries})")
    print(f"DONE {change.resource_id} seq={change.seq} after {tries} attempts")
"""


def _metric(server: OrthancServer, name: str) -> float:
    text = server.get("/tools/metrics-prometheus").text
    found = re.search(rf"^{re.escape(name)} (\S+)", text, re.M)
    assert found, f"{name} not in the metrics:\n{text}"
    return float(found.group(1))


def test_a_handler_failing_twice_then_succeeding_is_retried_with_backoff(orthanc_factory: OrthancFactory) -> None:
    server = orthanc_factory(RETRIED, config={"StableAge": STABLE_AGE})
    _, files = make_study(1, rows=2, cols=2)
    answer = server.upload(files[0])
    assert isinstance(answer, dict)
    study = answer["ParentStudy"]
    done = server.wait_for_log(rf"DONE {study} seq=(\d+) after 3 attempts", timeout=STABLE_AGE + 20)
    log = server.log
    assert "ConnectionError: the peer is down (attempt 1); attempt 1 of 6, the next in 0.2 s" in log
    assert "ConnectionError: the peer is down (attempt 2); attempt 2 of 6, the next in 0.4 s" in log
    stable = [c for c in _changes(server) if c["ChangeType"] == "StableStudy" and c["ID"] == study]
    assert int(done.group(1)) == stable[0]["Seq"]
    handler = 'kind="durable_change",handler="__main__.flaky"'
    assert _metric(server, f"orthanc_py_handler_retries_total{{{handler}}}") == 2
    assert _metric(server, f"orthanc_py_handler_failures_total{{{handler}}}") == 2
    assert _metric(server, f"orthanc_py_handler_deliveries_total{{{handler}}}") == 3
    assert server.get_json("/orthanc-py/dead-letters") == []
    status = server.get_json("/orthanc-py/durable")
    assert status["__main__.flaky"]["DeadLetters"] == 0  # type: ignore[index]


DEAD = """
import os
from orthanc_py import ChangeType, on_change

HERE = os.path.dirname(os.path.abspath(__file__))

@on_change(ChangeType.NEW_STUDY, durable=True, retries=1, backoff=0.1)
def archive(change):
    if os.path.exists(os.path.join(HERE, "broken")):
        raise OSError("the archive is full")
    print(f"ARCHIVED {change.resource_id} seq={change.seq}")
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "dead-letters", *args], capture_output=True,
                          text=True, timeout=200)


def test_dead_letters_are_kept_across_a_restart_listed_replayed_and_discarded(
        orthanc_factory: OrthancFactory) -> None:
    server = orthanc_factory(DEAD)
    broken = Path(server.workdir) / "broken"
    broken.touch()
    failing = server.upload(make_study(1, patient_id="A", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    server.wait_for_log(rf"gave up on change \d+ \(NEW_STUDY of {failing}\) after 2 attempts", timeout=20)
    broken.unlink()
    later = server.upload(make_study(1, patient_id="B", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    server.wait_for_log(rf"ARCHIVED {later}", timeout=20)  # the checkpoint moved on past the dead letter

    server.stop()
    server.start()
    listing = _cli("--url", server.url)
    assert listing.returncode == 0, listing.stderr
    assert re.search(rf"__main__\.archive  change \d+  NEW_STUDY of study {failing}  2 attempts, last \d{{8}}T\d{{6}}: "
                     r"OSError: the archive is full", listing.stdout), listing.stdout
    assert "1 dead letters; replay them with --replay" in listing.stdout

    replay = _cli("--url", server.url, "--replay")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert re.search(r"__main__\.archive: delivered 1 \(changes \d+\); failed again 0", replay.stdout), replay.stdout
    assert f"ARCHIVED {failing}" in server.log
    assert server.get_json("/orthanc-py/dead-letters") == []

    broken.touch()
    third = server.upload(make_study(1, patient_id="C", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    server.wait_for_log(rf"gave up on change \d+ \(NEW_STUDY of {third}\)", timeout=20)
    again = _cli("--url", server.url, "--replay")
    assert again.returncode == 1 and "failed again 1" in again.stdout, again.stdout
    letters = server.get_json("/orthanc-py/dead-letters")
    assert isinstance(letters, list) and len(letters) == 1 and letters[0]["Attempts"] == 3
    gone = _cli("--url", server.url, "--discard", "--seq", str(letters[0]["Seq"]))
    assert gone.returncode == 0 and "discarded 1" in gone.stdout, gone.stdout
    assert server.get_json("/orthanc-py/dead-letters") == []
    assert f"dead letters of __main__.archive discarded by request: changes [{letters[0]['Seq']}]" in server.log

    unknown = _cli("--url", server.url, "--handler", "nope")
    assert unknown.returncode == 2
    assert "no durable change handler is named 'nope'; there are: __main__.archive" in unknown.stderr


def test_resets_and_stops_lose_nothing(orthanc_factory: OrthancFactory, peer: StoreScp) -> None:
    server = orthanc_factory(FORWARD, config={"StableAge": STABLE_AGE, "DicomModalities": {"peer": peer.modality()}})
    studies = [make_study(1, patient_id=f"R{number}", rows=2, cols=2) for number in range(12)]
    for number, (_, files) in enumerate(studies):
        server.upload(files[0])
        if number == 4:  # the script runs again in the same process
            started = server.log.count("Orthanc has started")
            assert server.post("/tools/reset").status == 200
            server.wait_until(lambda before=started: server.log.count("Orthanc has started") > before, 60,
                              "the restart")
        if number == 8:
            server.stop()  # a clean stop while studies wait to become stable
            server.start()
        time.sleep(0.4)
    received = _wait_received(peer, [uid for uid, _ in studies], 60, server)
    time.sleep(STABLE_AGE + 1)
    assert all(count == 1 for count in _received(peer).values()), received


LOG_CLEARED = """
import os, time
from orthanc_py import ChangeType, on_change

HERE = os.path.dirname(os.path.abspath(__file__))

@on_change(ChangeType.NEW_STUDY, durable=True)
def slow(change):
    print(f"HOLDING {change.resource_id}")
    while os.path.exists(os.path.join(HERE, "hold")):  # a handler stuck on a slow peer
        time.sleep(0.05)
    print(f"GOT {change.resource_id} seq={change.seq}")
"""


def test_a_checkpoint_older_than_the_change_log_is_reported_and_the_rest_delivered(
        orthanc_factory: OrthancFactory) -> None:
    server = orthanc_factory(LOG_CLEARED)
    hold = Path(server.workdir) / "hold"
    hold.touch()
    first = server.upload(make_study(1, patient_id="F1", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    # Once the handler holds the first study, it has read its page of the log: the next changes
    # are logged after it, and cleared before it reads them.
    server.wait_for_log(rf"HOLDING {first}", timeout=20)
    skipped = server.upload(make_study(1, patient_id="F2", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    assert server.request("DELETE", "/changes").status == 200  # behind the handler's back
    after = server.upload(make_study(1, patient_id="F3", rows=2, cols=2)[1][0])["ParentStudy"]  # type: ignore[index]
    hold.unlink()
    server.wait_for_log(rf"GOT {after}", timeout=20)
    log = server.log
    assert f"GOT {first}" in log  # the change being handled when the log was cleared
    assert f"GOT {skipped}" not in log
    assert re.search(r"CHANGES LOST for the durable change handler __main__\.slow: its checkpoint is change \d+, and "
                     r"Orthanc's log now starts at change \d+: changes \d+ to \d+ were removed", log), log[-3000:]
    lost = _metric(server, 'orthanc_py_durable_lost_total{handler="__main__.slow"}')
    assert lost >= 1


def test_durable_takes_only_the_changes_orthanc_logs_and_says_what_to_use_instead() -> None:
    with pytest.raises(ValueError, match=r"ORTHANC_STARTED is not kept in Orthanc's change log, which durable "
                                         r"handlers read; handle it with a handler without durable=True"):
        on_change(ChangeType.ORTHANC_STARTED, durable=True)(lambda change: None)
    with pytest.raises(TypeError, match="retries= and backoff= go with durable=True"):
        on_change(ChangeType.STABLE_STUDY, retries=3)
    with pytest.raises(ValueError, match="retries must be a whole number"):
        on_change(ChangeType.STABLE_STUDY, durable=True, retries=-1)(lambda change: None)


WHERE = FORWARD.replace("@on_change(ChangeType.STABLE_STUDY, durable=True)",
                        "@on_change(ChangeType.STABLE_STUDY, ChangeType.DELETED, durable=True)") + """
import orthanc
from orthanc_py import kv, route
from orthanc_py.kv import StoreUnavailableError

@route("/where")
def where(request):
    try:
        keys = list(kv.Store("orthanc_py.durable"))
    except StoreUnavailableError:
        keys = None
    return {"kv": keys, "property": orthanc.GetGlobalProperty(30466, "")}
"""


def test_the_status_route_reports_each_handler_and_its_state_is_in_orthancs_database(
        orthanc_factory: OrthancFactory) -> None:
    server = orthanc_factory(WHERE, config={"DicomModalities": {"peer": ["PEER", "127.0.0.1", 1]}})
    status = server.get_json("/orthanc-py/durable")
    assert isinstance(status, dict)
    assert status["__main__.forward"]["Types"] == ["DELETED", "STABLE_STUDY"]
    assert status["__main__.forward"]["Backlog"] == 0
    assert json.loads(server.get("/orthanc-py/dead-letters?handler=__main__.forward").text) == []
    assert server.get("/orthanc-py/dead-letters?seq=x").status == 400
    # A malformed replay request is refused, and Orthanc serves on.
    assert server.post("/orthanc-py/dead-letters/replay", '{"Handler": ["x"]}').status == 400
    assert server.post("/orthanc-py/dead-letters/replay", "not json").status == 400
    assert server.get("/system").status == 200

    def written() -> Any:  # the handler writes its first checkpoint once Orthanc has started, on its thread
        where = server.get_json("/where")
        assert isinstance(where, dict)
        return where if where["kv"] or where["property"] else None

    where = server.wait_until(written, 10, "the first checkpoint")
    system = server.get_json("/system")
    assert isinstance(system, dict)
    version = tuple(int(part) for part in str(system["Version"]).split(".")[:3])
    if version >= (1, 12, 8):  # Orthanc's key-value store, one key per node and handler
        assert [key.split("/", 1)[1] for key in where["kv"]] == ["__main__.forward/checkpoint"], where
        assert where["property"] == ""
    else:  # global properties: 30466 says which one holds what
        assert where["kv"] is None
        assert json.loads(where["property"]) == {"__main__.forward/checkpoint": 30467}
