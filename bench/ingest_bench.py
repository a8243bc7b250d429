# SPDX-License-Identifier: GPL-3.0-or-later
"""The cost of ``@on_change(..., durable=True)`` on ingest, against the same handler without it.

Starts one real Orthanc per configuration, all at once, each loading a
script of its own through orthanc_py:

- ``floor``: no change handler (a route only);
- ``stable plain 2``: a twin of ``stable plain`` (below), measured next to it:
  the ratios between the two show what the bench resolves on the machine;
- ``stable plain`` and ``stable durable``: ``@on_change(ChangeType.STABLE_STUDY)``,
  without and with ``durable=True`` (a durable handler whose deliveries are
  quick, as here, saves its checkpoint at most every 0.25 s and at the end of
  each page of the log it reads);
- ``instance plain`` and ``instance durable``: ``@on_change(ChangeType.STABLE_STUDY,
  ChangeType.NEW_INSTANCE)``, without and with ``durable=True``: a delivery per
  instance, the worst case;
- ``side by side``: a plain and a durable ``STABLE_STUDY`` handler in one
  Orthanc, both called from the same signal: the difference between their
  times is the durable handler's delay, study by study.

Every handler only counts, and notes when it got its last change of each type.

Each round sends ``--studies`` studies of ``--instances`` small instances to
each server in turn over DICOM (two ``storescu`` associations at once, DCMTK,
with ``TCP_NODELAY=1`` for ``storescu`` and Orthanc: without it, Nagle makes
every instance wait 40 ms on loopback), with ``StableAge`` at ``--stable-age``
seconds, and measures:

- *ingest*: instances per second, from the start of ``storescu`` until both
  associations are done and every instance is stored;
- *handled*: the seconds from the start of ``storescu`` until the handler has
  got every ``STABLE_STUDY``, minus ``StableAge`` (for ``floor``: until
  Orthanc's change log holds every ``StableStudy``, read every 20 ms). Orthanc
  counts a resource's age in whole seconds of the clock and looks for stable
  resources every 500 ms, so this time moves by up to 1.5 s from one ingest
  or server to the next whatever the handler does: ``side by side`` gives the
  durable handler's own delay without that rounding;
- *instances handled* (handlers of ``NEW_INSTANCE``): instances per second, from
  the start of ``storescu`` until the handler got the last ``NEW_INSTANCE``,
  where a durable handler that falls behind the ingest shows;
- *CPU*: milliseconds of CPU that Orthanc's process (all its threads, user and
  system, from ``/proc``) spent per 1,000 instances, from the start of
  ``storescu`` until every change was handled: what the handler costs wherever
  it falls in time, and the figure that other work on the machine moves least.

The studies are deleted after each ingest, once every durable handler has read
the change log to its end. The servers are measured one after the other, in
the order above, then in the reverse order in the next round: each durable
handler goes right after its plain twin, then right before it. The figures
are the medians of ``--rounds`` rounds, and each ratio (durable / plain) is
the median of the ratios within each round, with the lowest and highest.

Storage and index go to a temporary folder of ``--dir``: ``/dev/shm`` (tmpfs)
by default, as in ``sdk_bench.py``, where ingest is bound by the CPU and a
durable handler's work weighs the most; ``--dir /var/tmp`` measures on disk,
where Orthanc flushes each instance it stores (``SyncStorageArea``; the
checkpoints, global properties in Orthanc's SQLite index, add no flush).

orthanc_py is the one installed in ``--venv`` (by default ``.venv-debian``,
which ``make bench`` makes), as in ``http_bench.py``.

Usage: ``.venv/bin/python bench/ingest_bench.py [--rounds 5] [--studies 100] [--instances 20]
[--stable-age 1] [--dir DIR] [--venv DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import add_venv_argument, measured_venv, venv_loader
from bench.sdk_bench import send_seconds as send
from orthanc_py.server import OrthancServer
from tests.dicom import make_dicom

FLOOR_SCRIPT = '''
from orthanc_py import route

@route("/bench/counts")
def counts(request):
    return {}
'''

# {types} and {durable} are filled in per configuration.
HANDLER_SCRIPT = '''
import time
from orthanc_py import ChangeType, on_change, route

seen = {{"STABLE_STUDY": 0, "NEW_INSTANCE": 0, "last_stable": 0.0, "last_instance": 0.0}}

@on_change({types}{durable})
def count(change):
    seen[change.change_type.name] += 1
    if change.change_type is ChangeType.STABLE_STUDY:
        seen["last_stable"] = time.time()
    else:
        seen["last_instance"] = time.time()

@route("/bench/counts")
def counts(request):
    return seen
'''

# A plain and a durable STABLE_STUDY handler in one Orthanc: each study's
# STABLE_STUDY reaches both from the same signal, so the difference between
# their times is the durable handler's delay.
SIDE_BY_SIDE_SCRIPT = '''
import time
from orthanc_py import ChangeType, on_change, route

plain_at = {}
durable_at = {}
seen = {"STABLE_STUDY": 0, "NEW_INSTANCE": 0, "last_stable": 0.0, "delays": []}

@on_change(ChangeType.STABLE_STUDY)
def plain(change):
    plain_at[change.resource_id] = time.time()

@on_change(ChangeType.STABLE_STUDY, durable=True)
def durable(change):
    durable_at[change.resource_id] = time.time()

@route("/bench/counts")
def counts(request):
    for study in list(durable_at):
        if study in plain_at:
            handled = durable_at.pop(study)
            seen["delays"].append(handled - plain_at.pop(study))
            seen["STABLE_STUDY"] += 1
            seen["last_stable"] = max(seen["last_stable"], handled)
    return seen
'''

STABLE = "ChangeType.STABLE_STUDY"
STABLE_AND_INSTANCE = "ChangeType.STABLE_STUDY, ChangeType.NEW_INSTANCE"

SIDE_BY_SIDE = "side by side"
CONTROL = "stable plain 2"
PAIRS = {"stable": ("stable durable", "stable plain"), "instance": ("instance durable", "instance plain"),
         "control": (CONTROL, "stable plain")}
"""The ratios reported, by the name of their row: (durable, plain); the control is a plain twin of a plain one."""


@dataclass(frozen=True)
class Configuration:
    name: str
    script: str
    instances: bool
    """Whether its handler counts ``NEW_INSTANCE`` too (the bench waits for all of them)."""
    durable: bool


def configurations() -> list[Configuration]:
    made = [Configuration("floor", FLOOR_SCRIPT, False, False),
            Configuration(CONTROL, HANDLER_SCRIPT.format(types=STABLE, durable=""), False, False)]
    for label, types in (("stable", STABLE), ("instance", STABLE_AND_INSTANCE)):
        for durable in (False, True):
            script = HANDLER_SCRIPT.format(types=types, durable=", durable=True" if durable else "")
            made.append(Configuration(f"{label} {'durable' if durable else 'plain'}", script,
                                      types == STABLE_AND_INSTANCE, durable))
    made.append(Configuration(SIDE_BY_SIDE, SIDE_BY_SIDE_SCRIPT, False, True))
    return made


def write_studies(folder: Path, studies: int, per_study: int) -> list[Path]:
    """``studies`` studies (each of its own patient) of ``per_study`` small instances, study after study."""
    folder.mkdir()
    files = []
    for study in range(studies):
        for number in range(per_study):
            root = f"1.2.826.0.1.3680043.98.{study}"
            path = folder / f"{study:04d}-{number:04d}.dcm"
            path.write_bytes(make_dicom(patient_id=f"P{study}", study_uid=root, series_uid=f"{root}.1",
                                        sop_uid=f"{root}.1.{number}", instance_number=number))
            files.append(path)
    return files


def logged_stable_studies(server: OrthancServer, since: int) -> tuple[int, int]:
    """``StableStudy`` changes in Orthanc's log after change ``since``, and the last change read."""
    found = 0
    while True:
        page = server.get_json(f"/changes?since={since}&limit=1000")
        changes = page["Changes"]
        found += sum(change["ChangeType"] == "StableStudy" for change in changes)
        if changes:
            since = int(changes[-1]["Seq"])
        if page["Done"] or not changes:
            return found, since


def last_change(server: OrthancServer) -> int:
    return int(server.get_json("/changes?last")["Last"])


def wait_handled(server: OrthancServer, configuration: Configuration, expected: dict[str, int], studies: int,
                 since: int) -> float:
    """Waits until the handler has got every change of the round; when it got the last ``STABLE_STUDY`` (epoch).

    :param expected: the handler's counts once it has got them all (they add up from round to round).
    :param studies: the studies of the round; ``since``, the last change before it (for ``floor``).
    """
    deadline = time.monotonic() + 120
    logged = 0
    while time.monotonic() < deadline:
        if configuration.name == "floor":
            found, since = logged_stable_studies(server, since)
            logged += found
            if logged >= studies:
                return time.time()
        else:
            seen = server.get_json("/bench/counts")
            if seen["STABLE_STUDY"] >= expected["STABLE_STUDY"] and (
                    not configuration.instances or seen["NEW_INSTANCE"] >= expected["NEW_INSTANCE"]):
                return float(seen["last_stable"])
        time.sleep(0.02 if configuration.name == "floor" else 0.1)  # the handlers note their own times
    raise RuntimeError(f"{configuration.name}: the handler did not get every change within 120 s; "
                       f"log:\n{server.log[-3000:]}")


def wait_idle(server: OrthancServer, configuration: Configuration) -> None:
    """Waits until a durable handler's checkpoint has reached the end of Orthanc's change log."""
    if not configuration.durable:
        return
    last = last_change(server)
    server.wait_until(lambda: all(handler["Checkpoint"] >= last
                                  for handler in server.get_json("/orthanc-py/durable").values()),
                      timeout=60, what="the durable handler at the end of the change log")


def clear(server: OrthancServer) -> None:
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


@dataclass
class Measure:
    rate: float
    """Instances stored per second."""
    handled: float
    """Seconds from the start of the sending to the last ``STABLE_STUDY`` handled, minus ``StableAge``."""
    handled_rate: float | None
    """Instances per second from the start of the sending to the last ``NEW_INSTANCE`` handled, where asked for."""
    cpu: float
    """Milliseconds of CPU (user and system) Orthanc's process spent per 1,000 instances, until all were handled."""


def cpu_seconds(server: OrthancServer) -> float:
    """The CPU time of Orthanc's process so far, all its threads, user and system."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime and stime


def measure_one(server: OrthancServer, configuration: Configuration, files: list[Path], studies: int,
                totals: dict[str, int], args: argparse.Namespace, environment: dict[str, str]) -> Measure:
    """One ingest of the files into ``server``, then its clean-up; ``totals`` are the handler's counts so far."""
    since = last_change(server)
    totals["STABLE_STUDY"] += studies
    totals["NEW_INSTANCE"] += len(files)
    cpu_before = cpu_seconds(server)
    started = time.time()
    elapsed = send(server, files, environment)
    stored = server.get_json("/statistics")["CountInstances"]
    if stored != len(files):
        raise RuntimeError(f"{configuration.name}: {stored} of {len(files)} instances were stored")
    handled = wait_handled(server, configuration, totals, studies, since)
    cpu = cpu_seconds(server) - cpu_before
    handled_rate = None
    if configuration.instances:
        last_instance = server.get_json("/bench/counts")["last_instance"]
        handled_rate = len(files) / (float(last_instance) - started)
    clear(server)
    wait_idle(server, configuration)
    return Measure(len(files) / elapsed, handled - started - args.stable_age, handled_rate,
                   cpu / len(files) * 1e6)


def measure(loader: str, args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Measure]], list[float]]:
    """Rounds of ``{configuration: Measure}``, and the durable handler's delays side by side (seconds)."""
    environment = {**os.environ, "TCP_NODELAY": "1"}
    files = write_studies(workdir / "files", args.studies, args.instances)
    chosen = configurations()
    rounds: list[dict[str, Measure]] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for configuration in chosen:
            slug = configuration.name.replace(" ", "_")
            script = workdir / f"{slug}.py"
            script.write_text(configuration.script)
            server = OrthancServer(str(workdir / slug), script=str(script), plugin=loader, env=environment,
                                   config={"StableAge": args.stable_age})
            servers[configuration.name] = stack.enter_context(server.start())
        totals = {c.name: {"STABLE_STUDY": 0, "NEW_INSTANCE": 0} for c in chosen}
        warm = files[:2 * args.instances]  # two studies
        for configuration in chosen:  # warm up: first association, first callbacks, the first checkpoint
            measure_one(servers[configuration.name], configuration, warm, 2, totals[configuration.name], args,
                        environment)
        warm_delays = len(servers[SIDE_BY_SIDE].get_json("/bench/counts")["delays"])
        for round_ in range(args.rounds):
            results = {}
            # Forward, then backward: each durable handler is measured right
            # before its plain twin, then right after it.
            for configuration in chosen if round_ % 2 == 0 else chosen[::-1]:
                results[configuration.name] = measure_one(servers[configuration.name], configuration, files,
                                                          args.studies, totals[configuration.name], args,
                                                          environment)
            rounds.append({c.name: results[c.name] for c in chosen})
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{name} {m.rate:.0f}/s {m.handled:.2f} s {m.cpu:.0f} ms" for name, m in rounds[-1].items()),
                flush=True)
        delays = servers[SIDE_BY_SIDE].get_json("/bench/counts")["delays"][warm_delays:]
    return rounds, delays


def summary(values: list[float], digits: int, suffix: str = "") -> str:
    """The median, and the lowest and highest value in brackets."""
    return (f"{statistics.median(values):.{digits}f}{suffix} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def report(rounds: list[dict[str, Measure]], delays: list[float], args: argparse.Namespace) -> None:
    total = args.studies * args.instances
    print(f"\n{args.studies} studies of {args.instances} instances ({total} instances) over DICOM, two storescu "
          f"associations, StableAge {args.stable_age} s; median of {len(rounds)} rounds (lowest-highest)")
    columns = ("ingest/s", "handled s", "instances handled/s", "CPU ms per 1000")
    print(f"{'configuration':<17}" + "".join(f"{column:>24}" for column in columns))
    for name in rounds[0]:
        cells = [summary([each[name].rate for each in rounds], 0),
                 summary([each[name].handled for each in rounds], 2), "",
                 summary([each[name].cpu for each in rounds], 0)]
        if rounds[0][name].handled_rate is not None:
            cells[2] = summary([each[name].handled_rate or 0.0 for each in rounds], 0)
        print(f"{name:<17}" + "".join(f"{cell:>24}" for cell in cells))
    print("\ndurable / plain (control: plain / plain): the median of each round's ratio (lowest-highest); "
          "handled s: of each round's difference")
    print(f"{'handlers of':<17}" + "".join(f"{column:>24}" for column in columns))
    for row, (durable, plain) in PAIRS.items():
        def ratio(field: str, durable: str = durable, plain: str = plain) -> str:
            return summary([getattr(each[durable], field) / getattr(each[plain], field) for each in rounds], 3, "x")
        cells = [ratio("rate"), summary([each[durable].handled - each[plain].handled for each in rounds], 2, " s"),
                 ratio("handled_rate") if rounds[0][durable].handled_rate is not None else "", ratio("cpu")]
        print(f"{row:<17}" + "".join(f"{cell:>24}" for cell in cells))
    if delays:
        ordered = sorted(delays)
        print(f"\n{SIDE_BY_SIDE}: the durable handler got each STABLE_STUDY after the plain one in the same Orthanc "
              f"by {statistics.median(ordered) * 1000:.1f} ms (median of {len(ordered)} studies), "
              f"{ordered[int(0.95 * (len(ordered) - 1))] * 1000:.1f} ms at the 95th percentile, "
              f"{ordered[-1] * 1000:.1f} ms at most, {ordered[0] * 1000:.1f} ms at least")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, of which the median (default: 5)")
    parser.add_argument("--studies", type=int, default=100, help="studies per ingest (default: 100)")
    parser.add_argument("--instances", type=int, default=20, help="instances per study (default: 20)")
    parser.add_argument("--stable-age", type=int, default=1, help="Orthanc's StableAge, seconds (default: 1)")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the servers' storage goes (default: /dev/shm, tmpfs; /var/tmp for a disk)")
    add_venv_argument(parser)
    args = parser.parse_args()
    loader, interpreter = venv_loader(measured_venv(args))
    if shutil.which("storescu") is None:
        print("bench: storescu is not installed (Debian: apt-get install dcmtk)", file=sys.stderr)
        return 2
    print(f"orthanc_py on {interpreter}; {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="orthanc-py-ingest-bench-", dir=args.dir) as folder:
        print(f"storage in {folder}", flush=True)
        report(*measure(loader, args, Path(folder)), args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
