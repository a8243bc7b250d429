# SPDX-License-Identifier: GPL-3.0-or-later
"""Sends ``print()``, ``sys.stderr`` and Python's ``logging`` to Orthanc's log.

Inside Orthanc there is no terminal of the script's own: what it prints must
land in Orthanc's log, where administrators look. ``print()`` becomes a
warning line (Orthanc shows warnings by default, and a script that prints
expects to be seen), ``sys.stderr`` an error line, and ``logging`` records
keep their level (DEBUG and INFO become Orthanc's info level).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from typing import Callable, TextIO

from . import _capi


class OrthancLogStream(io.TextIOBase):
    """A text stream that writes each complete line to Orthanc's log.

    Lines are assembled per thread, so that two threads printing at once do
    not mix their halves. After Orthanc stops, lines go to ``fallback``.
    """

    def __init__(self, emit: Callable[[str], None], fallback: TextIO, name: str) -> None:
        super().__init__()
        self._emit = emit
        self._fallback = fallback
        self._name = name
        self._pending = threading.local()

    @property
    def name(self) -> str:
        return self._name

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # faulthandler and subprocess want a real descriptor: Orthanc's own.
        return self._fallback.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        buffered = getattr(self._pending, "text", "") + text
        *lines, rest = buffered.split("\n")
        self._pending.text = rest
        for line in lines:
            self._send(line)
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._pending, "text", "")
        if rest:
            self._pending.text = ""
            self._send(rest)

    def _send(self, line: str) -> None:
        try:
            self._emit(line)
        except _capi.NotInOrthancError:
            self._fallback.write(line + "\n")
            self._fallback.flush()


class OrthancLogHandler(logging.Handler):
    """A :mod:`logging` handler that writes records to Orthanc's log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                _capi.log_error(message)
            elif record.levelno >= logging.WARNING:
                _capi.log_warning(message)
            else:
                _capi.log_info(message)
        except _capi.NotInOrthancError:
            _capi._original_stderr().write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_installed: tuple[TextIO, TextIO, OrthancLogHandler] | None = None


def install(verbose: bool = False) -> None:
    """Redirects ``sys.stdout``, ``sys.stderr`` and the root logger to Orthanc."""
    global _installed
    if _installed is not None:
        return
    original_out, original_err = sys.stdout, sys.stderr
    sys.stdout = OrthancLogStream(
        _capi.log_warning, sys.__stdout__ or _capi._original_stderr(), "<orthanc log: stdout>"
    )
    sys.stderr = OrthancLogStream(_capi.log_error, _capi._original_stderr(), "<orthanc log: stderr>")
    handler = OrthancLogHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level == logging.WARNING:  # untouched default: let INFO through
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _installed = (original_out, original_err, handler)


def _to_stderr_in_fork_child() -> None:
    """In a process forked from Orthanc, ``print()`` and ``logging`` go where a plain script's would.

    The child is not attached to Orthanc (see :mod:`._capi`): its lines go to
    the process's standard streams, and ``logging`` records to standard error
    in Python's basic format. A line half-written by the forking thread
    belongs to the parent, which writes it: the child drops it.
    """
    global _installed
    if _installed is None:
        return
    original_out, original_err, handler = _installed
    _installed = None
    sys.stdout, sys.stderr = original_out, original_err
    root = logging.getLogger()
    root.removeHandler(handler)
    plain = logging.StreamHandler()  # sys.stderr, looked up at each record
    plain.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    root.addHandler(plain)


os.register_at_fork(after_in_child=_to_stderr_in_fork_child)


def uninstall() -> None:
    """Gives ``sys.stdout``, ``sys.stderr`` and the root logger back."""
    global _installed
    if _installed is None:
        return
    original_out, original_err, handler = _installed
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    sys.stdout, sys.stderr = original_out, original_err
    logging.getLogger().removeHandler(handler)
    _installed = None
