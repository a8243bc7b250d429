# SPDX-License-Identifier: GPL-3.0-or-later
"""In CI (the ``CI`` environment variable set), a skipped test fails the run.

``make test`` installs everything the suite needs, so a skip there means a
missing piece of the machine, and a run that skipped part of the suite must
not pass. Locally, skips stay skips. Expected failures (``xfail``) are not skips.
"""

from __future__ import annotations

import os

import pytest

_skipped: list[str] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _in_ci() and _skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _in_ci() and _skipped:
        terminalreporter.write_line(
            f"CI is set: {len(_skipped)} skipped test(s) fail the run (their reasons follow; "
            "make test installs what the suite needs): " + ", ".join(_skipped),
            red=True,
        )
