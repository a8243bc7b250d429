# SPDX-License-Identifier: GPL-3.0-or-later
"""The cost of SDK calls made by a script, and of ingesting instances with a stored-instance handler.

Two measurements, each against the official plugin in the same run:

``calls``
    Microseconds per call of about ten common SDK calls, timed inside Orthanc
    by the script itself (``time.perf_counter`` around a loop of calls, for
    at least ``--budget`` seconds per call). The same script runs under the
    official plugin and under orthanc_py (``orthanc`` module); calls that the
    decorator API makes through its own functions (``rest.get``...) are timed
    under orthanc_py too. Rounds interleave the servers; the table gives
    the median per call, and each ratio is the median of the rounds' ratios.

``ingest``
    Instances per second stored over DICOM: ``--instances`` small files
    sent by two ``storescu`` associations at once (DCMTK), storage on tmpfs,
    with no plugin, and with a stored-instance handler that only counts or
    that reads the instance's tags (``GetInstanceSimplifiedJson``), under
    the official plugin, the ``orthanc`` module and ``@on_stored_instance``.
    Ratios are to the server without a plugin, and to the official plugin
    with the same handler, each the median of the rounds' ratios.

``TCP_NODELAY=1`` is set for ``storescu`` and Orthanc: without it, DCMTK's
Nagle makes every instance wait 40 ms on loopback and every configuration
measures about the same.

Both plugins run on the same Python build (see ``http_bench.py``): orthanc_py
from ``--venv``, by default ``.venv-debian``, which ``make bench`` makes.

Usage: ``.venv/bin/python bench/sdk_bench.py [calls|ingest|all] [--rounds 3] [--venv DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import OFFICIAL_PLUGIN, add_venv_argument, measured_venv, venv_loader
from orthanc_py.server import OrthancServer
from tests.dicom import make_dicom

# --- calls ----------------------------------------------------------------------------------

# Runs unchanged under both plugins. POST /bench/setup receives an instance
# to work on; GET /bench/calls?budget=S&call=I times the I-th call for S seconds and answers
# the microseconds per call; GET /bench/names lists the calls.
CALLS_SCRIPT = r'''
import json
import time

import orthanc

try:
    from orthanc_py import rest
except ImportError:  # the official plugin
    rest = None

STATE = {}
FIND = json.dumps({"Level": "Instance", "Query": {"PatientID": "BENCH"}})


def calls():
    instance_id = STATE["id"]
    dicom = STATE["dicom"]
    made = STATE["made"]
    tags = "/instances/%s/simplified-tags" % instance_id
    timed = {
        "GetGlobalProperty": lambda: orthanc.GetGlobalProperty(5000, "x"),
        "GetOrthancPath": orthanc.GetOrthancPath,
        "GenerateUuid": orthanc.GenerateUuid,
        "LookupDictionary": lambda: orthanc.LookupDictionary("PatientID"),
        "RestApiGet /system": lambda: orthanc.RestApiGet("/system"),
        "RestApiPost /tools/find": lambda: orthanc.RestApiPost("/tools/find", FIND),
        "RestApiGet simplified-tags": lambda: orthanc.RestApiGet(tags),
        "GetDicomForInstance": lambda: orthanc.GetDicomForInstance(instance_id),
        "CreateDicomInstance": lambda: orthanc.CreateDicomInstance(dicom),
        "DicomInstance.GetInstanceSize": made.GetInstanceSize,
        "DicomInstance.GetInstanceSimplifiedJson": made.GetInstanceSimplifiedJson,
    }
    if rest is not None:
        timed["rest.get /system"] = lambda: rest.get("/system")
        timed["rest.post /tools/find"] = lambda: rest.post("/tools/find", FIND)
        timed["rest.get simplified-tags"] = lambda: rest.get(tags)
    return timed


def Setup(output, uri, **request):
    STATE["id"] = request["body"].decode()
    STATE["dicom"] = orthanc.GetDicomForInstance(STATE["id"])
    STATE["made"] = orthanc.CreateDicomInstance(STATE["dicom"])
    output.AnswerBuffer("ok", "text/plain")


def Calls(output, uri, **request):
    budget = float(request["get"].get("budget", "0.2"))
    call = list(calls().values())[int(request["get"]["call"])]
    call()  # warm
    count = 0
    started = time.perf_counter()
    while True:
        for _ in range(10):
            call()
        count += 10
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            break
    output.AnswerBuffer(json.dumps(elapsed / count * 1e6), "application/json")


def Names(output, uri, **request):
    output.AnswerBuffer(json.dumps(list(calls())), "application/json")


orthanc.RegisterRestCallback("/bench/setup", Setup)
orthanc.RegisterRestCallback("/bench/calls", Calls)
orthanc.RegisterRestCallback("/bench/names", Names)
'''


def measure_calls(loader: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, dict[str, float]]]:
    """Rounds of ``{configuration: {call: microseconds}}``."""
    (workdir / "calls.py").write_text(CALLS_SCRIPT)
    configurations = {"orthanc_py": loader}
    if os.path.exists(OFFICIAL_PLUGIN):
        configurations["official"] = OFFICIAL_PLUGIN
    dicom = make_dicom(patient_id="BENCH", rows=64, cols=64)
    rounds = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, plugin in configurations.items():
            server = OrthancServer(str(workdir / f"calls-{name}"), script=str(workdir / "calls.py"), plugin=plugin)
            servers[name] = stack.enter_context(server.start())
            instance_id = server.upload(dicom)["ID"]  # type: ignore[index]
            answer = server.post("/bench/setup", instance_id)
            assert answer.status == 200, answer
        names = {name: server.get_json("/bench/names") for name, server in servers.items()}
        for round_ in range(args.rounds):
            # Call by call, the servers one after the other: each ratio compares
            # timings taken within a second of each other.
            results: dict[str, dict[str, float]] = {name: {} for name in servers}
            for call in names["orthanc_py"]:
                for name, server in servers.items():
                    if call in names[name]:
                        index = names[name].index(call)
                        answer = server.get(f"/bench/calls?budget={args.budget}&call={index}", timeout=600)
                        assert answer.status == 200, (name, call, server.log[-1500:])
                        results[name][call] = answer.json()  # type: ignore[assignment]
            rounds.append(results)
            print(f"calls round {round_ + 1}/{args.rounds} done", flush=True)
    return rounds


def report_calls(rounds: list[dict[str, dict[str, float]]]) -> None:
    ours = rounds[0]["orthanc_py"]
    official = "official" in rounds[0]
    print(f"\nmicroseconds per call inside Orthanc, median of {len(rounds)} rounds "
          f"(ratio: median of each round's ours/official)")
    print(f"{'call':<42} {'official':>9} {'orthanc_py':>11} {'ratio':>7}")
    for call in ours:
        mine = statistics.median(each["orthanc_py"][call] for each in rounds)
        twin = call.replace("rest.get", "RestApiGet").replace("rest.post", "RestApiPost")
        if official and twin in rounds[0]["official"]:
            base = statistics.median(each["official"][twin] for each in rounds)
            ratio = statistics.median(each["orthanc_py"][call] / each["official"][twin] for each in rounds)
            print(f"{call:<42} {base:>9.1f} {mine:>11.1f} {ratio:>6.2f}x")
        else:
            print(f"{call:<42} {'n/a':>9} {mine:>11.1f} {'':>7}")


# --- ingest ---------------------------------------------------------------------------------

COUNT_MODULE = '''
import orthanc
count = 0

def OnStored(dicom, instanceId):
    global count
    count += 1

orthanc.RegisterOnStoredInstanceCallback(OnStored)
'''

TAGS_MODULE = '''
import json
import orthanc
patients = set()

def OnStored(dicom, instanceId):
    patients.add(json.loads(dicom.GetInstanceSimplifiedJson())["PatientID"])

orthanc.RegisterOnStoredInstanceCallback(OnStored)
'''

COUNT_DECORATORS = '''
from orthanc_py import on_stored_instance
count = 0

@on_stored_instance
def stored(instance):
    global count
    count += 1
'''

TAGS_DECORATORS = '''
from orthanc_py import on_stored_instance
patients = set()

@on_stored_instance
def stored(instance):
    patients.add(instance.simplified_json["PatientID"])
'''


def ingest_configurations(loader: str) -> dict[str, tuple[str | None, str | None]]:
    """name -> (script, plugin); ``None`` for the server without a plugin."""
    configurations: dict[str, tuple[str | None, str | None]] = {"no plugin": (None, None)}
    if os.path.exists(OFFICIAL_PLUGIN):
        configurations["official count"] = (COUNT_MODULE, OFFICIAL_PLUGIN)
        configurations["official tags"] = (TAGS_MODULE, OFFICIAL_PLUGIN)
    configurations["module count"] = (COUNT_MODULE, loader)
    configurations["module tags"] = (TAGS_MODULE, loader)
    configurations["decorators count"] = (COUNT_DECORATORS, loader)
    configurations["decorators tags"] = (TAGS_DECORATORS, loader)
    return configurations


def write_instances(folder: Path, count: int) -> list[Path]:
    """``count`` small DICOM files, in studies of 100 instances."""
    folder.mkdir()
    files = []
    for index in range(count):
        study, number = divmod(index, 100)
        path = folder / f"{index:05d}.dcm"
        path.write_bytes(make_dicom(patient_id=f"P{study}", study_uid=f"1.2.826.0.1.3680043.99.{study}",
                                    series_uid=f"1.2.826.0.1.3680043.99.{study}.1",
                                    sop_uid=f"1.2.826.0.1.3680043.99.{study}.1.{number}", instance_number=number))
        files.append(path)
    return files


def send(server: OrthancServer, files: list[Path], environment: dict[str, str]) -> float:
    """Sends the files over two associations at once; instances per second."""
    elapsed = send_seconds(server, files, environment)
    stored = server.get_json("/statistics")["CountInstances"]  # type: ignore[index]
    if stored != len(files):
        raise RuntimeError(f"{stored} of {len(files)} instances were stored")
    return len(files) / elapsed


def send_seconds(server: OrthancServer, files: list[Path], environment: dict[str, str]) -> float:
    """Sends the files over two associations at once (DCMTK's storescu); the seconds until both are done."""
    halves = [files[0::2], files[1::2]]
    started = time.monotonic()
    processes = [subprocess.Popen(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(server.dicom_port),
                                   *map(str, half)], env=environment, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for half in halves]
    for process in processes:
        _, errors = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {errors.decode(errors='replace')}")
    return time.monotonic() - started


def clear(server: OrthancServer) -> None:
    for patient in server.get_json("/patients"):  # type: ignore[union-attr]
        server.request("DELETE", f"/patients/{patient}")


def measure_ingest(loader: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """Rounds of ``{configuration: instances per second}``."""
    environment = {**os.environ, "TCP_NODELAY": "1"}
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") else None
    rounds = []
    with tempfile.TemporaryDirectory(prefix="orthanc-py-ingest-", dir=tmpfs) as folder, \
            contextlib.ExitStack() as stack:
        workdir = Path(folder)
        files = write_instances(workdir / "files", args.instances)
        servers = {}
        for name, (script, plugin) in ingest_configurations(loader).items():
            slug = name.replace(" ", "-")
            script_path = None
            if script is not None:
                script_path = workdir / f"{slug}.py"
                script_path.write_text(script)
            server = OrthancServer(str(workdir / slug), script=str(script_path) if script_path else None,
                                   plugin=plugin, env=environment)
            if plugin is None:
                server.configuration["Plugins"] = []
            servers[name] = stack.enter_context(server.start())
        for server in servers.values():  # warm up: first association, first callback
            send(server, files[:20], environment)
            clear(server)
        for round_ in range(args.rounds):
            results = {}
            for name, server in servers.items():
                results[name] = send(server, files, environment)
                clear(server)
            rounds.append(results)
            print(f"ingest round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{name} {value:.0f}" for name, value in results.items()), flush=True)
    return rounds


def report_ingest(rounds: list[dict[str, float]], instances: int) -> None:
    print(f"\ninstances/s stored over DICOM ({instances} instances, two storescu associations, storage on "
          f"tmpfs), median of {len(rounds)} rounds; ratios: median of each round's ratio")
    print(f"{'configuration':<18} {'instances/s':>12} {'of no plugin':>13} {'of official':>12}")
    for name in rounds[0]:
        median = statistics.median(each[name] for each in rounds)
        of_none = statistics.median(each[name] / each["no plugin"] for each in rounds)
        handler = name.split(" ")[-1]
        twin = f"official {handler}"
        of_official = (f"{statistics.median(each[name] / each[twin] for each in rounds):.2f}x"
                       if twin in rounds[0] and name != "no plugin" else "")
        print(f"{name:<18} {median:>12.0f} {of_none:>12.2f}x {of_official:>12}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("calls", "ingest", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, of which the median (default: 3)")
    parser.add_argument("--budget", type=float, default=0.3,
                        help="seconds spent on each call in each round (default: 0.3)")
    parser.add_argument("--instances", type=int, default=2000, help="instances per ingest (default: 2000)")
    add_venv_argument(parser)
    args = parser.parse_args()
    loader, interpreter = venv_loader(measured_venv(args))
    if args.what in ("ingest", "all") and shutil.which("storescu") is None:
        print("bench: storescu is not installed (Debian: apt-get install dcmtk)", file=sys.stderr)
        return 2
    print(f"orthanc_py on {interpreter}; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="orthanc-py-sdk-bench-") as folder:
        if args.what in ("calls", "all"):
            report_calls(measure_calls(loader, args, Path(folder)))
        if args.what in ("ingest", "all"):
            report_ingest(measure_ingest(loader, args), args.instances)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
