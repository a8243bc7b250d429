# SPDX-License-Identifier: GPL-3.0-or-later
"""``orthanc-py run``: Orthanc in the foreground with a script, restarted on changes with ``--reload``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from . import server

POLL_SECONDS = 0.5


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
                try:
                    found[path] = path.stat().st_mtime
                except FileNotFoundError:
                    pass
    return found


class DevServer:
    """Runs Orthanc with ``configuration`` until stopped; with ``reload``, restarts it when the code changes."""

    def __init__(self, binary: str, script: Path, configuration: Mapping[str, Any], verbose: bool,
                 reload: bool) -> None:
        self.binary = binary
        self.script = script
        self.configuration = dict(configuration)
        self.verbose = verbose
        self.reload = reload
        self.child: Optional[subprocess.Popen[bytes]] = None
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
                self.child = subprocess.Popen([self.binary, str(config_path)] + (["--verbose"] if self.verbose else []),
                                              stdin=subprocess.DEVNULL)
                code = self._wait(snapshot)
                if code is None:  # the code changed: restart
                    continue
                if self.stopping or not self.reload:
                    return code if code >= 0 else 128 - code
                say(f"Orthanc stopped with exit code {code}: the script failed to load (the error is above); "
                    "waiting for a change to restart")
                if not self._wait_for_change(snapshot):
                    return code if code >= 0 else 128 - code

    def _banner(self) -> None:
        http, dicom = self.configuration["HttpPort"], self.configuration["DicomPort"]
        say(f"Orthanc {server.orthanc_version(self.binary)} ({self.binary})")
        say(f"script  {self.script}" + ("   (restarts when it or a module beside it changes)" if self.reload else ""))
        say(f"HTTP    http://127.0.0.1:{http}/   DICOM port {dicom}")
        say(f"storage {self.configuration['StorageDirectory']}")
        say("log     Orthanc's log follows on this terminal; Ctrl-C stops it")

    def _wait(self, snapshot: dict[Path, float]) -> Optional[int]:
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
