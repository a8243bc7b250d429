# SPDX-License-Identifier: GPL-3.0-or-later
"""A real DICOM C-STORE receiver for the tests: DCMTK's ``storescp``.

The ``storescp`` fixture starts ``storescp`` on a free port of loopback,
writing what it receives into a temporary folder, and stops it at the end of
the test. Declare it in Orthanc's ``DicomModalities`` with
:meth:`StoreScp.modality`.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_py.server import free_port

_STORED = re.compile(r"storing DICOM file: (.+)$", re.M)
_AFTER_STORE = re.compile(r"Association Release|Association Aborted|Received Store Request")


class StoreScp:
    """One running ``storescp``: its AE title, port, output folder and log."""

    def __init__(self, directory: Path, log_path: Path, aet: str = "STORESCP", port: int | None = None) -> None:
        self.directory = directory
        self.log_path = log_path
        self.aet = aet
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> StoreScp:
        """Starts ``storescp`` and waits until it accepts TCP connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            "storescp",
            "--verbose",  # one "storing DICOM file" line per file, then the association's end
            "--aetitle", self.aet,
            "--output-directory", str(self.directory),
            "--accept-all",  # every transfer syntax DCMTK supports
            "--promiscuous",  # and SOP classes it does not know
            str(self.port),
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"storescp exited with code {self.process.returncode}:\n{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"storescp did not listen on port {self.port} within {timeout:g} s:\n{self.log}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def modality(self, host: str = "127.0.0.1") -> list[object]:
        """The value for Orthanc's ``DicomModalities`` that reaches this receiver."""
        return [self.aet, host, self.port]

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def received_files(self) -> list[Path]:
        """The files written so far (some may still be being written: see :meth:`wait_for_files`)."""
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def _complete_files(self) -> int:
        """How many files storescp has finished writing, as its log tells.

        storescp logs "storing DICOM file" before it writes a file, and the
        next request or the association's end only after; the last file
        counts once one of those follows it.
        """
        log = self.log
        stored = list(_STORED.finditer(log))
        if stored and not _AFTER_STORE.search(log, stored[-1].end()):
            return len(stored) - 1
        return len(stored)

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Waits until ``count`` files were received and completely written; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            if self._complete_files() >= count:
                return self.received_files()
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"storescp exited with code {self.process.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"storescp received {self._complete_files()} of {count} files within {timeout:g} s; "
                    f"its log:\n{self.log}"
                )
            time.sleep(0.05)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreScp]:
    """A running DCMTK ``storescp`` (AE title ``STORESCP``) writing into ``tmp_path/received``."""
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK's storescp is not installed (Debian/Ubuntu: apt-get install dcmtk)")
    receiver = StoreScp(tmp_path / "received", tmp_path / "storescp.log")
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
