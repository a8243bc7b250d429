# SPDX-License-Identifier: GPL-3.0-or-later
"""Orthanc itself through the ``orthanc`` module: the metrics callbacks.

Each test that takes ``plugin`` loads the same script into a real Orthanc
twice: with orthanc_py and with the official Python plugin (when installed),
and checks what a user sees over HTTP and DICOM. The others use functions the
official plugin 4.0 does not have, and run in orthanc_py only. What a callback
received is read back through a REST route of the script.
"""

from __future__ import annotations

from .official import (
    start,
)

# --- metrics ----------------------------------------------------------------------------------

METRICS = """
CALLS = {"first": 0}

def Refresh():
    CALLS["first"] += 1
    orthanc.SetMetricsValue("orthanc_py_refreshed", CALLS["first"], orthanc.MetricsType.DEFAULT)

def Broken():
    raise ValueError("refresh-metrics callback failed")

def Second():
    orthanc.SetMetricsValue("orthanc_py_second", 42, orthanc.MetricsType.DEFAULT)

orthanc.RegisterRefreshMetricsCallback(Refresh)
orthanc.RegisterRefreshMetricsCallback(Broken)
orthanc.RegisterRefreshMetricsCallback(Second)
"""


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_refresh_metrics_callbacks_set_the_metrics_prometheus_reads(make_orthanc):
    server = start(make_orthanc, None, METRICS)
    first = server.get("/tools/metrics-prometheus")
    assert first.status == 200
    assert metric(first.text, "orthanc_py_refreshed") == 1
    assert metric(first.text, "orthanc_py_second") == 42, "a failing callback does not stop the next ones"
    assert metric(server.get("/tools/metrics-prometheus").text, "orthanc_py_refreshed") == 2
    assert "refresh-metrics callback failed" in server.log
