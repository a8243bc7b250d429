# SPDX-License-Identifier: GPL-3.0-or-later
"""Offloaded routes and ``run_in_worker`` on a real ``dask.distributed`` cluster.

A ``LocalCluster`` of two worker processes on loopback stands in for a
cluster of machines: the script inside Orthanc connects to its scheduler by
address, as it would to a remote one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest
from distributed import LocalCluster

from orthanc_py.server import OrthancServer

SLEEP = 1.5

SCRIPT = """
import os
import time

from distributed import Client

from orthanc_py import on_shutdown, route, run_in_worker

client = Client("{address}", timeout=30)
executor = client.get_executor()


@route("/busy/<int:n>", offload=executor)
def busy(request, n):
    started = time.time()
    time.sleep({sleep})
    return {{"n": n, "pid": os.getpid(), "start": started, "end": time.time(), "path": request.path,
             "squares": sum(i * i for i in range(n))}}


def square(x, workers=None):
    return {{"square": x * x, "pid": os.getpid(), "workers": workers}}


@route("/square/<int:x>")
def square_route(request, x):
    # "workers" is square's own argument: it must not reach dask's submit().
    return run_in_worker(square, x, executor=executor, workers="mine")


@on_shutdown
def close():
    client.close()
"""


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, worker_dashboard_address=None)
    try:
        yield cluster
    finally:
        cluster.close()


def test_an_offloaded_route_answers_from_dask_workers_and_two_calls_run_in_parallel(
        dask_cluster: LocalCluster, orthanc_factory: Callable[..., OrthancServer]) -> None:
    orthanc = orthanc_factory(SCRIPT.format(address=dask_cluster.scheduler_address, sleep=SLEEP))
    # The first call warms the workers up (they import the handler's module).
    assert orthanc.get_json("/busy/10")["squares"] == sum(i * i for i in range(10))
    answers: list[Any] = []

    def call(n: int) -> None:
        answers.append(orthanc.get_json(f"/busy/{n}"))

    threads = [threading.Thread(target=call, args=(n,)) for n in (1000, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 2
    assert all(a["squares"] == sum(i * i for i in range(1000)) and a["path"] == "/busy/1000" for a in answers)
    first, second = sorted(answers, key=lambda a: a["start"])
    # Two identical requests are two tasks, on the two worker processes, at the same time.
    assert first["pid"] != second["pid"], answers
    overlap = min(first["end"], second["end"]) - second["start"]
    span = max(first["end"], second["end"]) - first["start"]
    print(f"two offloaded calls of {SLEEP} s on dask workers {first['pid']} and {second['pid']}: "
          f"overlap {overlap:.2f} s, both done within {span:.2f} s")
    assert overlap > SLEEP * 0.5, answers  # one after the other, they would not overlap at all
    assert span < 2 * SLEEP - 0.2, answers


def test_run_in_worker_runs_on_the_dask_executor_and_keeps_the_functions_own_keywords(
        dask_cluster: LocalCluster, orthanc_factory: Callable[..., OrthancServer]) -> None:
    import os

    orthanc = orthanc_factory(SCRIPT.format(address=dask_cluster.scheduler_address, sleep=SLEEP))
    answer = orthanc.get_json("/square/12")
    assert answer["square"] == 144 and answer["workers"] == "mine", answer
    assert answer["pid"] not in (os.getpid(), orthanc.process.pid if orthanc.process else None), answer
    # The script's dask client closes with Orthanc, which stops cleanly.
    assert orthanc.stop() == 0, orthanc.log[-3000:]
    assert "Traceback" not in orthanc.log, orthanc.log[-3000:]
