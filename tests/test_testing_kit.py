# SPDX-License-Identifier: GPL-3.0-or-later
"""The pytest plugin users get (orthanc_py.testing), run as a user runs it: in a project of its own."""

from __future__ import annotations

import json
import os
import re
import shutil

from orthanc_py.server import SYSTEM_CA_BUNDLE

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


def test_a_forgotten_orthanc_script_option_is_explained_for_both_files(pytester):
    pytester.makepyfile("def test_needs_orthanc(orthanc):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        '*the "orthanc" fixture needs the script to load: name it in pytest.ini, under [[]pytest[]], as '
        "orthanc_script = your_script.py (no quotes), or in pyproject.toml, under [[]tool.pytest.ini_options[]], "
        'as orthanc_script = "your_script.py"; or use orthanc_factory(script)*'
    ])


ROUTE = "from orthanc_py import route\n\n@route('/mine')\ndef mine(request):\n    return 'mine'\n"


def test_a_quoted_script_in_pytest_ini_is_the_path_inside_the_quotes(pytester):
    # The pyproject.toml spelling, copied into pytest.ini: the quotes are not part of the path.
    pytester.makefile(".py", mine=ROUTE)
    pytester.makeini('[pytest]\northanc_script = "mine.py"\n')
    pytester.makepyfile("def test_mine(orthanc):\n    assert orthanc.get('/mine').text == 'mine'\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


STABLE = """
from orthanc_py import ChangeType, on_change

@on_change(ChangeType.STABLE_STUDY)
def stable(change):
    print("stable study", change.resource_id)
"""

STABLE_TESTS = """
import time

from pydicom.data import get_testdata_file


def test_a_study_is_stable_within_seconds(orthanc):
    assert orthanc.configuration["StableAge"] == {stable_age}
    study = orthanc.upload(get_testdata_file("CT_small.dcm"))["ParentStudy"]
    started = time.monotonic()
    orthanc.wait_for_log(f"stable study {{study}}", timeout=30)
    assert time.monotonic() - started < 30


def test_a_config_of_the_tests_own_wins(orthanc_factory):
    assert orthanc_factory(config={{"StableAge": 7}}).configuration["StableAge"] == 7
"""


def test_studies_are_stable_after_five_seconds_as_under_orthanc_py_run(pytester):
    # Orthanc's own StableAge is 60 s: a test waiting 30 s for STABLE_STUDY would fail.
    pytester.makefile(".py", stable=STABLE)
    pytester.makeini("[pytest]\northanc_script = stable.py\n")
    pytester.makepyfile(STABLE_TESTS.format(stable_age=5))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_orthanc_stable_age_changes_it_and_a_bad_value_is_named(pytester):
    pytester.makefile(".py", stable=STABLE)
    pytester.makeini("[pytest]\northanc_script = stable.py\northanc_stable_age = 1\n")
    pytester.makepyfile(STABLE_TESTS.format(stable_age=1))
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)

    pytester.makeini("[pytest]\northanc_script = stable.py\northanc_stable_age = soon\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-k", "stable_within")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*orthanc_stable_age must be a whole number of seconds, at least 1, not 'soon' "
        "(Orthanc's StableAge for the servers of the testing kit)*"
    ])


def test_the_kits_servers_verify_https_peers_against_the_systems_ca_bundle(make_orthanc):
    server = make_orthanc(script=None)
    assert os.path.isfile(SYSTEM_CA_BUNDLE), "Debian's ca-certificates package provides the bundle"
    with open(server.config_path, encoding="utf-8") as configuration:
        assert json.load(configuration)["HttpsCACertificates"] == SYSTEM_CA_BUNDLE
    version = re.match(r"(\d+)\.(\d+)", server.get_json("/system")["Version"])
    if version and (int(version.group(1)), int(version.group(2))) < (1, 13):
        # Orthanc up to 1.12 says at start which file it uses (1.13 no longer logs it).
        server.wait_for_log(rf"HTTPS will use the CA certificates from this file: {re.escape(SYSTEM_CA_BUNDLE)}$")


def test_a_server_whose_chosen_port_is_taken_meanwhile_starts_on_another(tmp_path):
    """Tests run side by side: a port free when chosen may be taken before Orthanc binds it."""
    import socket

    from orthanc_py.server import OrthancServer

    server = OrthancServer(str(tmp_path / "orthanc"))
    taken = server.http_port
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", taken))
        other.listen()
        server.start()
        try:
            assert server.http_port != taken
            assert server.get_json("/system")["Name"] == "orthanc-py"
            assert "already in use" in server.log  # the first attempt, in the same log
        finally:
            server.stop()
