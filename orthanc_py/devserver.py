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
from typing import IO, Any

from . import server

POLL_SECONDS = 0.5

# What orthanc-py reads in Orthanc's log to write its closing line: the
# runtime's report of a script that failed while loading, and Orthanc's own
# report of a port it could not open.
LOAD_FAILURE = re.compile(r"orthanc_py: the script (?P<script>.+) failed while loading:\s*$")
PORT_IN_USE = re.compile(r"The TCP port of the (?P<server>HTTP|DICOM) server is privileged or already in use")
# The start of an Orthanc log line ("E1130 11:38:27.189479 file.cpp:153] ..."):
# the end of a multi-line message such as a traceback.
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ ")
TRACEBACK_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')


def say(message: str) -> None:
    """A line of orthanc-py's own, told apart from Orthanc's log lines."""
    print(f"orthanc-py: {message}", file=sys.stderr, flush=True)


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
    """Passes Orthanc's output through unchanged and remembers what the closing line needs."""

    def __init__(self) -> None:
        self.traceback: list[str] | None = None  # the lines of a load failure, once seen
        self.port_in_use: str | None = None  # "HTTP" or "DICOM"
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
        self.configuration = dict(configuration)
        self.verbose = verbose
        self.reload = reload
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Ctrl-C reaches Orthanc directly (same process group); SIGTERM sent to
        # orthanc-py alone (a service manager) is passed on.
        self.stopping = True
        if signum == signal.SIGTERM and self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def serve(self) -> int:
        """Runs until Orthanc stops for good; returns Orthanc's exit code (128+N when killed by signal N)."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        with tempfile.TemporaryDirectory(prefix="orthanc-py-") as workdir:
            config_path = Path(workdir) / "orthanc.json"
            config_path.write_text(json.dumps(self.configuration, indent=2), encoding="utf-8")
            self._banner()
            while True:
                snapshot = watched_files(self.script)
                watcher = LogWatcher()
                self.child = subprocess.Popen([self.binary, str(config_path)] + (["--verbose"] if self.verbose else []),
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              env=self._environment(workdir))
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
            flag, key = ("--http-port", "HttpPort") if watcher.port_in_use == "HTTP" else ("--dicom-port", "DicomPort")
            return (f"the {watcher.port_in_use} port {self.configuration[key]} is already in use; "
                    f"choose another with {flag} N")
        return f"Orthanc stopped with exit code {code} (its log is above)"

    def _banner(self) -> None:
        http, dicom = self.configuration["HttpPort"], self.configuration["DicomPort"]
        stable_age = self.configuration.get("StableAge", server.ORTHANC_STABLE_AGE)
        say(f"Orthanc {server.orthanc_version(self.binary)} ({self.binary})")
        say(f"script  {self.script}" + ("   (restarts when it or a module beside it changes)" if self.reload else ""))
        say(f"HTTP    http://127.0.0.1:{http}/   DICOM port {dicom}")
        say(f"storage {self.configuration['StorageDirectory']}")
        say(f"stable  StableAge {stable_age} s: STABLE_PATIENT/STUDY/SERIES fire {stable_age} s after the last "
            "instance (--stable-age N changes it)")
        say("log     Orthanc's log follows on this terminal; Ctrl-C stops it")

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
