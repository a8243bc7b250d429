# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc-py`` command: run a script in a real Orthanc, find the plugin, check the set-up."""

from __future__ import annotations

import argparse
import base64
import ctypes
import getpass
import json
import os
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from . import _paths, server
from ._paths import install_source, plugin_path, reinstall_command
from ._version import __version__
from .devserver import DevServer, port_taken

# Debian's official Python plugin, loaded by Debian's default configuration.
OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"

# `orthanc-py run` is for development: a study is stable a few seconds after
# its last instance, not after Orthanc's minute, so that STABLE_* handlers
# answer while the developer watches.
DEV_STABLE_AGE = server.DEVELOPMENT_STABLE_AGE

# The exit status of `orthanc-py run` when a port it needs is taken (its line
# names what picks another: the flag, or make run's variable).
EXIT_PORT_IN_USE = 3


def _seconds(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, at least 1, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orthanc-py`` (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="orthanc-py",
        description="Write Orthanc plugins in Python: run a script in a real Orthanc, "
        "print the plugin path, check the set-up.",
    )
    parser.add_argument("--version", action="version", version=f"orthanc-py {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="start Orthanc with orthanc_py and a script",
        description="Writes an Orthanc configuration that loads orthanc_py with SCRIPT and starts "
        "the Orthanc binary in the foreground. Orthanc accepts HTTP from this machine only "
        "(RemoteAccessAllowed false) unless --config turns remote access on, and then Orthanc's "
        "authentication applies (RegisteredUsers). Ctrl-C, or SIGINT or SIGTERM sent to orthanc-py alone, "
        "stops it cleanly. Once Orthanc serves, orthanc-py lists the script's routes; / opens Orthanc Explorer. "
        "A route that raises answers the exception's type and the route (here only, not in production). "
        f"When a port is already in use, orthanc-py says so and exits with status {EXIT_PORT_IN_USE}; "
        "when Orthanc stops by itself (the script failed to load, say), a closing line says why.",
    )
    run.add_argument("script", metavar="SCRIPT", help="the Python script to load")
    run.add_argument("--http-port", type=int, default=8042, metavar="N", help="HTTP port (default: 8042)")
    run.add_argument("--dicom-port", type=int, default=4242, metavar="N", help="DICOM port (default: 4242)")
    run.add_argument(
        "--storage",
        default="OrthancStorage",
        metavar="DIR",
        help="folder for Orthanc's database and files, kept between runs (default: ./OrthancStorage)",
    )
    run.add_argument(
        "--config", metavar="FILE", help="an Orthanc configuration file to start from (comments allowed)"
    )
    run.add_argument(
        "--stable-age",
        type=_seconds,
        metavar="SECONDS",
        help="Orthanc's StableAge: the STABLE_PATIENT, STABLE_STUDY and STABLE_SERIES changes fire this many "
        f"seconds after the last instance arrives (default here: {DEV_STABLE_AGE}, or the StableAge of --config; "
        f"Orthanc's own default is {server.ORTHANC_STABLE_AGE})",
    )
    run.add_argument("--verbose", action="store_true", help="run Orthanc with --verbose")
    run.add_argument(
        "--reload",
        action="store_true",
        help="restart Orthanc when the script, or a Python file beside it, changes; when the new "
        "version fails to load, show the error and wait for the next change",
    )

    commands.add_parser(
        "plugin-path",
        help="print the path of the orthanc_py plugin (the value for Orthanc's \"Plugins\")",
    )

    config = commands.add_parser(
        "config",
        help="print the configuration lines that load orthanc_py with a script",
        description="Prints the \"Plugins\" and \"PythonScript\" options to add to an existing "
        "Orthanc configuration file.",
    )
    config.add_argument("script", metavar="SCRIPT", help="the Python script to load")

    commands.add_parser(
        "sdk-coverage",
        help="count the Orthanc SDK functions reachable from Python and list the others",
        description="Reports, for the SDK header the bindings were generated from, how many of its "
        "functions the `orthanc` module reaches, and each one it does not, with the reason.",
    )

    letters = commands.add_parser(
        "dead-letters",
        help="list, replay or discard the changes durable change handlers gave up on",
        description="Talks to a running Orthanc's /orthanc-py/dead-letters route. Without --replay or "
        "--discard, lists the dead letters: the changes a durable handler (@on_change(..., durable=True)) "
        "kept failing on, with the error of the last attempt. --replay gives each one to its handler once "
        "more (those that fail again stay); --discard drops them. Exits with 1 when a replayed change failed again.",
    )
    letters.add_argument("--url", default="http://localhost:8042", help="Orthanc's address (default: %(default)s)")
    letters.add_argument("--user", metavar="NAME[:PASSWORD]",
                         help="a user of Orthanc's RegisteredUsers (the password is asked when not given)")
    letters.add_argument("--handler", metavar="NAME", help="only this handler's (module.function, as listed)")
    letters.add_argument("--seq", metavar="N[,N...]", help="only these changes (their numbers in the change log)")
    action = letters.add_mutually_exclusive_group()
    action.add_argument("--replay", action="store_true", help="give them to their handler again")
    action.add_argument("--discard", action="store_true", help="drop them for good")
    letters.add_argument("--json", action="store_true", help="print Orthanc's JSON answer as it is")

    doctor_parser = commands.add_parser(
        "doctor",
        help="check Orthanc, the loader and the venv, and say what to fix",
    )
    doctor_parser.add_argument(
        "--config", metavar="PATH",
        help="an Orthanc configuration file (or folder of files) to check too: its Plugins must load one Python plugin",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orthanc-py`` command."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
        if args.command == "plugin-path":
            print(plugin_path())
            return 0
        if args.command == "config":
            return print_config(args.script)
        if args.command == "doctor":
            return doctor(args.config)
        if args.command == "sdk-coverage":
            return sdk_coverage()
        if args.command == "dead-letters":
            return dead_letters(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"orthanc-py: error: {error}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def dead_letters(args: argparse.Namespace) -> int:
    """``orthanc-py dead-letters``: lists, replays or discards through the plugin's REST route."""
    query = {name: value for name, value in (("handler", args.handler), ("seq", args.seq)) if value}
    route = args.url.rstrip("/") + "/orthanc-py/dead-letters"
    if args.replay:
        body = {"Handler": args.handler, "Seq": args.seq.split(",") if args.seq else None}
        answer = _call_orthanc("POST", route + "/replay", args.user, json.dumps(body).encode())
    else:
        address = route + ("?" + urllib.parse.urlencode(query) if query else "")
        answer = _call_orthanc("DELETE" if args.discard else "GET", address, args.user)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.replay or args.discard:
        for result in answer:
            if args.discard:
                print(f"{result['Handler']}: discarded {len(result['Discarded'])} {_changes(result['Discarded'])}")
            else:
                print(f"{result['Handler']}: delivered {len(result['Succeeded'])} {_changes(result['Succeeded'])}; "
                      f"failed again {len(result['Failed'])} {_changes(result['Failed'])}")
    else:
        for letter in answer:
            print(f"{letter['Handler']}  change {letter['Seq']}  {letter['ChangeType']} of "
                  f"{letter['ResourceType'].lower()} {letter['ResourceId']}  {letter['Attempts']} attempts, "
                  f"last {letter['FailedAt']}: {letter['Error']}")
        print(f"{len(answer)} dead letters" + ("" if not answer else "; replay them with --replay"))
    return 1 if args.replay and any(result["Failed"] for result in answer) else 0


def _changes(numbers: list[int]) -> str:
    return "(changes " + ", ".join(map(str, numbers)) + ")" if numbers else ""


def _call_orthanc(method: str, url: str, user: str | None, body: bytes | None = None) -> Any:
    """The JSON answer of ``method url``; errors become a ValueError naming the address and the fix."""
    request = urllib.request.Request(url, data=body, method=method)
    if user:
        name, _, password = user.partition(":")
        if not _:
            password = getpass.getpass(f"Password of {name} on {url}: ")
        token = base64.b64encode(f"{name}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=150) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")[:500]
        if error.code == 404 and "durable" not in detail:
            raise ValueError(f"{url} answered 404: that Orthanc runs no durable change handler "
                             "(@on_change(..., durable=True)), or is not running orthanc_py") from None
        if error.code == 401:
            raise ValueError(f"{url} answered 401: give a user of its RegisteredUsers with --user NAME") from None
        raise ValueError(f"{url} answered {error.code}: {detail}") from None
    except urllib.error.URLError as error:
        raise ValueError(f"cannot reach Orthanc at {url} ({error.reason}): is it running? (--url)") from None


def print_config(script: str) -> int:
    if not os.path.isfile(script):
        raise FileNotFoundError(f"no such script: {script}")
    snippet = {"Plugins": [plugin_path()], "PythonScript": os.path.abspath(script)}
    print(json.dumps(snippet, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        raise FileNotFoundError(f"no such script: {args.script}")
    binary = server.find_orthanc()
    base = server.read_orthanc_json(args.config) if args.config else None
    storage = os.path.abspath(args.storage)
    os.makedirs(storage, exist_ok=True)
    for port, kind in ((args.http_port, "HTTP"), (args.dicom_port, "DICOM")):
        if server.port_in_use(port):
            print(f"orthanc-py: error: {port_taken(port, kind)}", file=sys.stderr)
            return EXIT_PORT_IN_USE
    configuration = server.build_configuration(args.script, storage, args.http_port, args.dicom_port, base=base)
    if args.stable_age is not None:
        configuration["StableAge"] = args.stable_age
    elif "StableAge" not in (base or {}):
        configuration["StableAge"] = DEV_STABLE_AGE
    script = Path(args.script).resolve()
    return DevServer(binary, script, configuration, args.verbose, args.reload).serve()


# SDK functions that scripts have no use for, on purpose.
DELIBERATE_EXCLUSIONS = {
    "OrthancPluginFreeString": "orthanc_py frees every string Orthanc returns itself",
    "OrthancPluginFreeMemoryBuffer": "orthanc_py copies and frees every buffer Orthanc returns itself",
    "OrthancPluginFreeMemoryBuffer64": "orthanc_py copies and frees every buffer Orthanc returns itself",
    "OrthancPluginRegisterDatabaseBackendV4": "a database back-end serves every query of Orthanc's index under "
    "its locks: one in Python would serialise the whole server on the GIL; use Orthanc's SQLite or PostgreSQL",
}


# SDK functions that a function of the `orthanc` module with another name
# calls: reachable, through that function (checked against _official/ and
# _capi.py, which make the calls).
COVERED_BY = {
    # orthanc.RegisterRestCallback registers through the no-lock service, so
    # that requests run in parallel (the plain one would serialise them).
    "OrthancPluginRegisterRestCallbackNoLock": "orthanc.RegisterRestCallback",
    # The filter and the storage area use the newer services, which add the
    # GET arguments and range reads to the older ones.
    "OrthancPluginRegisterIncomingHttpRequestFilter2": "orthanc.RegisterIncomingHttpRequestFilter",
    "OrthancPluginRegisterStorageArea2": "orthanc.RegisterStorageArea",
    # On Orthanc 1.11.3 and later, a job that is not saved (no serialized
    # callback) is created through CreateJob2: its content goes over in
    # Orthanc's buffers instead of a text the plugin keeps.
    "OrthancPluginCreateJob2": "orthanc.CreateJob",
    # orthanc.RegisterMoveCallback2 is the official plugin's four-callback form
    # of the older C-MOVE service; the SDK's RegisterMoveCallback2 (with the
    # DicomConnection) is what orthanc.RegisterMoveCallback3 registers.
    "OrthancPluginRegisterMoveCallback2": "orthanc.RegisterMoveCallback3",
}


def sdk_coverage() -> int:
    """Prints how much of the SDK the ``orthanc`` module reaches; exit code 1 if anything is missing."""
    from . import _compat, _sdk

    total = len(_sdk.FUNCTIONS)
    covered = {name: by for name, by in COVERED_BY.items() if name in _compat.UNSUPPORTED}
    missing = {name: why for name, why in _compat.UNSUPPORTED.items()
               if name not in DELIBERATE_EXCLUSIONS and name not in covered}
    excluded = {name: why for name, why in DELIBERATE_EXCLUSIONS.items() if name in _sdk.FUNCTIONS}
    version = ".".join(map(str, _sdk.SDK_VERSION))
    reachable = total - len(missing) - len(excluded)
    print(f"Orthanc SDK {version}: {reachable} of {total} functions reachable from Python "
          f"({len(covered)} of them through a function of another name, {len(excluded)} excluded on purpose, "
          f"{len(missing)} not reachable)")
    for name, by in sorted(covered.items()):
        print(f"  covered   {name}: by {by}")
    for name, why in sorted(excluded.items()):
        print(f"  excluded  {name}: {why}")
    for name, why in sorted(missing.items()):
        print(f"  missing   {name}: {why}")
    return 1 if missing else 0


def doctor(configuration: str | None = None) -> int:
    """Checks the installation (and an Orthanc configuration); prints one line per check and what to fix."""
    problems = 0

    def report(ok: bool, text: str, fix: str = "") -> None:
        nonlocal problems
        print(f"{'ok     ' if ok else 'PROBLEM'} {text}")
        if not ok:
            problems += 1
            print(f"        fix: {fix}")

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    in_venv = sys.prefix != sys.base_prefix
    report(
        in_venv,
        f"Python {sys.version.split()[0]} at {sys.executable}" + (f", venv {sys.prefix}" if in_venv else ", no venv"),
        "install orthanc-py into a virtual environment: python3 -m venv ENV && "
        f"ENV/bin/pip install {shlex.quote(install_source()[0])}",
    )

    if sys.version_info[:3] == (3, 14, 0):
        # The loader runs callbacks of Orthanc's small-stacked threads on a
        # stack of its own only where CPython can be told (3.14.1 and later).
        print("note    CPython 3.14.0 cannot be told of another stack: Python runs on Orthanc's 100 KiB "
              "HTTP thread stacks, where RecursionError comes early; CPython 3.14.1 or newer lifts it")

    minimum = None
    try:
        loader = plugin_path()
    except FileNotFoundError as error:
        report(False, "loader not found", str(error))
    else:
        try:
            library = ctypes.CDLL(loader)
        except OSError as error:
            report(False, f"loader {loader} cannot be loaded: {error}", f"reinstall orthanc-py: {reinstall_command()}")
        else:
            built_for = _loader_string(library, "orthanc_py_loader_python")
            minimum = _loader_string(library, "orthanc_py_loader_min_orthanc")
            get_version = library.OrthancPluginGetVersion
            get_version.restype = ctypes.c_char_p
            loader_version = (get_version() or b"").decode()
            report(
                built_for == python,
                f"loader {loader} (built for Python {built_for})",
                f"the loader was built for Python {built_for} but this venv runs {python}: "
                f"reinstall orthanc-py: {reinstall_command()}",
            )
            report(
                loader_version == __version__,
                f"loader version {loader_version}, package version {__version__}",
                f"the loader comes from another installation of orthanc-py: {reinstall_command()}",
            )

    try:
        binary = server.find_orthanc()
    except FileNotFoundError as error:
        report(False, "Orthanc not found", str(error))
    else:
        version = server.orthanc_version(binary)
        new_enough = version == "mainline" or (
            minimum is not None and _version_tuple(version) >= _version_tuple(minimum)
        )
        report(
            new_enough,
            f"Orthanc {version} at {binary}" + (f" (orthanc_py needs {minimum} or newer)" if minimum else ""),
            f"install Orthanc {minimum} or newer",
        )

    if configuration is not None:
        _check_configuration(configuration, report)
    elif os.path.exists(OFFICIAL_PLUGIN):
        print(
            f"note    the official Python plugin is installed ({OFFICIAL_PLUGIN}); a configuration "
            "must load only one of the two Python plugins"
        )
    print("all good" if problems == 0 else f"{problems} problem(s) found")
    return 0 if problems == 0 else 1


def _check_configuration(path: str, report: Callable[[bool, str, str], None]) -> None:
    """Checks the ``Plugins`` of an Orthanc configuration (a file or a folder of files)."""
    files = [path]
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(".json"))
    entries: list[Any] = []
    zip_loader_threads = 0
    for file in files:
        try:
            configuration = server.read_orthanc_json(file)
        except (OSError, ValueError) as error:
            report(False, f"configuration {file} cannot be read", str(error))
            continue
        plugins = configuration.get("Plugins", [])
        entries += plugins if isinstance(plugins, list) else []
        threads = configuration.get("ZipLoaderThreads", zip_loader_threads)
        zip_loader_threads = threads if isinstance(threads, int) else zip_loader_threads
    _check_archive_race(path, zip_loader_threads, report)
    try:
        loader = plugin_path()
    except FileNotFoundError:
        return  # already reported
    others = _paths.other_python_plugins(entries, loader)
    report(
        not others,
        f"configuration {path}: " + (f"other Python plugins in Plugins: {', '.join(others)}" if others
                                     else "no other plugin embeds Python"),
        "keep only one Python plugin in Plugins: a process holds one interpreter, and Orthanc stops (or "
        "Python aborts) when a second plugin starts it, whichever of the two loads first",
    )


# Orthanc 1.10.0 to 1.12.4 read and erase the instances their archive loader
# threads share without a lock (ArchiveJob.cpp, fixed in 1.12.5).
ARCHIVE_RACE = ((1, 10, 0), (1, 12, 5))


def has_archive_race(version: str) -> bool:
    """Whether this Orthanc version's archives may crash it when ``ZipLoaderThreads`` > 0."""
    return version != "mainline" and ARCHIVE_RACE[0] <= _version_tuple(version)[:3] < ARCHIVE_RACE[1]


def _check_archive_race(path: str, zip_loader_threads: int, report: Callable[[bool, str, str], None]) -> None:
    if zip_loader_threads <= 0:
        return
    try:
        version = server.orthanc_version(server.find_orthanc())
    except FileNotFoundError:
        return  # already reported
    report(
        not has_archive_race(version),
        f"configuration {path}: ZipLoaderThreads {zip_loader_threads} on Orthanc {version}",
        f"Orthanc {version} has a data race in its archive loader threads (fixed in Orthanc 1.12.5) that can "
        "crash it during ZIP downloads, with or without plugins; a Python storage area makes it likelier (its "
        'reads are slower): set "ZipLoaderThreads": 0, or upgrade Orthanc',
    )


def _loader_string(library: ctypes.CDLL, name: str) -> str:
    # The loader exports these as char arrays, not pointers.
    return ctypes.string_at(ctypes.addressof(ctypes.c_char.in_dll(library, name))).decode()


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if __name__ == "__main__":
    sys.exit(main())
