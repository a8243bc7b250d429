# SPDX-License-Identifier: GPL-3.0-or-later
"""Start a real Orthanc with orthanc_py and a script: for ``orthanc-py run`` and for tests.

:class:`OrthancServer` writes a configuration into a work folder, starts the
``Orthanc`` binary, waits until its REST API answers, and offers a small HTTP
client and the captured log. It listens on loopback with remote access off.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO, Any, Callable

from ._paths import plugin_path

JsonValue = Any


class OrthancStartError(RuntimeError):
    """Orthanc exited, or did not answer, while starting; the message ends with its log."""


# Debian installs Orthanc in /usr/sbin, which is not on a non-root user's PATH;
# /usr/local/sbin is where a build from source goes by default.
ORTHANC_FOLDERS = ("/usr/sbin", "/usr/local/sbin")
ORTHANC_INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install orthanc) or set ORTHANC_BINARY to its path"


class OrthancNotFoundError(FileNotFoundError):
    """The ``Orthanc`` binary is not installed, or not where ``ORTHANC_BINARY`` says.

    The testing kit turns it into a skipped test whose reason says how to install Orthanc.
    """


def find_orthanc(binary: str | None = None) -> str:
    """The path of the ``Orthanc`` binary.

    Looked for, in order: ``binary`` when given, else the ``ORTHANC_BINARY``
    environment variable when set (a name or a path: set on purpose, so it
    wins, and it is an error when it names nothing), else ``Orthanc`` on
    ``PATH``, in ``/usr/sbin`` and in ``/usr/local/sbin``.

    :raises OrthancNotFoundError: saying where it looked and how to install it.
    """
    chosen = binary or os.environ.get("ORTHANC_BINARY")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            origin = "ORTHANC_BINARY" if binary is None else "the Orthanc binary"
            raise OrthancNotFoundError(
                f"{origin} names {chosen}, which is not an executable file; {ORTHANC_INSTALL_HINT}"
            )
        return found
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *ORTHANC_FOLDERS])
    found = shutil.which("Orthanc", path=path)
    if found is None:
        raise OrthancNotFoundError(
            f"Orthanc not found (looked on PATH, in {' and '.join(ORTHANC_FOLDERS)}); {ORTHANC_INSTALL_HINT}"
        )
    return found


def orthanc_version(binary: str) -> str:
    """The version ``Orthanc --version`` prints, such as ``"1.10.1"``."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"Orthanc\s+(\S+)", output)
    return match.group(1) if match else "unknown"


# Orthanc's own default "StableAge": seconds without a new instance before a
# patient, study or series is stable (the STABLE_* changes).
ORTHANC_STABLE_AGE = 60
# The StableAge of `orthanc-py run` and of the testing kit: a STABLE_* handler
# answers while the developer watches, or within a test's patience.
DEVELOPMENT_STABLE_AGE = 5

# Debian's bundle of the system's trusted CA certificates. Orthanc's own default
# for "HttpsCACertificates" is the folder of its configuration file, which holds
# no certificate: every outgoing HTTPS call it makes would fail to verify.
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any address), so that Orthanc could not open it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As Orthanc does: a port left in TIME_WAIT by an earlier run is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def orthanc_answering(port: int) -> str | None:
    """The version of the Orthanc whose REST API answers on loopback ``port``, if one does."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/system", timeout=2) as answer:
            version = json.load(answer).get("Version")
    except urllib.error.HTTPError as error:
        # Authentication on (Debian's service, for one): Orthanc still names itself.
        return "" if "orthanc" in error.headers.get("WWW-Authenticate", "").lower() else None
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_COMMENT = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.S)


def read_orthanc_json(path: str) -> dict[str, JsonValue]:
    """Reads an Orthanc configuration file, which may hold ``//`` and ``/* */`` comments."""
    with open(path, encoding="utf-8") as source:
        text = source.read()
    stripped = _COMMENT.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)
    try:
        config = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a valid Orthanc configuration file: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: an Orthanc configuration must be a JSON object")
    return config


def build_configuration(
    script: str | None,
    storage: str,
    http_port: int,
    dicom_port: int,
    base: Mapping[str, JsonValue] | None = None,
    plugin: str | None = None,
) -> dict[str, JsonValue]:
    """An Orthanc configuration that loads orthanc_py with ``script``.

    ``base`` (a user's configuration) is kept; the ports, the storage and the
    plugin are set, and remote access stays off unless ``base`` turns it on.
    Authentication is left to ``base`` and Orthanc: without an
    ``AuthenticationEnabled`` option, Orthanc turns it on exactly when remote
    access is allowed. Outgoing HTTPS calls verify their peers against the
    system's CA bundle (:data:`SYSTEM_CA_BUNDLE`), when it exists and ``base``
    names no ``HttpsCACertificates`` of its own.
    """
    # Never "AuthenticationEnabled": false here: under a user's
    # "RemoteAccessAllowed": true it would open the server to the network.
    config: dict[str, JsonValue] = {
        "Name": "orthanc-py",
        "RemoteAccessAllowed": False,
    }
    if os.path.isfile(SYSTEM_CA_BUNDLE):
        config["HttpsCACertificates"] = SYSTEM_CA_BUNDLE
    config.update(base or {})
    loader = plugin or plugin_path()
    plugins = [p for p in config.get("Plugins", []) if os.path.abspath(p) != loader]
    config.update(
        {
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "Plugins": [*plugins, loader],
        }
    )
    if script is not None:
        config.pop("PythonScript", None)
        config["PythonScript"] = os.path.abspath(script)
    return config


class HttpAnswer:
    """An HTTP answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> JsonValue:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HttpAnswer {self.status} {self.body[:80]!r}>"


_PORT_ATTEMPTS = 3


class OrthancServer:
    """One Orthanc process with orthanc_py loaded, in its own work folder.

    :param workdir: folder for the configuration, the storage and the log.
    :param script: the Python script to load (``PythonScript``), or ``None``.
    :param config: extra configuration merged over the defaults.
    :param plugin: the loader to load; defaults to this installation's.
    :param binary: the Orthanc binary; by default, the one :func:`find_orthanc` finds.
    :param http_port: the HTTP port; a free one by default.
    :param dicom_port: the DICOM port; a free one by default.
    :param verbose: run Orthanc with ``--verbose`` (info lines in the log).
    :param env: the environment of the Orthanc process; this process's by default.
    :param cwd: the folder Orthanc runs in; defaults to ``workdir``.
    """

    def __init__(
        self,
        workdir: str,
        script: str | None = None,
        config: Mapping[str, JsonValue] | None = None,
        plugin: str | None = None,
        binary: str | None = None,
        http_port: int | None = None,
        dicom_port: int | None = None,
        verbose: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.binary = find_orthanc(binary)
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        # Ports this object chose: another process may take one between its
        # choice and Orthanc's bind (tests run side by side), so start() picks again.
        self._chosen_ports = (http_port is None, dicom_port is None)
        self.config_path = os.path.join(self.workdir, "orthanc.json")
        self.log_path = os.path.join(self.workdir, "orthanc.log")
        self.verbose = verbose
        self.env = dict(env) if env is not None else None
        self.cwd = cwd or self.workdir
        self.configuration = build_configuration(
            script,
            os.path.join(self.workdir, "storage"),
            self.http_port,
            self.dicom_port,
            base=config,
            plugin=plugin,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL of the REST API, e.g. ``http://127.0.0.1:8042``."""
        return f"http://127.0.0.1:{self.http_port}"

    # --- life cycle ---------------------------------------------------------

    def start(self, wait: bool = True, timeout: float = 60.0) -> OrthancServer:
        """Writes the configuration and starts Orthanc.

        :param wait: wait until ``/system`` answers.
        :raises OrthancStartError: when Orthanc exits or does not answer in time.
        """
        for attempt in range(_PORT_ATTEMPTS):
            with open(self.config_path, "w", encoding="utf-8") as out:
                json.dump(self.configuration, out, indent=2)
            logged_before = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - Orthanc's stdout until stop() closes it
            command = [self.binary, self.config_path] + (["--verbose"] if self.verbose else [])
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
            if not wait:
                return self
            try:
                self.wait_ready(timeout)
                return self
            except OrthancStartError:
                if attempt + 1 == _PORT_ATTEMPTS or not self._take_other_ports(logged_before):
                    raise
        return self

    def _take_other_ports(self, logged_before: int) -> bool:
        """After a start that failed on a port another process took: new ports where this object chose them."""
        self._close_log()
        with open(self.log_path, "rb") as log:
            log.seek(logged_before)
            if b"already in use" not in log.read():  # "The TCP port of the HTTP server is ... already in use"
                return False
        if not any(self._chosen_ports):
            return False
        if self._chosen_ports[0]:
            self.http_port = free_port()
        if self._chosen_ports[1]:
            self.dicom_port = free_port()
        self.configuration.update({"HttpPort": self.http_port, "DicomPort": self.dicom_port})
        return True

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits until the REST API answers ``/system`` (a 401 counts, when authentication is on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise OrthancStartError(f"Orthanc exited with code {code} while starting:\n{self.log}")
            try:
                # Any answer means the REST API serves (401: authentication is on).
                if self.get("/system", timeout=2).status in (200, 401, 403):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise OrthancStartError(f"Orthanc did not answer within {timeout:g} s:\n{self.log}")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Waits for Orthanc to exit by itself; returns its exit code."""
        assert self.process is not None, "start() first"
        try:
            return self.process.wait(timeout)
        finally:
            self._close_log()

    def stop(self, timeout: float = 60.0) -> int:
        """Asks Orthanc to stop (SIGTERM, as a service manager would) and waits.

        :returns: the exit code (negative: killed by that signal).
        """
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._close_log()
                raise
        self._close_log()
        return self.process.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> OrthancServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what a user sees ---------------------------------------------------

    @property
    def log(self) -> str:
        """Everything Orthanc has written to its log so far."""
        try:
            with open(self.log_path, "rb") as source:
                return source.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Waits until a line of the log matches the regular expression ``pattern``."""
        match: re.Match[str] = self.wait_until(
            lambda: re.search(pattern, self.log, re.M), timeout, f"log line /{pattern}/"
        )
        return match

    def wait_until(self, condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Polls ``condition`` until it returns something true; returns that."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout:g} s; Orthanc's log:\n{self.log}")
            time.sleep(0.05)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> HttpAnswer:
        """Sends one HTTP request to this Orthanc; any status comes back as an answer."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return HttpAnswer(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as error:
            return HttpAnswer(error.code, dict(error.headers), error.read())

    def get(self, path: str, **kwargs: Any) -> HttpAnswer:
        """GETs ``path``; see :meth:`request`."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: bytes | str | None = b"", **kwargs: Any) -> HttpAnswer:
        """POSTs ``body`` to ``path``; see :meth:`request`."""
        return self.request("POST", path, body, **kwargs)

    def get_json(self, path: str) -> JsonValue:
        """GETs ``path`` and parses the answer; fails unless the status is 200."""
        answer = self.get(path)
        if answer.status != 200:
            raise AssertionError(f"GET {path} answered {answer.status}: {answer.text}")
        return answer.json()

    def post_json(self, path: str, body: JsonValue = None) -> JsonValue:
        """POSTs ``body`` as JSON and parses the answer; fails unless the status is 200."""
        answer = self.post(path, json.dumps({} if body is None else body))
        if answer.status != 200:
            raise AssertionError(f"POST {path} answered {answer.status}: {answer.text}")
        return answer.json()

    def upload(self, dicom: bytes | str | os.PathLike[str]) -> JsonValue:
        """Stores a DICOM file (its bytes, or its path) through ``/instances``.

        :returns: Orthanc's answer: ``ID``, ``ParentStudy``, ``Status``...
        """
        if not isinstance(dicom, bytes):
            with open(dicom, "rb") as source:
                dicom = source.read()
        answer = self.post("/instances", dicom)
        if answer.status != 200:
            raise AssertionError(f"upload refused: {answer.status} {answer.text}")
        return answer.json()
