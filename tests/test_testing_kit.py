# SPDX-License-Identifier: GPL-3.0-or-later
"""The pytest plugin users get (orthanc_py.testing), run as a user runs it: in a project of its own."""

from __future__ import annotations

import shutil

from .conftest import EXAMPLES


def test_a_users_suite_runs_against_a_real_orthanc(pytester):
    shutil.copy(EXAMPLES / "testing" / "test_rest_example.py", pytester.path)
    pytester.makeini(f"[pytest]\northanc_script = {EXAMPLES / 'decorators' / 'rest.py'}\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_the_script_path_is_relative_to_the_configuration_file(pytester):
    (pytester.path / "plugin").mkdir()
    (pytester.path / "plugin" / "mine.py").write_text(
        "from orthanc_py import route\n\n@route('/mine')\ndef mine(request):\n    return 'mine'\n"
    )
    pytester.makeini("[pytest]\northanc_script = plugin/mine.py\n")
    pytester.makepyfile("def test_mine(orthanc):\n    assert orthanc.get('/mine').text == 'mine'\n")
    (pytester.path / "sub").mkdir()
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "--rootdir", str(pytester.path))
    result.assert_outcomes(passed=1)


def test_without_orthanc_the_tests_skip_and_say_how_to_install_it(pytester, monkeypatch):
    monkeypatch.setenv("ORTHANC_BINARY", "/nowhere/Orthanc")
    pytester.makeini("[pytest]\northanc_script = script.py\n")
    pytester.makepyfile(script="print('hi')\n")
    pytester.makepyfile("def test_needs_orthanc(orthanc):\n    pass\n")
    result = pytester.runpytest_subprocess(
        "-rs", "-p", "no:cacheprovider", "test_without_orthanc_the_tests_skip_and_say_how_to_install_it.py"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED *ORTHANC_BINARY names /nowhere/Orthanc, which is not an executable file; "
            "install it (Debian/Ubuntu: apt-get install orthanc) or set ORTHANC_BINARY to its path"
        ]
    )


def test_a_server_started_by_the_test_itself_skips_too(pytester, monkeypatch):
    # A module fixture and a test body that start OrthancServer directly: each
    # test is skipped with the one line saying how to install Orthanc, never an error.
    monkeypatch.setenv("ORTHANC_BINARY", "/nowhere/Orthanc")
    pytester.makepyfile(
        """
        import pytest
        from orthanc_py.server import OrthancServer

        @pytest.fixture(scope="module")
        def server(tmp_path_factory):
            return OrthancServer(str(tmp_path_factory.mktemp("o")))

        def test_one(server):
            pass

        def test_two(server):
            pass

        def test_body(tmp_path):
            OrthancServer(str(tmp_path))
        """
    )
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]3[]] *ORTHANC_BINARY names /nowhere/Orthanc, which is not an executable file; "
            "install it (Debian/Ubuntu: apt-get install orthanc) or set ORTHANC_BINARY to its path"
        ]
    )


def test_a_forgotten_orthanc_script_option_is_explained(pytester):
    pytester.makepyfile("def test_needs_orthanc(orthanc):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(['*the "orthanc" fixture needs the script to load: set orthanc_script*'])
