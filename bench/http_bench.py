# SPDX-License-Identifier: GPL-3.0-or-later
"""Requests per second of Python routes, against Orthanc's own API and the official plugin.

Starts real Orthanc servers on loopback and drives them with ``wrk`` (Debian
package ``wrk``), all in one run so that the ratios compare like with like:

- Orthanc's built-in ``/system`` (no Python on the path): the ceiling;
- a hello route and a JSON echo route written with orthanc_py's decorators;
- the same hello route with orthanc_py's own metrics off (``"Python": {"Metrics": false}``),
  measured next to the counted one in each round, first or second in turn: what counting costs;
- the same routes written against the ``orthanc`` module, under orthanc_py;
- the same routes under the official plugin, when Debian's orthanc-python is installed;
- one CPU-bound offloaded call against two at once (``offload=True``).

All servers start first and stay up. Each of ``--rounds`` rounds (five by
default) measures every route of every configuration, one after the other,
``--seconds`` each; the medians are printed, and each ratio to the official
plugin is the median of the ratios within each round (paired: taken seconds
apart, so a change in the machine's speed falls on both sides), with the
number of cores and the load average.

``--metrics`` measures only what the metrics cost, on the hello route: two
servers with them and two without, each round alternating which of a pair
goes first. The cost is the median, over the rounds, of the ratio of the
geometric means (with / without), with a 95% interval of that median; the
same ratio between the two servers of one side (with / with, without /
without) shows what the bench resolves.

Both plugins run on the same Python build by default: the official plugin is
linked to Debian's ``libpython3.11``, so orthanc_py is measured from a venv of
Debian's ``/usr/bin/python3`` (``--venv``, ``.venv-debian``, which ``make
bench`` makes). Another build of the same version (pyenv's, say, compiled
without profile-guided optimisation) runs Python code more slowly, and that
would be measured instead of the plugins.

Usage: ``.venv/bin/python bench/http_bench.py [--seconds 5] [--connections 8] [--rounds 5] [--venv DIR]
[--metrics]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orthanc_py.server import JsonValue, OrthancServer

OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"

DECORATORS = '''
import math, time
from orthanc_py import route

@route("/hello")
def hello(request):
    return "hello"

@route("/echo", methods=["POST"])
def echo(request):
    return request.json()

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        math.sqrt(12345.678)

@route("/cpu", offload=True)
def cpu(request):
    burn(float(request.args["s"]))
    return "done"
'''

ORTHANC_MODULE = '''
import json
import orthanc

def Hello(output, uri, **request):
    output.AnswerBuffer("hello", "text/plain")

def Echo(output, uri, **request):
    output.AnswerBuffer(json.dumps(json.loads(request["body"])), "application/json")

orthanc.RegisterRestCallback("/hello", Hello)
orthanc.RegisterRestCallback("/echo", Echo)
'''

POST_LUA = (
    'wrk.method = "POST"\n'
    'wrk.body = \'{"a": [1, 2, 3], "b": "text"}\'\n'
    'wrk.headers["Content-Type"] = "application/json"\n'
)


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> float:
    """Requests per second that ``wrk`` measured; fails on any non-2xx answer or socket error."""
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise RuntimeError(f"wrk saw failed requests on {url}:\n{output}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))  # type: ignore[union-attr]


def venv_loader(venv: Path) -> tuple[str, str]:
    """The loader installed in ``venv``, and a description of that venv's Python."""
    probe = ("import platform, sys, sysconfig; from orthanc_py._paths import plugin_path; "
             "print(plugin_path()); print(platform.python_version(), sysconfig.get_config_var('LIBDIR'))")
    # Run from / so that the source tree's orthanc_py does not shadow the installed one.
    lines = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                           check=True, cwd="/").stdout.splitlines()
    return lines[0], f"Python {lines[1]} ({venv})"


def add_venv_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--venv", type=Path, default=None,
                        help="the venv whose orthanc_py is measured (default: .venv-debian when it exists, "
                             "else this interpreter's)")


def measured_venv(args: argparse.Namespace) -> Path:
    """The venv of ``--venv``, or the default that argument's help states."""
    venv = args.venv or (Path(".venv-debian") if Path(".venv-debian/bin/python").exists() else Path(sys.prefix))
    return Path(venv).absolute()


METRICS_OFF: dict[str, JsonValue] = {"Python": {"Metrics": False}}

# What each configuration serves; "system" is Orthanc's own route, measured on the decorators' server.
# "uncounted" is the decorators' script with the metrics off, measured right after or before "decorators".
ROUTES = {"decorators": ("system", "hello", "echo"), "uncounted": ("hello",), "module": ("hello", "echo"),
          "official": ("hello", "echo")}
# --metrics: two servers with the metrics and two without, a pair side by side.
METRICS_ROUTES: dict[str, tuple[str, ...]] = {name: ("hello",) for name in ("counted", "uncounted", "counted_2",
                                                                            "uncounted_2")}
PATHS = {"system": "/system", "hello": "/hello", "echo": "/echo"}


def measure_round(servers: dict[str, OrthancServer], routes: dict[str, tuple[str, ...]], args: argparse.Namespace,
                  post: Path, reverse: bool = False) -> dict[str, float]:
    """One wrk run of every route of every configuration, one after the other; ``"config/route"`` -> requests/s.

    ``reverse`` takes the configurations in the reverse order: alternated
    from round to round, each of two neighbours goes first in turn.
    """
    results = {}
    names = list(servers)[::-1] if reverse else list(servers)
    for route in PATHS:
        for name in names:
            server = servers[name]
            if route in routes[name]:
                script = post if route == "echo" else None
                results[f"{name}/{route}"] = wrk(server.url + PATHS[route], args.seconds, args.connections, script)
    return results


def measure_offload(server: OrthancServer, seconds: float = 1.0) -> dict[str, float]:
    """Wall time of one CPU-bound offloaded call, then of two at once."""
    server.get(f"/cpu?s={seconds / 10}")  # start the worker pool

    def call(_: int) -> float:
        started = time.monotonic()
        answer = server.get(f"/cpu?s={seconds}", timeout=60)
        assert answer.status == 200, answer
        return time.monotonic() - started

    one = call(0)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        list(pool.map(call, range(2)))
        two = time.monotonic() - started
    return {"offload_one_s": one, "offload_two_s": two}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run (default: 5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default: 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, of which the median (default: 5)")
    parser.add_argument("--metrics", action="store_true",
                        help="measure only what orthanc_py's own metrics cost (hello, with and without them)")
    add_venv_argument(parser)
    args = parser.parse_args()
    if args.metrics:
        return metrics_cost(args)
    loader, interpreter = venv_loader(measured_venv(args))
    load_before = f"{os.getloadavg()[0]:.2f}"
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    official_installed = os.path.exists(OFFICIAL_PLUGIN)
    configurations = {"decorators": (DECORATORS, loader, None), "uncounted": (DECORATORS, loader, METRICS_OFF),
                      "module": (ORTHANC_MODULE, loader, None)}
    if official_installed:
        configurations["official"] = (ORTHANC_MODULE, OFFICIAL_PLUGIN, None)
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="orthanc-py-bench-") as folder, contextlib.ExitStack() as stack:
        workdir = Path(folder)
        post = workdir / "post.lua"
        post.write_text(POST_LUA)
        servers = start_servers(configurations, workdir, stack)
        offload = measure_offload(servers["decorators"])
        for server in servers.values():  # warm up: first connections, first imports
            wrk(server.url + "/hello", 1, args.connections)
        # Every server stays up and idle while another is measured; each round
        # measures every route of every configuration within seconds of one
        # another, so a change in the machine's speed falls on all of them
        # alike, and ratios are taken within a round before the median.
        for round_ in range(args.rounds):
            rounds.append(measure_round(servers, ROUTES, args, post, reverse=round_ % 2 == 1))
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{key} {value:.0f}" for key, value in rounds[-1].items()), flush=True)

    def median(key: str) -> float:
        return statistics.median(each[key] for each in rounds)

    def ratio(key: str, base: str) -> str:
        if not official_installed:
            return "n/a"
        return f"{statistics.median(each[key] / each[base] for each in rounds):.2f}x"

    ours = {key: median(f"decorators/{key}") for key in ("system", "hello", "echo")}
    module = {key: median(f"module/{key}") for key in ("hello", "echo")}
    official = {key: median(f"official/{key}") for key in ("hello", "echo")} if official_installed else None

    print(f"\nrequests/s, median of {args.rounds} rounds (ratios: median of each round's ratio), "
          f"wrk -c{args.connections}, "
          f"{args.seconds} s each, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"load average before: {load_before}")
    official_on = "its own libpython" if official_installed else "(not installed)"
    print(f"orthanc_py on {interpreter}; official plugin on {official_on}")
    print(f"{'route':<8} {'decorators':>11} {'orthanc module':>15} {'official':>10} "
          f"{'decorators/official':>20} {'module/official':>16}")
    system_ratio = statistics.median(each["decorators/hello"] / each["decorators/system"] for each in rounds)
    print(f"{'/system':<8} {ours['system']:>11.0f}   (Orthanc built in, no Python; "
          f"decorators hello = {system_ratio:.2f}x of it)")
    for route in ("hello", "echo"):
        base = f"{official[route]:.0f}" if official else "n/a"
        print(f"{'/' + route:<8} {ours[route]:>11.0f} {module[route]:>15.0f} {base:>10} "
              f"{ratio(f'decorators/{route}', f'official/{route}'):>20} "
              f"{ratio(f'module/{route}', f'official/{route}'):>16}")
    cost = [each["decorators/hello"] / each["uncounted/hello"] for each in rounds]
    print(f"metrics: decorators hello with / without orthanc_py's metrics {statistics.median(cost):.3f}x "
          f"(rounds {min(cost):.3f} to {max(cost):.3f}; --metrics measures it alone)")
    print(f"offload: one CPU-bound call {offload['offload_one_s']:.2f} s, two at once {offload['offload_two_s']:.2f} s "
          f"({offload['offload_two_s'] / offload['offload_one_s']:.2f}x of one)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def start_servers(configurations: dict[str, tuple[str, str, dict[str, JsonValue] | None]], workdir: Path,
                  stack: contextlib.ExitStack) -> dict[str, OrthancServer]:
    """Starts a server of each ``name: (script, plugin, extra configuration)``, stopped when ``stack`` closes."""
    servers = {}
    for name, (script, plugin, config) in configurations.items():
        (workdir / f"{name}.py").write_text(script)
        server = OrthancServer(str(workdir / name), script=str(workdir / f"{name}.py"), plugin=plugin, config=config)
        servers[name] = stack.enter_context(server.start())
    return servers


def median_interval(values: list[float]) -> tuple[float, float]:
    """A 95% interval of the median of ``values``, from their order alone (the sign test's).

    It assumes nothing about how the values spread; below 6 values, it is their whole range (94% for 5).
    """
    ordered, n = sorted(values), len(values)
    k = 0  # the interval is the k-th smallest to the k-th largest value
    while sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n <= 0.025:
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else (ordered[0], ordered[-1])


def metrics_cost(args: argparse.Namespace) -> int:
    """``--metrics``: the hello route with orthanc_py's metrics and without, paired round by round."""
    loader, interpreter = venv_loader(measured_venv(args))
    load_before = f"{os.getloadavg()[0]:.2f}"
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    configurations = {name: (DECORATORS, loader, None if name.startswith("counted") else METRICS_OFF)
                      for name in METRICS_ROUTES}
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="orthanc-py-bench-") as folder, contextlib.ExitStack() as stack:
        servers = start_servers(configurations, Path(folder), stack)
        for server in servers.values():  # warm up: first connections, first imports
            wrk(server.url + "/hello", 1, args.connections)
        for round_ in range(args.rounds):
            rounds.append(measure_round(servers, METRICS_ROUTES, args, Path(folder), reverse=round_ % 2 == 1))
            print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{key} {value:.0f}" for key, value in rounds[-1].items()), flush=True)

    def ratios(top: tuple[str, ...], bottom: tuple[str, ...]) -> str:
        each = [statistics.geometric_mean([r[f"{name}/hello"] for name in top])
                / statistics.geometric_mean([r[f"{name}/hello"] for name in bottom]) for r in rounds]
        low, high = median_interval(each)
        quartiles = statistics.quantiles(each, n=4) if len(each) > 1 else [each[0]] * 3
        return (f"median {statistics.median(each):.3f}x (95% interval {low:.3f} to {high:.3f}), "
                f"quartiles {quartiles[0]:.3f} to {quartiles[2]:.3f}, rounds {min(each):.3f} to {max(each):.3f}")

    print(f"\nhello, requests/s with / without orthanc_py's metrics (\"Python\": {{\"Metrics\": false}}), "
          f"{args.rounds} rounds, wrk -c{args.connections}, {args.seconds} s each, {os.cpu_count()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, orthanc_py on {interpreter}, load average before: {load_before}")
    print(f"with / without metrics:          {ratios(('counted', 'counted_2'), ('uncounted', 'uncounted_2'))}")
    print(f"with: one server / the other:    {ratios(('counted',), ('counted_2',))}")
    print(f"without: one server / the other: {ratios(('uncounted',), ('uncounted_2',))}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
