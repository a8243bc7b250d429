# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc-py`` command, run as a user runs it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from orthanc_py import plugin_path
from orthanc_py.server import free_port

from .conftest import EXAMPLES

CLI = shutil.which("orthanc-py", path=os.path.dirname(sys.executable)) or "orthanc-py"


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, **kwargs)


def test_plugin_path_prints_an_existing_loader():
    result = cli("plugin-path")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.is_absolute() and path.is_file()
    assert path.name == "libOrthancPy.so"
    assert Path(sys.prefix) in path.parents


def test_config_prints_a_snippet_that_loads_the_script():
    script = EXAMPLES / "seed" / "hello.py"
    result = cli("config", str(script))
    assert result.returncode == 0, result.stderr
    snippet = json.loads(result.stdout)
    assert snippet == {"Plugins": [cli("plugin-path").stdout.strip()], "PythonScript": str(script)}


def test_config_of_a_missing_script_is_a_clear_error(tmp_path):
    result = cli("config", str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert f"no such script: {tmp_path / 'nope.py'}" in result.stderr


def test_doctor_finds_this_installation_healthy():
    result = cli("doctor")
    assert result.returncode == 0, result.stdout
    assert "PROBLEM" not in result.stdout
    assert f"venv {sys.prefix}" in result.stdout
    assert "built for Python %d.%d" % sys.version_info[:2] in result.stdout
    assert "all good" in result.stdout


def test_doctor_names_a_missing_orthanc_and_the_fix(tmp_path):
    env = dict(os.environ, ORTHANC_BINARY=str(tmp_path / "no-orthanc-here"))
    result = cli("doctor", env=env)
    assert result.returncode == 1
    assert "PROBLEM Orthanc not found" in result.stdout
    assert "apt-get install orthanc" in result.stdout


@pytest.mark.parametrize("official_first", [True, False])
def test_doctor_names_a_second_python_plugin_in_a_configuration(tmp_path, official_first):
    official = "/usr/share/orthanc/plugins/libOrthancPython.so"
    plugins = [official, plugin_path()] if official_first else [plugin_path(), official]
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps({"Plugins": plugins}))
    result = cli("doctor", "--config", str(config))
    assert result.returncode == 1
    assert f"PROBLEM configuration {config}: other Python plugins in Plugins: {official}" in result.stdout
    assert "keep only one Python plugin" in result.stdout
    config.write_text(json.dumps({"Plugins": [plugin_path()]}))
    assert cli("doctor", "--config", str(config)).returncode == 0


def test_no_command_prints_usage():
    result = cli()
    assert result.returncode == 2
    assert "usage: orthanc-py" in result.stderr


def wait_for_system(port: int, process: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "orthanc-py run exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=2) as answer:
                return json.load(answer)
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("Orthanc did not answer")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_orthanc_with_the_script_and_stops_cleanly(tmp_path, stop_signal):
    http, dicom = free_port(), free_port()
    storage = tmp_path / "storage"
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen(
        [CLI, "run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--storage", str(storage)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        system = wait_for_system(http, process)
        assert system["HttpPort"] == http and system["DicomPort"] == dicom
        # Ctrl-C in a terminal signals the whole process group; a service
        # manager signals orthanc-py alone.
        if stop_signal == signal.SIGINT:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    log.seek(0)
    output = log.read()
    assert "Hello world!" in output
    assert f"HTTP    http://127.0.0.1:{http}/" in output
    assert "remote access is not allowed" in output
    assert (storage / "index").exists()


def test_run_keeps_a_users_configuration(tmp_path):
    http, dicom = free_port(), free_port()
    config = tmp_path / "mine.json"
    config.write_text('{\n  // comments are allowed, as Orthanc allows them\n  "Name": "MyOrthanc", /* here too */\n  "DicomAet": "MYAET"\n}\n')
    process = subprocess.Popen(
        [CLI, "run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--storage", str(tmp_path / "s"), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        system = wait_for_system(http, process)
        assert system["Name"] == "MyOrthanc"
        assert system["DicomAet"] == "MYAET"
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_run_with_remote_access_keeps_orthancs_authentication(tmp_path):
    # The user's file allows remote access and says nothing of authentication:
    # Orthanc's own default (authentication on) must hold.
    http, dicom = free_port(), free_port()
    config = tmp_path / "remote.json"
    config.write_text(json.dumps({"RemoteAccessAllowed": True, "RegisteredUsers": {"alice": "s3cret"}}))
    process = subprocess.Popen(
        [CLI, "run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--storage", str(tmp_path / "s"), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http}/system"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "orthanc-py run exited early"
            try:
                urllib.request.urlopen(url, timeout=2).close()
                status = 200
                break
            except urllib.error.HTTPError as error:
                status = error.code
                break
            except OSError:
                assert time.monotonic() < deadline, "Orthanc did not answer"
                time.sleep(0.2)
        assert status == 401, "a request without credentials must be refused"
        authorized = urllib.request.Request(url, headers={"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()})
        with urllib.request.urlopen(authorized, timeout=10) as answer:
            assert json.load(answer)["HttpPort"] == http
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_run_reload_restarts_on_changes_and_survives_a_broken_version(tmp_path):
    http, dicom = free_port(), free_port()
    script = tmp_path / "app.py"
    helper = tmp_path / "words.py"
    helper.write_text("WORD = 'one'\n")
    script.write_text("from orthanc_py import route\nimport words\n\n@route('/v')\ndef v(request):\n    return words.WORD\n")
    log = open(tmp_path / "run.log", "w+")
    process = subprocess.Popen(
        [CLI, "run", str(script), "--reload", "--http-port", str(http), "--dicom-port", str(dicom),
         "--storage", str(tmp_path / "storage")],
        stdout=log, stderr=subprocess.STDOUT,
    )

    def answer() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v", timeout=2) as reply:
                return reply.read().decode()
        except OSError:
            return ""

    def wait_for(condition, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, f"orthanc-py exited while waiting for {what}"
            assert time.monotonic() < deadline, f"{what} not seen; output:\n{open(tmp_path / 'run.log').read()}"
            time.sleep(0.2)

    try:
        wait_for(lambda: answer() == "one", "the first version")
        helper.write_text("WORD = 'two'\n")  # a module beside the script changes
        wait_for(lambda: answer() == "two", "the module's new version")
        script.write_text("from orthanc_py import route\n\n@route('/v')\ndef v(request:\n    return 'x'\n")
        wait_for(lambda: "the script failed to load" in open(tmp_path / "run.log").read(), "the failure")
        assert "SyntaxError" in open(tmp_path / "run.log").read()
        script.write_text("from orthanc_py import route\n\n@route('/v')\ndef v(request):\n    return 'three'\n")
        wait_for(lambda: answer() == "three", "the fixed version")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = open(tmp_path / "run.log").read()
    assert "change detected: restarting Orthanc" in output
    assert "waiting for a change to restart" in output
