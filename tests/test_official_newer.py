# SPDX-License-Identifier: GPL-3.0-or-later
"""Functions of the SDK of Orthanc 1.11 to 1.13 in the ``orthanc`` module, side by side with the official plugin.

One script calls each function in a REST route and answers what happened;
it runs in orthanc_py and in the official plugin installed on this row. On
an Orthanc that has the functions, both must do the same (the official 7.1
has them); on an older one, orthanc_py raises an error naming the version
needed, where the official plugin has no such function at all.
"""

from __future__ import annotations

import re

import pytest

from orthanc_py.server import find_orthanc, orthanc_version

from .dicom import make_dicom
from .official import OFFICIAL, official_plugin_version, start

VERSION = orthanc_version(find_orthanc())
RELEASE = tuple(map(int, re.match(r"(\d+)\.(\d+)\.(\d+)", VERSION).groups())) if VERSION[0].isdigit() else (99,)

SCRIPT = """
import json

def attempt(function, *args):
    try:
        return {"result": function(*args)}
    except AttributeError:
        return {"absent": True}
    except Exception as error:
        return {"error": type(error).__name__, "text": str(error)}

def Probe(output, uri, **request):
    instance = json.loads(orthanc.RestApiGet("/instances"))[0]
    answer = {
        "metrics": attempt(lambda: orthanc.SetMetricsIntegerValue("orthanc_py_newer", 7,
                                                                  orthanc.MetricsType.DEFAULT)),
        "log": attempt(lambda: orthanc.LogMessage("newer-sdk log line", "python", "probe.py", 12,
                                                  orthanc.LogCategory.PLUGINS, orthanc.LogLevel.WARNING)),
        "thread": attempt(lambda: orthanc.SetCurrentThreadName("newer-probe")),
        "identifier": attempt(lambda: type(orthanc.GetDatabaseServerIdentifier()).__name__),
        "load": attempt(lambda: orthanc.LoadDicomInstance(instance, orthanc.LoadDicomInstanceMode.WHOLE_DICOM)
                        .GetInstanceSize() > 0),
        "root": attempt(lambda: orthanc.SetRootUri2("python", "/app/newer")),
        "description": attempt(lambda: orthanc.SetDescription2("python", "the newer-SDK probe")),
    }
    output.AnswerBuffer(json.dumps(answer), "application/json")

orthanc.RegisterRestCallback("/newer", Probe)
"""


@pytest.mark.parametrize("plugin", [None, OFFICIAL], ids=["ours", "official"])
def test_the_newer_functions_do_what_the_official_plugin_does(make_orthanc, plugin):
    server = start(make_orthanc, plugin, SCRIPT)
    server.upload(make_dicom(patient_id="NEWER"))
    answer = server.get_json("/newer")
    since = {"metrics": (1, 12, 1), "log": (1, 12, 4), "thread": (1, 12, 2), "identifier": (1, 11, 1),
             "load": (1, 12, 1), "root": (1, 12, 4), "description": (1, 12, 4)}
    expected_results = {"metrics": None, "log": None, "thread": None, "identifier": "str", "load": True,
                        "root": None, "description": None}
    for name, version in since.items():
        if version <= RELEASE:
            if plugin is None or official_plugin_version() == "7.1":
                assert answer[name] == {"result": expected_results[name]}, name
        elif plugin is None:
            assert answer[name]["error"] == "SdkVersionError", name
            assert f"needs Orthanc {'.'.join(map(str, version))} or newer; this Orthanc is {VERSION}" in \
                answer[name]["text"], name
        else:
            assert answer[name] == {"absent": True}, name
    # What the calls did, where they ran (the official plugin 5.0 has neither function).
    if answer["log"] == {"result": None}:
        server.wait_for_log("newer-sdk log line")
    if answer["metrics"] == {"result": None}:
        assert "orthanc_py_newer 7" in server.get("/tools/metrics-prometheus").text
    if plugin is None:
        assert (answer["log"] == {"result": None}) == (RELEASE >= (1, 12, 4))
        assert (answer["metrics"] == {"result": None}) == (RELEASE >= (1, 12, 1))


CLEAR = """
import json, threading
RESULT = {}

def named():
    try:
        orthanc.SetCurrentThreadName("py-worker")
        orthanc.LogWarning("from the named thread")
        orthanc.ClearCurrentThreadName()
        orthanc.LogWarning("from the cleared thread")
        RESULT["done"] = True
    except Exception as error:
        RESULT["error"] = f"{type(error).__name__}: {error}"

def Run(output, uri, **request):
    worker = threading.Thread(target=named)
    worker.start()
    worker.join()
    output.AnswerBuffer(json.dumps(RESULT), "application/json")

orthanc.RegisterRestCallback("/clear", Run)
"""


def test_a_thread_names_itself_in_the_log_and_clears_its_name(make_orthanc):
    server = start(make_orthanc, None, CLEAR)
    result = server.get_json("/clear")
    if RELEASE >= (1, 13, 0):
        assert result == {"done": True}
        named = server.wait_for_log(r".*from the named thread")
        cleared = server.wait_for_log(r".*from the cleared thread")
        assert "py-worker" in named.group(0)
        assert "py-worker" not in cleared.group(0)
    elif RELEASE >= (1, 12, 2):
        assert result["error"].startswith("SdkVersionError")
        assert "ClearCurrentThreadName() needs Orthanc 1.13.0 or newer" in result["error"]
    else:
        assert "SetCurrentThreadName() needs Orthanc 1.12.2 or newer" in result["error"]
