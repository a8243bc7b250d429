# SPDX-License-Identifier: GPL-3.0-or-later
"""Several Orthanc nodes on one PostgreSQL database, behind nginx: for tests of scripts that scale out.

:class:`OrthancCluster` starts a throw-away PostgreSQL (:class:`PostgresServer`),
``nodes`` Orthanc processes (:class:`~orthanc_py.server.OrthancServer`) that
keep their index and their files in it through the ``orthanc-postgresql``
plugins, and optionally an nginx load balancer in front
(:class:`NginxBalancer`). Everything listens on loopback, lives in temporary
folders and is gone after :meth:`OrthancCluster.stop`.

When run as root, PostgreSQL and nginx run as an unprivileged system user
(``postgres``, else ``nobody``): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .server import JsonValue, OrthancNotFoundError, OrthancServer, free_port

__all__ = [
    "CLAIM_METADATA",
    "ClusterComponentMissing",
    "ClusterStartError",
    "NginxBalancer",
    "OrthancCluster",
    "PostgresServer",
    "cluster_configuration",
    "postgresql_plugins",
]

# The user-defined metadata that orthanc_py.cluster writes its claims into;
# Orthanc accepts a metadata only when "UserMetadata" declares it.
CLAIM_METADATA = {"orthanc_py_claim": 4242}


class ClusterStartError(RuntimeError):
    """PostgreSQL, nginx or a node did not start; the message says which and ends with its log."""


class ClusterComponentMissing(OrthancNotFoundError):
    """PostgreSQL, nginx or the PostgreSQL plugins of Orthanc are not installed; the message says how to.

    Like a missing Orthanc, the testing kit turns it into a skipped test.
    """


def _service_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL and nginx run as: ``None`` (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ClusterStartError("running as root, and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


def _private_folder(prefix: str, user: pwd.struct_passwd | None) -> str:
    """A new temporary folder that ``user`` owns (outside pytest's root-only folders)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def _as(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """The ``subprocess`` arguments that run a command as ``user``."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def postgresql_bin() -> str:
    """The folder of PostgreSQL's server programs (``initdb``, ``postgres``...).

    ``PG_BIN`` when set, else the newest ``/usr/lib/postgresql/*/bin`` (Debian's place).

    :raises ClusterComponentMissing: when PostgreSQL is not installed.
    """
    chosen = os.environ.get("PG_BIN")
    if chosen:
        if not os.access(os.path.join(chosen, "initdb"), os.X_OK):
            raise ClusterComponentMissing(
                f"PG_BIN names {chosen}, which holds no initdb; install PostgreSQL "
                "(Debian/Ubuntu: apt-get install postgresql) or set PG_BIN to the folder of its programs")
        return chosen
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(on_path)
    raise ClusterComponentMissing(
        "PostgreSQL's initdb not found; install it (Debian/Ubuntu: apt-get install postgresql)")


def postgresql_plugins() -> list[str]:
    """The PostgreSQL index and storage plugins of Orthanc (Debian's ``orthanc-postgresql``).

    :raises ClusterComponentMissing: when they are not installed.
    """
    plugins = []
    for kind in ("Index", "Storage"):
        candidates = sorted(glob.glob(f"/usr/lib/orthanc/libOrthancPostgreSQL{kind}.so*")
                            + glob.glob(f"/usr/share/orthanc/plugins/libOrthancPostgreSQL{kind}.so"))
        if not candidates:
            raise ClusterComponentMissing(
                f"the PostgreSQL {kind.lower()} plugin of Orthanc was not found; install it "
                "(Debian/Ubuntu: apt-get install orthanc-postgresql)"
            )
        plugins.append(candidates[0])
    return plugins


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ClusterStartError(f"{what} exited with code {process.returncode} while starting:\n{_read(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{what} did not listen on port {port} within {timeout:g} s:\n{_read(log)}") from None
            time.sleep(0.05)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as source:
            return source.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _end(process: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class PostgresServer:
    """A throw-away PostgreSQL on a loopback port, its data in a temporary folder.

    The database ``orthanc`` belongs to the user ``orthanc``, who logs in
    without a password (``trust``, loopback only).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.database = "orthanc"
        self.username = "orthanc"
        self.bin = postgresql_bin()
        self.user = _service_user()
        self.folder: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder or "", "postgres.log")

    @property
    def log(self) -> str:
        """PostgreSQL's log so far."""
        return _read(self.log_path)

    def _run(self, *command: str) -> None:
        done = subprocess.run(command, cwd=self.folder, capture_output=True, timeout=120, **_as(self.user))
        if done.returncode != 0:
            raise ClusterStartError(f"{' '.join(command)} failed:\n{done.stdout.decode()}{done.stderr.decode()}")

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Creates the cluster (``initdb``), starts ``postgres`` and creates the database."""
        self.folder = _private_folder("orthanc-py-postgres-", self.user)
        data = os.path.join(self.folder, "data")
        self._run(os.path.join(self.bin, "initdb"), "-D", data, "-U", self.username, "--auth=trust",
                  "-E", "UTF8", "--locale=C")
        with open(self.log_path, "ab") as log:
            if self.user is not None:
                os.chown(self.log_path, self.user.pw_uid, self.user.pw_gid)
            self.process = subprocess.Popen(
                [os.path.join(self.bin, "postgres"), "-D", data, "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                 # Throw-away data: no need to survive a power cut, and the test runs faster.
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **_as(self.user),
            )
        _wait_port(self.port, self.process, "PostgreSQL", self.log_path, timeout)
        deadline = time.monotonic() + timeout
        while True:  # listening comes a moment before accepting logins
            try:
                self._run(os.path.join(self.bin, "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", self.username, self.database)
                return self
            except ClusterStartError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops PostgreSQL (fast shutdown) and removes its data."""
        _end(self.process, signal.SIGINT, timeout)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def orthanc_options(self) -> dict[str, JsonValue]:
        """The ``"PostgreSQL"`` section of a node's configuration that uses this database."""
        return {
            "EnableIndex": True,
            "EnableStorage": True,
            "Host": "127.0.0.1",
            "Port": self.port,
            "Database": self.database,
            "Username": self.username,
            "Password": "",
            # Several nodes share the database: none may lock it for itself.
            "Lock": False,
        }


class NginxBalancer:
    """nginx on a loopback port, spreading requests over ``upstreams`` (ports) in turn.

    A request that cannot reach a node (connection refused: the node is down)
    goes to the next one.
    """

    def __init__(self, upstreams: Sequence[int], port: int | None = None, binary: str | None = None) -> None:
        self.upstreams = list(upstreams)
        self.port = port or free_port()
        self.binary = binary or shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
        self.user = _service_user()
        self.folder: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The address clients use, e.g. ``http://127.0.0.1:8080``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.folder or "", "error.log")

    def configuration(self) -> str:
        """nginx's configuration: every path in the temporary folder, nothing of the system's."""
        folder = self.folder
        servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n" for port in self.upstreams)
        temp = "".join(f"  {kind}_temp_path {folder}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return (
            "worker_processes 1;\n"
            "daemon off;\n"
            f"pid {folder}/nginx.pid;\n"
            f"error_log {folder}/error.log warn;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            "  access_log off;\n"
            f"{temp}"
            "  client_max_body_size 0;\n"
            "  upstream orthanc {\n"
            f"{servers}"
            "    keepalive 16;\n"
            # Orthanc closes an idle keep-alive connection after 1 s: nginx must drop it first, or
            # a request sent on it as it closes fails (and nginx does not retry a POST).
            "    keepalive_timeout 500ms;\n"
            "  }\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    location / {\n"
            "      proxy_pass http://orthanc;\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_read_timeout 300s;\n"
            "      proxy_next_upstream error timeout;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )

    def start(self, timeout: float = 30.0) -> NginxBalancer:
        """Writes the configuration and starts nginx in the foreground."""
        if self.binary is None:
            raise ClusterComponentMissing("nginx not found; install it (Debian/Ubuntu: apt-get install nginx-light)")
        self.folder = _private_folder("orthanc-py-nginx-", self.user)
        config = os.path.join(self.folder, "nginx.conf")
        with open(config, "w", encoding="utf-8") as out:
            out.write(self.configuration())
        # -e: the log of the start-up itself, before nginx reads error_log (else /var/log/nginx).
        self.process = subprocess.Popen(
            [self.binary, "-p", self.folder, "-c", config, "-e", self.log_path],
            cwd=self.folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            **_as(self.user),
        )
        _wait_port(self.port, self.process, "nginx", self.log_path, timeout)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stops nginx and removes its folder."""
        _end(self.process, signal.SIGQUIT, timeout)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def cluster_configuration(database: PostgresServer, name: str,
                          base: Mapping[str, JsonValue] | None = None) -> dict[str, JsonValue]:
    """The configuration of one node: ``base``, plus the shared database and what claims need.

    Claims (:mod:`orthanc_py.cluster`) need the metadata ``orthanc_py_claim``
    and ``"CheckRevisions": true``.
    """
    config: dict[str, JsonValue] = dict(base or {})
    config["Name"] = name
    config["Plugins"] = [*postgresql_plugins(), *config.get("Plugins", [])]
    config["PostgreSQL"] = {**database.orthanc_options(), **config.get("PostgreSQL", {})}
    config["UserMetadata"] = {**CLAIM_METADATA, **config.get("UserMetadata", {})}
    # Claims are compare-and-set writes: Orthanc must refuse to overwrite without If-Match.
    config["CheckRevisions"] = True
    return config


class OrthancCluster:
    """PostgreSQL, ``nodes`` Orthanc nodes running ``script`` on it, and nginx in front when ``balancer``.

    :param workdir: the folder of the nodes' work folders (``node-1``, ``node-2``...).
    :param nodes: how many Orthanc nodes.
    :param script: the script every node loads.
    :param config: extra configuration of every node.
    :param balancer: start nginx in front of the nodes (see :attr:`url`).
    :param options: other keyword arguments of :class:`~orthanc_py.server.OrthancServer`.

    Used as a context manager, or with :meth:`start` and :meth:`stop`.
    """

    def __init__(self, workdir: str, nodes: int = 2, script: str | None = None,
                 config: Mapping[str, JsonValue] | None = None, balancer: bool = True, **options: Any) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster has at least one node, not {nodes}")
        self.database = PostgresServer()
        self.nodes: list[OrthancServer] = []
        self.balancer: NginxBalancer | None = None
        self._workdir = workdir
        self._count = nodes
        self._script = script
        self._config = dict(config or {})
        self._want_balancer = balancer
        self._options = options

    @property
    def url(self) -> str:
        """The balancer's address, or the first node's without a balancer."""
        return self.balancer.url if self.balancer is not None else self.nodes[0].url

    def start(self, timeout: float = 60.0) -> OrthancCluster:
        """Starts the database, then the first node (which creates the schema), then the others."""
        try:
            self.database.start(timeout)
            for number in range(1, self._count + 1):
                name = f"node-{number}"
                self.nodes.append(OrthancServer(
                    os.path.join(self._workdir, name), script=self._script,
                    config=cluster_configuration(self.database, name, self._config), **self._options,
                ))
            # Two nodes creating the schema at once would collide: the first one alone.
            self.nodes[0].start(timeout=timeout)
            for node in self.nodes[1:]:
                node.start(wait=False)
            for node in self.nodes[1:]:
                node.wait_ready(timeout)
            if self._want_balancer:
                self.balancer = NginxBalancer([node.http_port for node in self.nodes]).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stops nginx, the nodes, then PostgreSQL; removes the database."""
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.stop(timeout)
            except Exception:  # already killed by the test, or stuck: PostgreSQL must stop anyway
                if node.process is not None and node.process.poll() is None:
                    node.process.kill()
        self.database.stop()

    def __enter__(self) -> OrthancCluster:
        return self if self.nodes else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
