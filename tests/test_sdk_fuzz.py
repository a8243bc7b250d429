# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile arguments to the whole SDK surface, inside a real Orthanc: every call raises or succeeds, nothing crashes.

The surface is generated from the same facts as the bindings: each SDK
function of ``_sdk.FUNCTIONS`` that ``orthanc-py sdk-coverage`` counts as
reachable, as the ``orthanc`` module offers it (a function, a method of the
class of its first argument, ``close()`` for the ``Free...`` functions, or
the function named in ``cli.COVERED_BY``). The kinds of its arguments come
from the generated conventions (``_sdk_calls.CONVENTIONS``).

Every argument in turn gets every hostile value (wrong types, ``None``,
empty, short and huge buffers, a 4 GiB + 1 buffer, negative and 2**31+
integers, strings holding NUL or CR/LF) while the others stay plausible; an
argument that takes an Orthanc object also gets objects kept from an earlier
callback, closed ones, expired ones of every class (the others get one kept
object). A second test lets hypothesis mix hostile values in several
arguments at once. The calls run in a REST callback of the script, on Orthanc's HTTP
thread, and again in a C-FIND and a worklist callback for the functions that
take what only those lend (``FindQuery``, ``WorklistAnswers``...); before each
call the script writes the case to a file, so that a crash names it.

No function is excluded: no SDK function stops or resets Orthanc by itself,
and the only REST URIs the fuzzing sends are ``"x"`` and the hostile strings,
never ``/tools/reset`` or ``/tools/shutdown``. Registration functions are
called too: after start-up they raise ``SetupError``. The one restriction:
``CreateMemoryBuffer`` and ``CreateMemoryBuffer64`` do not get 2**31 and
2**32 as their size (they would legitimately allocate and copy 4 to 8 GiB).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orthanc_py.server import OrthancServer

from .dicom import make_dicom

SCRIPT = r'''
import inspect
import json
import mmap
import os
import time
import traceback

import orthanc
from orthanc_py import _calls, _capi, _sdk, _sdk_calls, cli
from orthanc_py import _compat as orthanc_py_compat

PREFIX = "OrthancPlugin"
SAMPLE = open("sample.dcm", "rb").read()
PROGRESS = os.open("progress.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
CLASSES = dict(_calls.HANDLE_CLASSES)
FREED_BY = {free: c_type for c_type, free in _sdk.FREE_FUNCTIONS.items()}


# --- the surface -----------------------------------------------------------------------------

def kinds_of(name, parameters):
    """The kind of each parameter: from the generated conventions when the shapes agree, else 'any'."""
    convention = _sdk_calls.CONVENTIONS.get(name)
    if convention is not None and len(convention[0]) == len(parameters):
        kinds = []
        for _argument, base, kind in convention[0]:
            kind = kind.rstrip("?")
            if kind == "handle":
                kinds.append("handle:" + base)
            elif kind == "headers":
                kinds.append("map")
            elif kind in ("bytes", "sized-text"):
                kinds.append("bytes")
            elif kind in ("text", "header-text"):
                kinds.append("str")
            else:
                kinds.append(kind)  # int, float
        return kinds
    return ["any"] * len(parameters)


def entry_point(name):
    """(label, callable, kinds) of one SDK function, as a script reaches it."""
    short = name[len(PREFIX):]
    if name in cli.COVERED_BY:
        function = getattr(orthanc, cli.COVERED_BY[name].split(".", 1)[1])
        return cli.COVERED_BY[name], function, ["any"] * required(function)
    if name in FREED_BY:
        cls = CLASSES[FREED_BY[name]]
        return f"orthanc.{cls.__name__}.close", cls.close, ["handle:" + FREED_BY[name]]
    if hasattr(orthanc, short):
        function = getattr(orthanc, short)
        return f"orthanc.{short}", function, kinds_of(name, list(range(required(function))))
    for c_type, cls in CLASSES.items():
        if short in vars(cls):
            method = vars(cls)[short]
            kinds = kinds_of(name, list(range(required(method))))
            if kinds and kinds[0] == "any":
                kinds[0] = "handle:" + c_type
            return f"orthanc.{cls.__name__}.{short}", method, kinds
    raise LookupError(f"{name} is reachable according to sdk-coverage, but no entry point was found")


def required(function):
    signature = inspect.signature(function)
    return sum(1 for p in signature.parameters.values()
               if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


# Excluded on purpose, and not reachable (yet): sdk-coverage counts neither.
excluded = set(cli.DELIBERATE_EXCLUSIONS) | (set(orthanc_py_compat.UNSUPPORTED) - set(cli.COVERED_BY))
SURFACE = [(name, *entry_point(name)) for name in sorted(_sdk.FUNCTIONS) if name not in excluded]


# --- values ------------------------------------------------------------------------------------

# "live": objects a DICOM callback lends while it runs; "old": the same, once their callback returned.
state = {"output": None, "old_output": None, "old_instance": None, "live": {}, "old": {}}


def expired(c_type):
    handle = CLASSES[c_type](1)  # never used as an address: expired at once, as a callback's would be
    _capi.expire(handle)
    return handle


def closed_image():
    image = orthanc.CreateImage(orthanc.PixelFormat.GRAYSCALE8, 2, 2)
    image.close()
    return image


HUGE = b"\xff" * (4 << 20)
PAST_32_BITS = mmap.mmap(-1, 2**32 + 1)  # address space only: never touched

HOSTILE = [
    ("None", lambda: None), ("object()", object), ("1.5", lambda: 1.5), ("[]", list), ("{'a': 1}", lambda: {"a": 1}),
    ("''", lambda: ""), ("'a\\0b'", lambda: "a\0b"), ("'a\\r\\nb'", lambda: "a\r\nb"),
    ("'é' * 1000", lambda: "é" * 1000),
    ("b''", lambda: b""), ("b'\\0'", lambda: b"\0"), ("4 MiB", lambda: HUGE),
    ("memoryview(4 GiB + 1)", lambda: memoryview(PAST_32_BITS)), ("bytearray(3)", lambda: bytearray(3)),
    ("-1", lambda: -1), ("-2**31 - 1", lambda: -2**31 - 1), ("2**31", lambda: 2**31), ("2**32", lambda: 2**32),
    ("2**64", lambda: 2**64), ("True", lambda: True),
    ("RestOutput of an earlier callback", lambda: state["old_output"]),
    ("DicomInstance of an earlier callback", lambda: state["old_instance"]),
    ("closed Image", closed_image),
    ("FindQuery of an earlier C-FIND", lambda: state["old"].get("OrthancPluginFindQuery")),
    ("WorklistAnswers of an earlier C-FIND", lambda: state["old"].get("OrthancPluginWorklistAnswers")),
] + [(f"expired {c_type[len(PREFIX):]}", lambda c_type=c_type: expired(c_type)) for c_type in sorted(CLASSES)]
# From here on, HOSTILE holds Orthanc objects: all of them for handle parameters, one for the others.
HANDLE_ONLY_FROM = next(i for i, (label, _) in enumerate(HOSTILE) if label.startswith("RestOutput"))

LIVE = {
    "OrthancPluginImage": lambda: orthanc.CreateImage(orthanc.PixelFormat.GRAYSCALE8, 16, 16),
    "OrthancPluginDicomInstance": lambda: orthanc.CreateDicomInstance(SAMPLE),
    "OrthancPluginRestOutput": lambda: state["output"],
    "OrthancPluginFindMatcher": lambda: orthanc.CreateFindMatcher(SAMPLE),
    "OrthancPluginPeers": lambda: orthanc.GetPeers(),
    "OrthancPluginJob": lambda: orthanc.CreateJob("fuzz", lambda: orthanc.JobStepStatus.SUCCESS),
}
PLAUSIBLE = {"str": lambda: "x", "bytes": lambda: SAMPLE, "int": lambda: 1, "float": lambda: 0.5,
             "map": lambda: {}, "any": lambda: 1}


def plausible(kind):
    if kind.startswith("handle:"):
        c_type = kind[7:]
        if c_type in state["live"]:
            return state["live"][c_type]
        try:
            return LIVE[c_type]() if c_type in LIVE else expired(c_type)
        except Exception:
            return expired(c_type)
    return PLAUSIBLE[kind]()


def hostile_for(kind):
    """Indexes into HOSTILE for a parameter: every object for handles, one kept object for the others."""
    if kind.startswith("handle:"):
        return range(len(HOSTILE))
    return list(range(HANDLE_ONLY_FROM)) + [HANDLE_ONLY_FROM + 1]


# These allocate (and return a copy of) as many bytes as asked: given 2**31 or 2**32 they
# legitimately take 4 to 8 GiB of memory, too much for a shared test machine.
MEMORY_HUNGRY = {"OrthancPluginCreateMemoryBuffer", "OrthancPluginCreateMemoryBuffer64"}
LARGE_SIZES = {i for i, (label, _) in enumerate(HOSTILE) if label in ("2**31", "2**32")}

CASES = []  # (function index, position or -1, hostile index or -1)
for index, (name, label, function, kinds) in enumerate(SURFACE):
    CASES.append((index, -1, -1))
    for position, kind in enumerate(kinds):
        CASES.extend((index, position, value) for value in hostile_for(kind)
                     if not (name in MEMORY_HUNGRY and value in LARGE_SIZES))


# --- running cases -------------------------------------------------------------------------------

summary = {"tried": 0, "functions": set(), "raised": 0, "succeeded": 0, "findings": [], "last": None, "batches": 0}


def run(index, choices):
    """Calls SURFACE[index] with, for each argument, a hostile value (an index) or a plausible one (-1)."""
    name, label, function, kinds = SURFACE[index]
    args = [HOSTILE[choice][1]() if choice >= 0 else plausible(kind) for kind, choice in zip(kinds, choices)]
    shown = ", ".join(HOSTILE[choice][0] if choice >= 0 else "plausible" for choice in choices)
    case = f"{label}({shown})  [{name}]"
    os.pwrite(PROGRESS, (case + "\n").ljust(400).encode("utf-8", "replace"), 0)
    summary["tried"] += 1
    summary["functions"].add(name)
    try:
        result = function(*args)
    except Exception as error:
        summary["raised"] += 1
        outcome = f"{type(error).__name__}: {str(error)[:300]}"
        if isinstance(error, (SystemError, MemoryError)):  # Python read something it should not have
            summary["findings"].append(f"{case}: {outcome}")
    except BaseException as error:
        summary["findings"].append(f"{case}: {type(error).__name__} escaped: {error}")
        outcome = f"{type(error).__name__} (not an Exception)"
    else:
        summary["succeeded"] += 1
        outcome = f"returned {type(result).__name__}"
        if isinstance(result, _calls.Handle):
            result.close()
    if not _capi.is_attached():
        summary["findings"].append(f"{case}: orthanc_py was detached from Orthanc")
    for value in args:
        if isinstance(value, _calls.Handle) and value is not state["output"] and value._owned:
            value.close()
    summary["last"] = f"{case} -> {outcome}"
    return outcome


def fuzz(output, uri, **request):
    """Runs CASES[start:start + count]; ?start=&count= (or a body {"function": i, "choices": [...]}).

    A case may answer this very request (AnswerBuffer on the live output):
    Orthanc then sends that answer at once and the batch goes on, so the
    test waits for "batches" to count this one before it starts another.
    """
    state["output"] = output
    try:
        if request["method"] == "POST":
            wanted = json.loads(request["body"])
            run(wanted["function"], wanted["choices"])
        else:
            start, count = int(request["get"]["start"]), int(request["get"]["count"])
            for index, position, value in CASES[start:start + count]:
                choices = [value if p == position else -1 for p in range(len(SURFACE[index][3]))]
                run(index, choices)
    finally:
        summary["batches"] += 1
    try:
        output.AnswerBuffer("done", "text/plain")
    except Exception:
        pass  # a case answered (or refused to answer) this request already


orthanc.RegisterRestCallback("/fuzz/run", fuzz)


def lent_by_c_find(answers, query):
    """Runs, with the live objects of a C-FIND, the cases of every function that takes one of them."""
    lent = {answers.c_type_name: answers, query.c_type_name: query}
    state["live"] = lent
    try:
        for index, position, value in CASES:
            kinds = SURFACE[index][3]
            if any(kind[7:] in lent for kind in kinds if kind.startswith("handle:")):
                run(index, [value if p == position else -1 for p in range(len(kinds))])
    finally:
        state["live"] = {}
        state["old"].update(lent)  # expired when this callback returns
        summary["batches"] += 1


orthanc.RegisterFindCallback(lambda answers, query, issuer, called: lent_by_c_find(answers, query))
orthanc.RegisterWorklistCallback(lambda answers, query, issuer, called: lent_by_c_find(answers, query))


def keep(output, uri, **request):
    state["old_output"] = output
    output.AnswerBuffer("kept", "text/plain")


orthanc.RegisterRestCallback("/fuzz/keep", keep)


def keep_instance(instance, instance_id):
    state["old_instance"] = instance


orthanc.RegisterOnStoredInstanceCallback(keep_instance)


def info(output, uri, **request):
    answer = {"cases": len(CASES), "surface": [[name, label, kinds] for name, label, _, kinds in SURFACE],
              "hostile": [label for label, _ in HOSTILE],
              "tried": summary["tried"], "functions": sorted(summary["functions"]), "raised": summary["raised"],
              "succeeded": summary["succeeded"], "findings": summary["findings"], "last": summary["last"],
              "batches": summary["batches"]}
    output.AnswerBuffer(json.dumps(answer), "application/json")


orthanc.RegisterRestCallback("/fuzz/info", info)
'''

BATCH = 400


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sdk-fuzz")
    (workdir / "fuzz.py").write_text(SCRIPT)
    (workdir / "sample.dcm").write_bytes(make_dicom(patient_id="FUZZ"))
    # A peer that refuses connections at once: CallPeerApi gets a real, failing peer.
    server = OrthancServer(str(workdir), script=str(workdir / "fuzz.py"),
                           config={"OrthancPeers": {"refusing": ["http://127.0.0.1:1/"]},
                                   "DicomModalities": {"fuzz": ["FUZZ", "127.0.0.1", 104]}}, cwd=str(workdir))
    server.start()
    assert server.get("/fuzz/keep").text == "kept"
    server.upload(workdir / "sample.dcm")
    yield server, workdir
    server.stop()


def reachable_count() -> int:
    command = [str(Path(sys.executable).parent / "orthanc-py"), "sdk-coverage"]
    out = subprocess.run(command, capture_output=True, text=True).stdout
    first = out.splitlines()[0]
    return int(first.split(": ", 1)[1].split(" of ")[0])


def run_batch(server: OrthancServer, workdir: Path, query: str, body: bytes | None = None) -> dict:
    """Sends one batch to the script and waits until it has run to its end; returns the script's summary."""
    before = server.get_json("/fuzz/info")["batches"]
    # The answer may be anything a case made of it (a redirect, a 4 MiB header...): not read;
    # whatever the client makes of it, Orthanc's health is checked below.
    with contextlib.suppress(Exception):
        server.request("POST" if body is not None else "GET", "/fuzz/run" + query, body, timeout=120)
    deadline = time.monotonic() + 120
    while True:
        try:
            info = server.get_json("/fuzz/info")
        except OSError:
            time.sleep(0.5)  # Orthanc died, or is about to: alive() tells
            assert alive(server), crashed(server, workdir)
            continue
        if info["batches"] > before:
            return info
        assert time.monotonic() < deadline, f"a batch did not end: last case {info['last']}"
        time.sleep(0.05)


def alive(server: OrthancServer) -> bool:
    try:
        return server.get("/system", timeout=10).status == 200
    except OSError:
        return False


def crashed(server: OrthancServer, workdir: Path) -> str:
    case = (workdir / "progress.txt").read_text(errors="replace").strip()
    return f"Orthanc died during {case}\n{server.log[-3000:]}"


def test_every_reachable_sdk_function_survives_hostile_arguments(fuzz_server):
    server, workdir = fuzz_server
    started = time.monotonic()
    total = server.get_json("/fuzz/info")["cases"]
    for start in range(0, total, BATCH):
        info = run_batch(server, workdir, f"?start={start}&count={BATCH}")
    # The C-FIND and worklist objects, live: only a C-FIND lends them.
    for model in ("-P", "-W"):
        before = info["batches"]
        subprocess.run(["findscu", "-aet", "FUZZ", "-aec", "ORTHANC", model, "-k", "PatientID=*",
                        "127.0.0.1", str(server.dicom_port)], capture_output=True, timeout=120)
        assert alive(server), crashed(server, workdir)
        info = server.get_json("/fuzz/info")
        assert info["batches"] == before + 1, f"the {model} C-FIND did not run its cases: {info['batches'] - before}"
    functions = len(info["functions"])
    print(f"\n{functions} functions x {info['tried']} cases tried ({info['raised']} raised, "
          f"{info['succeeded']} succeeded), {len(info['findings'])} crashes found, "
          f"in {time.monotonic() - started:.0f} s")
    for finding in info["findings"]:
        print("  crash:", finding)
    assert info["findings"] == []
    missed = sorted({name for name, _, _ in info["surface"]} - set(info["functions"]))
    assert not missed, f"not tried: {missed}"
    assert info["tried"] >= total, "every case ran to its end (and the C-FIND ones once more)"
    assert functions == reachable_count(), "the fuzzing covers every function sdk-coverage counts as reachable"
    # A C++ exception that Orthanc lets through a service unwinds across Python's frames: never acceptable.
    for sign in ("Segmentation", "Exception ignored on calling ctypes callback",
                 "An unhandled exception was generated inside the HTTP server"):
        assert sign not in server.log, sign


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_mixes_of_hostile_arguments(fuzz_server, data):
    server, workdir = fuzz_server
    catalog = _catalog(server)
    index = data.draw(st.integers(0, len(catalog["surface"]) - 1), label="function")
    _name, _label, kinds = catalog["surface"][index]
    choices = data.draw(st.lists(st.integers(-1, len(catalog["hostile"]) - 1), min_size=len(kinds),
                                 max_size=len(kinds)), label="arguments")
    info = run_batch(server, workdir, "", json.dumps({"function": index, "choices": choices}).encode())
    assert info["findings"] == [], info["findings"]


_CATALOG: dict = {}


def _catalog(server: OrthancServer) -> dict:
    if not _CATALOG:
        _CATALOG.update(server.get_json("/fuzz/info"))
    return _CATALOG
