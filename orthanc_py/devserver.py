# SPDX-License-Identifier: GPL-3.0-or-later
"""``orthanc-py run``: Orthanc in the foreground with a script, restarted on changes with ``--reload``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable

from . import server

POLL_SECONDS = 0.5

# What orthanc-py reads in Orthanc's log to write its closing line: the
# runtime's report of a script that failed while loading, and Orthanc's own
# report of a port it could not open.
LOAD_FAILURE = re.compile(r"orthanc_py: the script (?P<script>.+) failed while loading:\s*$")
PORT_IN_USE = re.compile(r"The TCP port of the (?P<server>HTTP|DICOM) server is privileged or already in use")
# And what it reads to say where to point a browser once Orthanc serves: the
# runtime's list of the script's routes (logged under Python.DevelopmentServer),
# then Orthanc's own line once it is up.
ROUTES = re.compile(r"orthanc_py: routes of the script: (?P<routes>\[.*\])\s*$")
STARTED = re.compile(r"\] Orthanc has started\s*$")
# The start of an Orthanc log line ("E1130 11:38:27.189479 file.cpp:153] ..."):
# the end of a multi-line message such as a traceback.
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ")
TRACEBACK_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')

# The ports of Debian's orthanc service, which installing Debian's orthanc
# package starts on a machine with systemd.
DEBIAN_SERVICE_PORTS = {"HTTP": 8042, "DICOM": 4242}
# How the caller of `orthanc-py run` sets the HTTP and DICOM ports, when not
# with this command's flags: `make run` sets "HTTP_PORT=N DICOM_PORT=N", so
# that a taken port names the setting the user typed.
PORT_SETTINGS_VARIABLE = "ORTHANC_PY_PORT_SETTINGS"


def say(message: str) -> None:
    """A line of orthanc-py's own, told apart from Orthanc's log lines."""
    print(f"orthanc-py: {message}", file=sys.stderr, flush=True)


def port_option(kind: str) -> str:
    """What picks another ``kind`` (``"HTTP"`` or ``"DICOM"``) port: the flag, or the caller's own setting."""
    flags = {"HTTP": "--http-port N", "DICOM": "--dicom-port N"}
    settings = os.environ.get(PORT_SETTINGS_VARIABLE, "").split()
    if len(settings) == len(flags):
        return dict(zip(flags, settings))[kind]
    return flags[kind]


def port_taken(port: int, kind: str) -> str:
    """One line: the ``kind`` port taken, by an Orthanc when one answers there, and what picks another.

    Debian's orthanc service is named only when the port is one of its own
    and an Orthanc answers on its HTTP port.
    """
    holder = ""
    if kind == "HTTP":
        version = server.orthanc_answering(port)
        if version is not None:
            holder = f" by an Orthanc{' ' + version if version else ''}"
    service = ""
    if port == DEBIAN_SERVICE_PORTS[kind] and (
        holder if kind == "HTTP" else server.orthanc_answering(DEBIAN_SERVICE_PORTS["HTTP"]) is not None
    ):
        service = " (Debian's orthanc service listens on 8042 and 4242; sudo systemctl disable --now orthanc stops it)"
    return f"the {kind} port {port} is already in use{holder}{service}; choose another with {port_option(kind)}"


def development_configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    """``configuration`` with what only a development server turns on: ``Python.DevelopmentServer``.

    Under it, a route that raises answers the exception's type and the route
    (Orthanc's own answer names neither), and the runtime logs the script's
    routes for the banner. Only ``orthanc-py run`` writes it: a production
    configuration never has it unless someone copies it there.
    """
    development = dict(configuration)
    section = development.get("Python", {})
    if isinstance(section, dict):  # anything else: the runtime stops Orthanc, naming "Python"
        development["Python"] = {**section, "DevelopmentServer": True}
    return development


def watched_files(script: Path) -> dict[Path, float]:
    """The script and the Python files beside it (and below), with their modification times."""
    folder = script.parent
    found: dict[Path, float] = {}
    for root, dirs, files in os.walk(folder):
        # Skip virtual environments, caches and hidden folders: not the user's code.
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"
                   and not (Path(root) / d / "pyvenv.cfg").exists()]
        for name in files:
            if name.endswith(".py") or Path(root, name) == script:
                path = Path(root, name)
                with contextlib.suppress(FileNotFoundError):
                    found[path] = path.stat().st_mtime
    return found


class LogWatcher:
    """Passes Orthanc's output through unchanged and remembers what the closing line needs.

    :param on_started: called with the script's routes once Orthanc says it has started.
    """

    def __init__(self, on_started: Callable[[list[str]], None] | None = None) -> None:
        self.traceback: list[str] | None = None  # the lines of a load failure, once seen
        self.port_in_use: str | None = None  # "HTTP" or "DICOM"
        self.routes: list[str] = []
        self._on_started = on_started
        self._in_traceback = False
        self._threads: list[threading.Thread] = []

    def follow(self, source: IO[bytes], target: IO[bytes]) -> None:
        """Copies ``source`` to ``target`` line by line, on a thread of its own."""
        thread = threading.Thread(target=self._copy, args=(source, target), daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        """Waits until everything Orthanc wrote has been copied (it has exited)."""
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()

    def _copy(self, source: IO[bytes], target: IO[bytes]) -> None:
        for raw in iter(source.readline, b""):
            target.write(raw)
            target.flush()
            self._read(raw.decode("utf-8", "replace").rstrip("\n"))
        source.close()

    def _read(self, line: str) -> None:
        if self._in_traceback:
            if LOG_LINE.match(line):
                self._in_traceback = False
            else:
                assert self.traceback is not None
                self.traceback.append(line)
                return
        if LOAD_FAILURE.search(line):
            self.traceback = []
            self._in_traceback = True
        port = PORT_IN_USE.search(line)
        if port:
            self.port_in_use = port.group("server")
        routes = ROUTES.search(line)
        if routes:
            with contextlib.suppress(ValueError):
                self.routes = [str(route) for route in json.loads(routes.group("routes"))]
        if STARTED.search(line) and self._on_started is not None:
            self._on_started(self.routes)


def describe_load_failure(script: Path, traceback: list[str]) -> str:
    """``NameError: ... (app.py, line 3)``: the error and the deepest frame of the user's own code.

    The user's code is the script's folder and below, except installed
    packages (a venv kept beside the script).
    """
    lines = [line for line in traceback if line.strip()]
    error = lines[-1].strip() if lines else "see the traceback above"
    where = ""
    for line in traceback:
        frame = TRACEBACK_FRAME.match(line)
        if frame is None:
            continue
        path = Path(frame.group("file")).resolve()
        if path.is_relative_to(script.parent) and not {"site-packages", "dist-packages"} & set(path.parts):
            where = f" ({_shown(path)}, line {frame.group('line')})"
    return f"{error}{where}"


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class DevServer:
    """Runs Orthanc with ``configuration`` until stopped; with ``reload``, restarts it when the code changes."""

    def __init__(self, binary: str, script: Path, configuration: Mapping[str, Any], verbose: bool,
                 reload: bool) -> None:
        self.binary = binary
        self.script = script
        self.configuration = development_configuration(configuration)
        self.verbose = verbose
        self.reload = reload
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self._signalled: subprocess.Popen[bytes] | None = None  # the last Orthanc a stop signal was passed to

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Orthanc runs in a session of its own, out of the terminal's reach, so
        # that each stop signal reaches it once, from here, whoever sent it:
        # Ctrl-C (to the terminal's process group), an IDE's stop button or a
        # service manager (to orthanc-py alone). Orthanc puts its signals back
        # to their default action as it begins to stop: the same signal
        # received twice, from the terminal and from here, would kill it
        # halfway through its stop. A second Ctrl-C still ends it at once.
        self.stopping = True
        self._stop_child(signal.SIGTERM if signum == signal.SIGHUP else signum)

    def _stop_child(self, signum: int) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)
            self._signalled = child

    def serve(self) -> int:
        """Runs until Orthanc stops for good; returns Orthanc's exit code (128+N when killed by signal N)."""
        # SIGHUP: the terminal closed; Orthanc would take it for "reload".
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="orthanc-py-") as workdir:
            config_path = Path(workdir) / "orthanc.json"
            config_path.write_text(json.dumps(self.configuration, indent=2), encoding="utf-8")
            self._banner()
            while True:
                snapshot = watched_files(self.script)
                watcher = LogWatcher(on_started=self._serving)
                if self.stopping:  # asked to stop while no Orthanc ran
                    return 0
                self.child = subprocess.Popen([self.binary, str(config_path)] + (["--verbose"] if self.verbose else []),
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              env=self._environment(workdir), start_new_session=True)
                if self.stopping and self._signalled is not self.child:  # the signal came while it started
                    self._stop_child(signal.SIGTERM)
                assert self.child.stdout is not None and self.child.stderr is not None
                watcher.follow(self.child.stdout, sys.stdout.buffer)
                watcher.follow(self.child.stderr, sys.stderr.buffer)
                code = self._wait(snapshot)
                watcher.join()
                if code is None:  # the code changed: restart
                    continue
                exit_status = code if code >= 0 else 128 - code
                if self.stopping:
                    return exit_status
                summary = self._summary(code, watcher)
                if not self.reload:
                    say(summary)
                    return exit_status
                say(f"{summary}; waiting for a change to restart")
                if not self._wait_for_change(snapshot):
                    return exit_status

    def _environment(self, workdir: str) -> dict[str, str] | None:
        """Orthanc's environment: with reload, Python neither writes nor reads compiled modules.

        A module saved twice within one second at the same size (``'one'``
        then ``'two'``) has the same stamp in its ``.pyc``, which Python
        would then take for the new version's.
        """
        if not self.reload:
            return None
        return dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=os.path.join(workdir, "no-pyc"))

    def _summary(self, code: int, watcher: LogWatcher) -> str:
        """The closing line when Orthanc stopped by itself."""
        if watcher.traceback is not None:
            return (f"the script {_shown(self.script)} failed to load: "
                    f"{describe_load_failure(self.script, watcher.traceback)}; Orthanc stopped with exit code {code}")
        if watcher.port_in_use is not None:
            key = "HttpPort" if watcher.port_in_use == "HTTP" else "DicomPort"
            return port_taken(self.configuration[key], watcher.port_in_use)
        return f"Orthanc stopped with exit code {code} (its log is above)"

    def _banner(self) -> None:
        http, dicom = self.configuration["HttpPort"], self.configuration["DicomPort"]
        stable_age = self.configuration.get("StableAge", server.ORTHANC_STABLE_AGE)
        say(f"Orthanc {server.orthanc_version(self.binary)} ({self.binary})")
        say(f"script  {self.script}" + ("   (restarts when it or a module beside it changes)" if self.reload else ""))
        say(f"HTTP    http://127.0.0.1:{http}/ opens Orthanc Explorer, Orthanc's web interface   DICOM port {dicom}")
        say(f"storage {self.configuration['StorageDirectory']}")
        say(f"stable  StableAge {stable_age} s: STABLE_PATIENT/STUDY/SERIES fire {stable_age} s after the last "
            "instance (--stable-age N changes it)")
        say("log     Orthanc's log follows on this terminal; Ctrl-C stops it")

    def _serving(self, routes: list[str]) -> None:
        """Once Orthanc serves: where to point a browser, the script's routes first."""
        base = f"http://127.0.0.1:{self.configuration['HttpPort']}"
        if not routes:
            say(f"routes  none: the script declares no route; {base}/ opens Orthanc Explorer")
            return
        for index, rule in enumerate(routes):
            say(f"{'routes' if index == 0 else '':8}{base}{rule if rule.startswith('/') else '/' + rule}")
        say(f"        {base}/ opens Orthanc Explorer, Orthanc's web interface")

    def _wait(self, snapshot: dict[Path, float]) -> int | None:
        """Waits for Orthanc to exit (its code) or, with reload, for a change (``None``, Orthanc stopped)."""
        assert self.child is not None
        while True:
            try:
                return self.child.wait(POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if self.reload and not self.stopping and watched_files(self.script) != snapshot:
                say("change detected: restarting Orthanc")
                self.child.send_signal(signal.SIGTERM)
                try:
                    self.child.wait(60)
                except subprocess.TimeoutExpired:
                    self.child.kill()
                    self.child.wait()
                return None

    def _wait_for_change(self, snapshot: dict[Path, float]) -> bool:
        """Waits until the code changes (``True``) or orthanc-py is asked to stop (``False``)."""
        while not self.stopping:
            if watched_files(self.script) != snapshot:
                say("change detected: starting Orthanc")
                return True
            time.sleep(POLL_SECONDS)
        return False
