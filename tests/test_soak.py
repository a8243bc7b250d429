# SPDX-License-Identifier: GPL-3.0-or-later
"""The soak scenarios of ``bench/soak.py``, short: a leak, a lost event or a hang at shut-down fails here.

The same ``run_*`` functions as the full soak, with small numbers. They
assert what is robust at that size: no failed request, every event delivered
once and in order, clean exits; memory only where a leak per call would show
far above the noise (tens of MB against a few). Nothing about speed.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from types import ModuleType

import pytest

from .conftest import REPO


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("orthanc_py_bench_soak", REPO / "bench" / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


soak = _load_soak()

# A missing Orthanc skips these through the testing kit, with its own reason.
pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian: apt-get install wrk)")


def describe(outcome) -> str:
    figures = {k: v for k, v in outcome.figures.items() if k != "samples"}
    rss = [s["rss_mb"] for s in outcome.figures.get("samples", [])]
    return f"{outcome.scenario}: {figures}; RSS by step {rss}; checks {outcome.checks}"


def test_thousands_of_requests_to_a_route_fail_none_and_keep_memory_flat(tmp_path):
    outcome = soak.run_requests(tmp_path, requests=5_000, warmup=1_000, steps=5)
    assert outcome.figures["failed"] == 0, describe(outcome)
    assert outcome.figures["requests"] >= 5_000, describe(outcome)
    assert outcome.figures["rss_growth_mb"] < 20, describe(outcome)
    assert outcome.figures["exit_code"] == 0, describe(outcome)


def test_rest_calls_from_a_handler_all_answer_and_keep_memory_flat(tmp_path):
    outcome = soak.run_rest_calls(tmp_path, calls=500, per_request=50, warmup=100, steps=5)
    assert outcome.figures["failed_requests"] == 0, describe(outcome)
    assert outcome.figures["calls"] == 500, describe(outcome)
    assert outcome.figures["rss_growth_mb"] < 20, describe(outcome)
    assert outcome.figures["exit_code"] == 0, describe(outcome)


def test_every_upload_gets_one_on_stored_instance_call(tmp_path):
    outcome = soak.run_stored(tmp_path, instances=300, warmup=50, batch=100, steps=3)
    assert outcome.figures["failed"] == 0, describe(outcome)
    assert outcome.figures["uploaded_with_warmup"] == 350, describe(outcome)
    assert outcome.figures["stored_calls"] == 350, describe(outcome)
    assert outcome.figures["bad_calls"] == 0, describe(outcome)
    assert outcome.figures["instances_left"] == 0, describe(outcome)
    assert outcome.figures["exit_code"] == 0, describe(outcome)


def test_get_dicom_for_instance_buffers_are_freed(tmp_path):
    # ~2 MB a call: 50 calls never freed would hold 100 MB.
    outcome = soak.run_dicom_buffers(tmp_path, calls=50, rows=1024, cols=1024, per_request=5, warmup=10, steps=5,
                                     target_mb=20)
    assert outcome.figures["instance_mb"] >= 2, describe(outcome)
    assert outcome.figures["failed_requests"] == 0, describe(outcome)
    assert outcome.figures["calls"] == 50, describe(outcome)
    assert outcome.figures["rss_growth_mb"] < 20, describe(outcome)
    assert outcome.figures["exit_code"] == 0, describe(outcome)


def test_mixed_load_loses_no_request_no_instance_and_no_event(tmp_path):
    outcome = soak.run_mixed(tmp_path, seconds=20, connections=64)
    figures = outcome.figures
    assert figures["wrk_requests"] > 0 and figures["uploaded"] > 0, describe(outcome)
    assert figures["wrk_failed"] == 0, describe(outcome)
    assert figures["upload_errors"] == 0, describe(outcome)
    assert figures["missing"] == 0 and figures["unexpected"] == 0, describe(outcome)
    assert figures["new_instance_events"] == figures["uploaded"], describe(outcome)
    assert outcome.passed, describe(outcome)  # NEW_INSTANCE and the stored call: once each, in upload order
    assert figures["exit_code"] == 0, describe(outcome)


def test_start_stop_cycles_with_threads_offload_and_requests_in_flight_end_cleanly(tmp_path):
    outcome = soak.run_cycles(tmp_path, cycles=5)
    figures = outcome.figures
    assert figures["exit_codes"] == {"0": 5}, describe(outcome)
    assert figures["hangs"] == 0 and figures["start_failures"] == 0, describe(outcome)
    assert figures["core_files"] == [], describe(outcome)
    assert figures["offload_failures"] == 0, describe(outcome)
    assert figures["python_tracebacks"] == 0, describe(outcome)
    assert figures["orthanc_has_stopped_lines"] == 5, describe(outcome)
