# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``mixed-cluster`` soak scenario of ``bench/soak.py``, short: two nodes behind nginx under mixed load.

wrk on Python routes and a thread uploading instances, both through nginx, so
that every study's instances arrive through both nodes: no request may fail,
every instance must give one ``NEW_INSTANCE`` and one stored-instance call in
the whole cluster, and the ``once_per_cluster`` ``STABLE_STUDY`` handler must
handle every study once.
"""

from __future__ import annotations

import shutil

import pytest

from .test_soak import describe, soak

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian: apt-get install wrk)")


def test_mixed_load_on_two_nodes_fails_nothing_and_handles_every_event_once(tmp_path):
    outcome = soak.run_mixed_cluster(tmp_path, seconds=20, connections=32)
    figures = outcome.figures
    print(describe(outcome))
    assert figures["wrk_requests"] > 0 and figures["uploaded"] > 0 and figures["studies"] > 1, describe(outcome)
    assert all(n > 0 for n in figures["new_instance_by_node"]), describe(outcome)  # both nodes took uploads
    assert figures["wrk_failed"] == 0 and figures["upload_errors"] == 0, describe(outcome)
    assert figures["missing"] == 0, describe(outcome)
    assert figures["new_instance_events"] == figures["uploaded"] == figures["stored_calls"], describe(outcome)
    assert figures["studies_handled"] == figures["studies"], describe(outcome)
    assert figures["studies_handled_twice"] == 0, describe(outcome)
    assert outcome.passed, describe(outcome)  # and in upload order on each node
    assert figures["exit_codes"] == [0, 0], describe(outcome)
