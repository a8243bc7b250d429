# SPDX-License-Identifier: GPL-3.0-or-later
"""Processes forked from Orthanc (``multiprocessing``'s default ``fork`` start method on Linux).

A forked child has a copy of Orthanc's memory and none of its threads: it
must behave as any process outside Orthanc (``orthanc.*`` raises
``NotInOrthancError``, ``print`` and ``logging`` go to the standard streams),
never call into that frozen copy. The pool is created while the script loads,
as in the seed's ``computation_pool.py``.
"""

from __future__ import annotations

import re

from orthanc_py.server import OrthancServer

SCRIPT = """
import json, logging, multiprocessing, os
import orthanc
from orthanc_py import _capi

def InChild(n):
    seen = {"pid": os.getpid(), "attached": _capi.is_attached()}
    for name, call in (("rest", lambda: orthanc.RestApiGet("/system")),
                       ("property", lambda: orthanc.GetGlobalProperty(1024, "none"))):
        try:
            call()
            seen[name] = "answered"
        except Exception as error:
            seen[name] = f"{type(error).__name__}: {error}"
    # One write per line: print() writes the text and its end apart, and the two
    # children share one standard output.
    print(f"print from fork child {n}\\n", end="", flush=True)
    logging.getLogger("child").warning("logging from fork child %d", n)
    orthanc.LogWarning(f"orthanc.LogWarning from fork child {n}")
    return seen

POOL = multiprocessing.get_context("fork").Pool(2)

def Compute(output, uri, **request):
    try:
        answer = POOL.map_async(InChild, [1, 2]).get(timeout=30)
    except Exception as error:  # a child stuck in Orthanc's copy: say so rather than hang
        answer = {"error": repr(error)}
    output.AnswerBuffer(json.dumps({"parent": os.getpid(), "children": answer}), "application/json")

def Stop(changeType, level, resource):
    if changeType == orthanc.ChangeType.ORTHANC_STOPPED:
        POOL.terminate()

orthanc.RegisterRestCallback("/compute", Compute)
orthanc.RegisterOnChangeCallback(Stop)
"""


def test_a_fork_child_is_not_attached_and_logs_to_its_standard_streams(make_orthanc):
    server: OrthancServer = make_orthanc(SCRIPT)
    answer = server.get_json("/compute")
    children = answer["children"]
    assert isinstance(children, list), answer
    for child in children:
        assert child["pid"] != answer["parent"]
        assert child["attached"] is False
        assert child["rest"].startswith("NotInOrthancError: "), child
        assert child["property"].startswith("NotInOrthancError: "), child

    for n in (1, 2):
        # Lines of the child's own, not lines of Orthanc's log (which start
        # with a level letter, a time and Orthanc's source file).
        server.wait_for_log(rf"^print from fork child {n}$")
        server.wait_for_log(rf"^WARNING:child:logging from fork child {n}$")
        server.wait_for_log(rf"^WARNING:orthanc:orthanc.LogWarning from fork child {n}$")
    assert not re.search(r"\] (print|logging|orthanc\.LogWarning) from fork child", server.log), server.log[-2000:]

    # The parent is still attached, and Orthanc serves.
    assert server.get("/system").status == 200
    assert server.get_json("/compute")["children"][0]["attached"] is False
