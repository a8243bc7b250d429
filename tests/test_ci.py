# SPDX-License-Identifier: GPL-3.0-or-later
"""The suite's own rule in CI: a skipped test fails the run (tests/ci_skips.py)."""

from __future__ import annotations

import pytest

from .conftest import REPO

SUITE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("wrk is not installed")

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    raise AssertionError
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, source: str) -> pytest.RunResult:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(source)
    return pytester.runpytest_subprocess("-p", "tests.ci_skips", "-p", "no:cacheprovider", "-rs")


def test_in_ci_a_skip_fails_the_run_and_says_why(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", SUITE)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "CI is set: 1 skipped test(s) fail the run *: test_in_ci_a_skip_fails_the_run_and_says_why.py::test_skips",
            "SKIPPED *wrk is not installed",
        ]
    )


def test_in_ci_without_skips_the_run_passes(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "1", "def test_runs():\n    pass\n")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("ci", ["", "false"])
def test_outside_ci_a_skip_is_only_a_skip(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, SUITE)
    result.assert_outcomes(passed=1, skipped=1, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "CI is set" not in result.stdout.str()
