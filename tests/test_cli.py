# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc-py`` command, run as a user runs it."""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from orthanc_py import plugin_path
from orthanc_py.server import (
    SYSTEM_CA_BUNDLE,
    find_orthanc,
    free_port,
    orthanc_answering,
    orthanc_version,
    port_in_use,
)

from .conftest import EXAMPLES
from .dicom import make_dicom


@pytest.fixture
def run_log(tmp_path: Path) -> Iterator[IO[str]]:
    """The file ``orthanc-py run`` writes its output to, closed after the test (read it with ``seek(0)``)."""
    with open(tmp_path / "run.log", "w+") as log:
        yield log


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
    assert "built for Python {}.{}".format(*sys.version_info[:2]) in result.stdout
    assert "all good" in result.stdout


def test_doctor_names_a_missing_orthanc_and_the_fix(tmp_path):
    env = dict(os.environ, ORTHANC_BINARY=str(tmp_path / "no-orthanc-here"))
    result = cli("doctor", env=env)
    assert result.returncode == 1
    assert "PROBLEM Orthanc not found" in result.stdout
    assert f"ORTHANC_BINARY names {tmp_path / 'no-orthanc-here'}, which is not an executable file" in result.stdout
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


def test_doctor_warns_of_the_archive_race_of_orthanc_before_1_12_5(tmp_path):
    from orthanc_py.cli import has_archive_race
    from orthanc_py.server import find_orthanc, orthanc_version

    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps({"Plugins": [plugin_path()], "ZipLoaderThreads": 4}))
    result = cli("doctor", "--config", str(config))
    version = orthanc_version(find_orthanc())
    line = f"configuration {config}: ZipLoaderThreads 4 on Orthanc {version}"
    if has_archive_race(version):  # Debian 12's 1.10.1
        assert result.returncode == 1
        assert f"PROBLEM {line}" in result.stdout
        assert '"ZipLoaderThreads": 0, or upgrade Orthanc' in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert f"ok      {line}" in result.stdout
    assert [has_archive_race(v) for v in ("1.9.7", "1.10.0", "1.10.1", "1.12.4", "1.12.5", "1.13.0")] == [
        False, True, True, True, False, False]


def test_version_is_the_packages_and_the_loaders():
    version = importlib.metadata.version("orthanc-py")
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"orthanc-py {version}\n"
    # The loader was built with the same version (pyproject.toml is the one source).
    assert f"ok      loader version {version}, package version {version}" in cli("doctor").stdout


def fake_orthanc(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / "Orthanc"
    binary.write_text("#!/bin/sh\necho 'Orthanc 0.0.fake'\n")
    binary.chmod(0o755)
    return binary


def test_orthanc_is_found_on_path_then_where_debian_puts_it_and_orthanc_binary_wins(tmp_path):
    on_path = fake_orthanc(tmp_path / "bin")
    chosen = fake_orthanc(tmp_path / "chosen")
    quiet = {k: v for k, v in os.environ.items() if k != "ORTHANC_BINARY"}

    def found(**env: str) -> str:
        result = cli("doctor", env=dict(quiet, **env))
        return next(line for line in result.stdout.splitlines() if "Orthanc " in line and " at " in line)

    assert f"at {on_path} " in found(PATH=f"{tmp_path / 'bin'}:{quiet['PATH']}")
    assert f"at {chosen} " in found(PATH=f"{tmp_path / 'bin'}:{quiet['PATH']}", ORTHANC_BINARY=str(chosen))
    # Debian's /usr/sbin is not on a user's PATH; it is searched all the same.
    version = orthanc_version("/usr/sbin/Orthanc")
    assert f"Orthanc {version} at /usr/sbin/Orthanc" in found(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")


# Hides Orthanc where Debian and a build from source put it, for one command.
HIDE_ORTHANC = """
for binary in /usr/sbin/Orthanc /usr/local/sbin/Orthanc; do
  if [ -e "$binary" ]; then mount --bind /dev/null "$binary" || exit 97; fi
done
exec "$@"
"""


def test_without_orthanc_anywhere_doctor_says_where_it_looked_and_how_to_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ORTHANC_BINARY"}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    # As root (and in a chroot, where user namespaces are refused), a mount namespace needs no user one;
    # in a chroot, whose / is no mount point, its mounts stay private as the chroot's are already.
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    for propagation in ("private", "unchanged"):
        result = subprocess.run(["unshare", *user, "--mount", "--propagation", propagation, "sh", "-c", HIDE_ORTHANC,
                                 "sh", CLI, "doctor"], capture_output=True, text=True, timeout=120, env=env)
        if "cannot change root filesystem propagation" not in result.stderr:
            break
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM Orthanc not found\n" in result.stdout
    assert ("fix: Orthanc not found (looked on PATH, in /usr/sbin and /usr/local/sbin); install it "
            "(Debian/Ubuntu: apt-get install orthanc) or set ORTHANC_BINARY to its path") in result.stdout


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


def kill_tree(process: subprocess.Popen) -> None:
    """Kills ``orthanc-py run`` and the Orthanc it started (in a session of its own), after a failed test."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    process.kill()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("stop_signal, to_group", [
    (signal.SIGINT, True),  # Ctrl-C in a terminal: the whole process group
    (signal.SIGINT, False),  # an IDE's stop button, kill -INT, timeout -s INT: orthanc-py alone
    (signal.SIGTERM, False),  # a service manager
], ids=["SIGINT-group", "SIGINT-alone", "SIGTERM-alone"])
def test_run_starts_orthanc_with_the_script_and_stops_cleanly(tmp_path, run_log, stop_signal, to_group):
    http, dicom = free_port(), free_port()
    storage = tmp_path / "storage"
    log = run_log
    process = subprocess.Popen(
        [CLI, "run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--storage", str(storage)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        system = wait_for_system(http, process)
        assert system["HttpPort"] == http and system["DicomPort"] == dicom
        if to_group:
            os.killpg(process.pid, stop_signal)
        else:
            process.send_signal(stop_signal)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            kill_tree(process)
    # Orthanc has stopped, not merely orthanc-py: the ports are free again.
    assert not port_in_use(http) and not port_in_use(dicom)
    log.seek(0)
    output = log.read()
    assert "Hello world!" in output
    banner = f"HTTP    http://127.0.0.1:{http}/ opens Orthanc Explorer, Orthanc's web interface   DICOM port {dicom}"
    assert banner in output
    assert "remote access is not allowed" in output
    assert "Orthanc has stopped" in output
    assert (storage / "index").exists()


def test_run_keeps_a_users_configuration(tmp_path, run_log):
    http, dicom = free_port(), free_port()
    config = tmp_path / "mine.json"
    config.write_text('{\n  // comments are allowed, as Orthanc allows them\n  "Name": "MyOrthanc", /* here too */\n'
                      '  "DicomAet": "MYAET",\n  "StableAge": 7\n}\n')
    log = run_log
    process = subprocess.Popen(
        [CLI, "run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(http),
         "--dicom-port", str(dicom), "--storage", str(tmp_path / "s"), "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT,
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
    log.seek(0)
    assert "orthanc-py: stable  StableAge 7 s: " in log.read()


STABLE = """
from orthanc_py import on_change, ChangeType

@on_change(ChangeType.STABLE_STUDY)
def stable(change):
    print("stable study", change.resource_id)
"""


def test_run_makes_studies_stable_after_a_few_seconds_and_says_so(tmp_path, run_log):
    http, dicom = free_port(), free_port()
    script = tmp_path / "stable.py"
    script.write_text(STABLE)
    log = run_log
    process = subprocess.Popen(
        [CLI, "run", str(script), "--http-port", str(http), "--dicom-port", str(dicom),
         "--storage", str(tmp_path / "s"), "--stable-age", "1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_system(http, process)
        request = urllib.request.Request(f"http://127.0.0.1:{http}/instances", data=make_dicom(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            study = json.load(answer)["ParentStudy"]
        deadline = time.monotonic() + 20
        while f"stable study {study}" not in (tmp_path / "run.log").read_text():
            assert time.monotonic() < deadline, "no STABLE_STUDY within 20 s with --stable-age 1"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = (tmp_path / "run.log").read_text()
    assert "orthanc-py: stable  StableAge 1 s: STABLE_PATIENT/STUDY/SERIES fire 1 s after the last instance" in output
    # Without the flag, development's default; zero is refused by name.
    default = cli("run", str(script), "--stable-age", "0")
    assert default.returncode == 2
    assert "--stable-age: must be a whole number of seconds, at least 1, not 0" in default.stderr


def test_run_names_the_flag_when_a_port_is_in_use(tmp_path, make_orthanc):
    taken = make_orthanc(script=None)  # an Orthanc of its own, as Debian's service would be
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy_dicom = listener.getsockname()[1]
        on_http = cli("run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(taken.http_port),
                      "--dicom-port", str(free_port()), "--storage", str(tmp_path / "s"))
        on_dicom = cli("run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(free_port()),
                       "--dicom-port", str(busy_dicom), "--storage", str(tmp_path / "s"))
    assert on_http.returncode == 3
    # Not a port of Debian's orthanc service: the service is not named.
    assert on_http.stderr == (
        f"orthanc-py: error: the HTTP port {taken.http_port} is already in use by an Orthanc "
        f"{orthanc_version(find_orthanc())}; choose another with --http-port N\n"
    )
    assert on_dicom.returncode == 3
    assert (
        on_dicom.stderr
        == f"orthanc-py: error: the DICOM port {busy_dicom} is already in use; choose another with --dicom-port N\n"
    )
    # An Orthanc that asks for a password (as a configured service may) is still recognised.
    guarded = make_orthanc(script=None, config={"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "secret"}})
    on_guarded = cli("run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(guarded.http_port),
                     "--dicom-port", str(free_port()), "--storage", str(tmp_path / "s"))
    assert on_guarded.returncode == 3
    assert on_guarded.stderr == (
        f"orthanc-py: error: the HTTP port {guarded.http_port} is already in use by an Orthanc; "
        "choose another with --http-port N\n"
    )


def test_a_taken_port_of_debians_service_names_the_service(tmp_path, make_orthanc):
    # Debian's service listens on 8042 and 4242: an Orthanc there is named as
    # it may be, with how to stop it. (When this machine's 8042 is taken
    # already, by that service or by anything else, the line says what is there.)
    service = " (Debian's orthanc service listens on 8042 and 4242; sudo systemctl disable --now orthanc stops it)"
    if not port_in_use(8042):
        make_orthanc(script=None, http_port=8042)
    version = orthanc_answering(8042)
    holder = "" if version is None else f" by an Orthanc{' ' + version if version else ''}"
    on_http = cli("run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", "8042",
                  "--dicom-port", str(free_port()), "--storage", str(tmp_path / "s"))
    assert on_http.returncode == 3
    assert on_http.stderr == (
        f"orthanc-py: error: the HTTP port 8042 is already in use{holder}{service if holder else ''}; "
        "choose another with --http-port N\n"
    )
    with contextlib.ExitStack() as stack:
        if not port_in_use(4242):
            listener = stack.enter_context(socket.socket())
            listener.bind(("", 4242))
            listener.listen()
        on_dicom = cli("run", str(EXAMPLES / "seed" / "hello.py"), "--http-port", str(free_port()),
                       "--dicom-port", "4242", "--storage", str(tmp_path / "s"))
    assert on_dicom.returncode == 3
    assert on_dicom.stderr == (
        f"orthanc-py: error: the DICOM port 4242 is already in use{service if holder else ''}; "
        "choose another with --dicom-port N\n"
    )


def test_run_ends_a_failed_load_with_one_line_naming_the_error_and_the_users_line(tmp_path):
    (tmp_path / "helper.py").write_text("def ratio():\n    return 1 / 0\n")
    (tmp_path / "app.py").write_text("import helper\n\nRATIO = helper.ratio()\n")
    result = cli("run", "app.py", "--http-port", str(free_port()), "--dicom-port", str(free_port()),
                 "--storage", str(tmp_path / "s"), cwd=str(tmp_path))
    assert result.returncode != 0
    assert "ZeroDivisionError: division by zero" in result.stderr  # the traceback, from Orthanc's log
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last == (
        f"orthanc-py: the script app.py failed to load: ZeroDivisionError: division by zero (helper.py, line 2); "
        f"Orthanc stopped with exit code {result.returncode}"
    )


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
        authorized = urllib.request.Request(
            url, headers={"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
        )
        with urllib.request.urlopen(authorized, timeout=10) as answer:
            assert json.load(answer)["HttpPort"] == http
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_run_reload_restarts_on_changes_and_survives_a_broken_version(tmp_path, run_log):
    http, dicom = free_port(), free_port()
    script = tmp_path / "app.py"
    helper = tmp_path / "words.py"
    helper.write_text("WORD = 'one'\n")
    script.write_text(
        "from orthanc_py import route\nimport words\n\n@route('/v')\ndef v(request):\n    return words.WORD\n"
    )
    log = run_log
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
            assert time.monotonic() < deadline, f"{what} not seen; output:\n{(tmp_path / 'run.log').read_text()}"
            time.sleep(0.2)

    try:
        wait_for(lambda: answer() == "one", "the first version")
        helper.write_text("WORD = 'two'\n")  # a module beside the script changes
        wait_for(lambda: answer() == "two", "the module's new version")
        script.write_text("from orthanc_py import route\n\n@route('/v')\ndef v(request:\n    return 'x'\n")
        wait_for(lambda: "app.py failed to load" in (tmp_path / "run.log").read_text(), "the failure")
        assert "SyntaxError" in (tmp_path / "run.log").read_text()
        script.write_text("from orthanc_py import route\n\n@route('/v')\ndef v(request):\n    return 'three'\n")
        wait_for(lambda: answer() == "three", "the fixed version")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    output = (tmp_path / "run.log").read_text()
    assert "change detected: restarting Orthanc" in output
    assert f"orthanc-py: the script {script} failed to load: SyntaxError: " in output
    assert "; waiting for a change to restart" in output


@contextlib.contextmanager
def orthanc_py_run(script: Path, log: IO[str], storage: Path, *options: str) -> Iterator[int]:
    """``orthanc-py run SCRIPT`` on free ports for the block, which gets the HTTP port; then stopped (code 0)."""
    http = free_port()
    process = subprocess.Popen(
        [CLI, "run", str(script), "--http-port", str(http), "--dicom-port", str(free_port()),
         "--storage", str(storage), *options],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for_system(http, process)
        yield http
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            kill_tree(process)


def wait_for_output(log: IO[str], text: str, timeout: float = 30) -> str:
    """What ``orthanc-py run`` wrote to ``log``, once it holds ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        log.seek(0)
        output = log.read()
        if text in output:
            return output
        assert time.monotonic() < deadline, f"{text!r} not in the output:\n{output}"
        time.sleep(0.2)


def test_run_lists_the_scripts_routes_once_orthanc_serves(tmp_path, run_log):
    with orthanc_py_run(EXAMPLES / "decorators" / "rest.py", run_log, tmp_path / "s") as http:
        output = wait_for_output(run_log, "opens Orthanc Explorer, Orthanc's web interface\n")
    base = f"http://127.0.0.1:{http}"
    ours = [line for line in output.splitlines() if line.startswith("orthanc-py: ")]
    listed = [
        f"orthanc-py: routes  {base}/tata",
        f"orthanc-py:         {base}/toto",
        f"orthanc-py:         {base}/hello/<name>",
        f"orthanc-py:         {base}/add/<int:a>/<int:b>",
        f"orthanc-py:         {base}/patients-summary/<patient_id>",
        f"orthanc-py:         {base}/ opens Orthanc Explorer, Orthanc's web interface",
    ]
    start = ours.index(listed[0])
    assert ours[start:start + len(listed)] == listed, "\n".join(ours)
    # Listed once Orthanc serves: after its own line saying so.
    assert output.index("Orthanc has started") < output.index(listed[0])


def test_run_without_routes_says_so(tmp_path, run_log):
    with orthanc_py_run(EXAMPLES / "seed" / "hello.py", run_log, tmp_path / "s") as http:
        output = wait_for_output(run_log, "orthanc-py: routes  ")
    assert (f"orthanc-py: routes  none: the script declares no route; http://127.0.0.1:{http}/ opens Orthanc "
            "Explorer\n") in output


def running_configuration(http_port: int) -> dict:
    """The configuration file the Orthanc serving ``http_port`` was started with (found from its command line)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended meanwhile
        for argument in arguments:
            if argument.endswith(b"/orthanc.json") and os.path.isfile(argument):
                configuration = json.loads(Path(argument.decode()).read_text())
                if configuration.get("HttpPort") == http_port:
                    return configuration
    raise AssertionError(f"no Orthanc serving port {http_port} runs with an orthanc.json")


def test_run_verifies_https_peers_against_the_systems_ca_bundle(tmp_path, run_log):
    with orthanc_py_run(EXAMPLES / "seed" / "hello.py", run_log, tmp_path / "s") as http:
        configuration = running_configuration(http)
        output = wait_for_output(run_log, "has started")
    assert os.path.isfile(SYSTEM_CA_BUNDLE), "Debian's ca-certificates package provides the bundle"
    # Not the folder of the configuration file (Orthanc's default), where no certificate is.
    assert configuration["HttpsCACertificates"] == SYSTEM_CA_BUNDLE
    version = re.search(r"Orthanc (\d+)\.(\d+)", output)
    if version and (int(version.group(1)), int(version.group(2))) < (1, 13):
        # Orthanc up to 1.12 says at start which file it uses (1.13 no longer logs it).
        assert f"HTTPS will use the CA certificates from this file: {SYSTEM_CA_BUNDLE}\n" in output


FAILING_ROUTE = """
from orthanc_py import route

@route("/ratio/<int:n>")
def ratio(request, n):
    return {"ratio": 1 / (n - n)}
"""


def test_a_failing_route_names_its_exception_and_route_under_run_only(tmp_path, run_log, make_orthanc):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_ROUTE)
    with orthanc_py_run(script, run_log, tmp_path / "s") as http:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/ratio/3", timeout=30)
        status, body = failed.value.code, json.load(failed.value)
    assert status == 500
    assert body["Exception"] == "ZeroDivisionError"
    assert body["Route"] == "/ratio/<int:n>"
    assert body["Message"] == "ZeroDivisionError in the route /ratio/<int:n> (ratio); its traceback is in Orthanc's log"
    run_log.seek(0)
    assert "ZeroDivisionError: division by zero" in run_log.read()
    # In production (Orthanc with a configuration of its own; here the testing
    # kit's), Orthanc's generic error: neither the exception nor the route.
    production = make_orthanc(script)
    answer = production.get("/ratio/3")
    assert answer.status == 500
    assert "ZeroDivisionError" not in answer.text and "<int:n>" not in answer.text
    assert "Exception" not in answer.json() and "Route" not in answer.json()
    assert "ZeroDivisionError: division by zero" in production.log


def test_run_of_a_script_calling_the_rest_api_while_loading_says_where_to_call_it(tmp_path):
    (tmp_path / "early.py").write_text('from orthanc_py import rest\n\nSYSTEM = rest.get_json("/system")\n')
    result = cli("run", "early.py", "--http-port", str(free_port()), "--dicom-port", str(free_port()),
                 "--storage", str(tmp_path / "s"), cwd=str(tmp_path))
    assert result.returncode != 0
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("orthanc-py: the script early.py failed to load: orthanc_py.rest.RestError: GET /system: ")
    assert last.endswith(
        "Orthanc's REST API cannot be called while the script loads, as Orthanc opens its database after the "
        "plugins start: call it from a function decorated with @on_startup, from a route or from an event handler "
        f"(early.py, line 3); Orthanc stopped with exit code {result.returncode}"
    ), last


def test_run_shows_a_syntax_error_as_python_does_from_the_users_file(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("from orthanc_py import route\n\nVALUE = = 2\n")
    result = cli("run", str(script), "--http-port", str(free_port()), "--dicom-port", str(free_port()),
                 "--storage", str(tmp_path / "s"))
    assert result.returncode != 0
    report = result.stderr.split(f"orthanc_py: the script {script} failed while loading:\n", 1)[1].splitlines()
    # As `python broken.py` shows it: the file, the line, the caret, the error; no frame of orthanc_py's.
    assert report[0] == f'  File "{script}", line 3', result.stderr
    assert report[1] == "    VALUE = = 2"
    assert report[2].strip().startswith("^")
    assert report[3].startswith("SyntaxError: ")
    assert "Traceback" not in result.stderr and "_runtime.py" not in result.stderr
