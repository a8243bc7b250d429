# SPDX-License-Identifier: GPL-3.0-or-later
"""A pytest plugin for testing Orthanc scripts in a real Orthanc.

Installed with orthanc_py and loaded by pytest automatically; pytest itself
comes with the ``testing`` extra: ``pip install 'orthanc-py[testing]'``
(from a checkout: ``pip install '.[testing]'``). Name the script under test
in the project's pytest configuration, in ``pyproject.toml``::

    [tool.pytest.ini_options]
    orthanc_script = "my_plugin.py"          # relative to the configuration file
    orthanc_config = "orthanc-extra.json"    # optional: extra Orthanc options
    orthanc_stable_age = 5                   # optional: Orthanc's StableAge, in seconds (default 5)

or in ``pytest.ini``, where values take no quotes (quotes around a path are
dropped all the same)::

    [pytest]
    orthanc_script = my_plugin.py

then write tests against the ``orthanc`` fixture::

    def test_hello(orthanc):
        assert orthanc.get("/hello").text == "Hello!"

    def test_upload(orthanc):
        instance = orthanc.upload("tests/data/ct.dcm")
        orthanc.wait_for_log("Received instance")

Each test gets its own Orthanc on free ports with a temporary storage
folder. ``orthanc_factory(script=..., config=...)`` starts others (a second
script, other options). When the ``Orthanc`` binary is missing, these tests
are skipped with a message that says how to install it.

A study is stable (``STABLE_STUDY``...) 5 seconds after its last instance,
as under ``orthanc-py run``, not after Orthanc's 60: a test that waits for a
``STABLE_*`` handler waits seconds. ``orthanc_stable_age`` changes it for
every server of the kit, and a ``StableAge`` in ``orthanc_config`` or in a
factory's ``config`` for that server.

Several nodes on one PostgreSQL database, behind nginx, for scripts that
scale out (``orthanc-postgresql``, ``postgresql`` and ``nginx`` installed)::

    def test_forwarded_once(orthanc_cluster_factory):
        cluster = orthanc_cluster_factory(script="forward.py", nodes=2)
        cluster.nodes[0].upload("a.dcm"); cluster.nodes[1].upload("b.dcm")
        assert cluster.balancer is not None   # cluster.url goes through nginx

or, outside pytest, ``with orthanc_cluster(nodes=2, script="forward.py") as cluster: ...``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest

from .cluster_server import OrthancCluster
from .server import DEVELOPMENT_STABLE_AGE, OrthancNotFoundError, OrthancServer, find_orthanc, read_orthanc_json

__all__ = [
    "ClusterFactory", "OrthancFactory", "orthanc", "orthanc_cluster", "orthanc_cluster_factory", "orthanc_factory",
]

OrthancFactory = Callable[..., OrthancServer]
ClusterFactory = Callable[..., OrthancCluster]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("orthanc_script", "the Orthanc script the 'orthanc' fixture loads", default="")
    parser.addini("orthanc_config", "a JSON file of extra Orthanc options for the 'orthanc' fixture", default="")
    parser.addini(
        "orthanc_stable_age",
        f"Orthanc's StableAge in the servers of the testing kit, in seconds (default {DEVELOPMENT_STABLE_AGE})",
        default=str(DEVELOPMENT_STABLE_AGE),
    )


# A missing Orthanc is a fact of the machine, not a failure of the test: a test
# (or a fixture it uses) that starts Orthanc is skipped, with the reason saying
# how to install it, wherever the server is started.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    try:
        yield
    except OrthancNotFoundError as error:
        _skip(error)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        yield
    except OrthancNotFoundError as error:
        _skip(error)


def _skip(error: OrthancNotFoundError) -> None:
    # One place, so that ``-rs`` sums every such skip on one line.
    pytest.skip(str(error))


def _ini_value(config: pytest.Config, name: str) -> str:
    """An option of the pytest configuration, without the quotes a pytest.ini keeps as part of the value."""
    value = str(config.getini(name)).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value


def _from_ini(config: pytest.Config, name: str) -> Path | None:
    value = _ini_value(config, name)
    if not value:
        return None
    path = Path(value)
    base = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    return path if path.is_absolute() else base / path


def _stable_age(config: pytest.Config) -> int:
    """``orthanc_stable_age`` from the pytest configuration, checked."""
    value = _ini_value(config, "orthanc_stable_age")
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise pytest.UsageError(
            f"orthanc_stable_age must be a whole number of seconds, at least 1, not {value!r} "
            "(Orthanc's StableAge for the servers of the testing kit)"
        )
    return seconds


def _with_stable_age(config: Mapping[str, Any] | None, seconds: int) -> dict[str, Any]:
    """``config`` over the kit's ``StableAge``: a StableAge of the test's own wins."""
    return {"StableAge": seconds, **(config or {})}


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[OrthancFactory]:
    """Starts Orthanc servers with orthanc_py: ``orthanc_factory(script, config=None, start=True, **options)``.

    ``script`` is a path, or Python source (a ``str`` holding a newline) that
    is written to a file first; ``config`` is merged into Orthanc's
    configuration, over ``StableAge`` (``orthanc_stable_age``, 5 seconds by
    default); other keyword arguments go to
    :class:`~orthanc_py.server.OrthancServer`. Every server is stopped at the
    end of the test.
    """
    find_orthanc()  # a missing Orthanc skips the test (see pytest_runtest_setup)
    stable_age = _stable_age(pytestconfig)
    servers: list[OrthancServer] = []

    def start(script: str | Path | None = None, config: Mapping[str, Any] | None = None,
              start: bool = True, **options: Any) -> OrthancServer:
        workdir = tmp_path_factory.mktemp("orthanc")
        if isinstance(script, str) and "\n" in script:
            path = workdir / "script.py"
            path.write_text(textwrap.dedent(script))
            script = path
        # The server's folder is the script's: files a script reads beside itself are found there.
        server = OrthancServer(str(workdir), script=None if script is None else str(script),
                               config=_with_stable_age(config, stable_age), **options)
        servers.append(server)
        if start:
            server.start()
        return server

    yield start
    for server in servers:
        with contextlib.suppress(Exception):  # a server a test already killed: nothing to stop
            server.stop(timeout=60)


@pytest.fixture
def orthanc(orthanc_factory: OrthancFactory, request: pytest.FixtureRequest) -> OrthancServer:
    """A running Orthanc with the script named by ``orthanc_script`` in the pytest configuration.

    It is an :class:`~orthanc_py.server.OrthancServer`: ``get``, ``get_json``,
    ``post_json``, ``upload``, ``log``, ``wait_for_log``, ``wait_until``...
    """
    script = _from_ini(request.config, "orthanc_script")
    if script is None:
        raise pytest.UsageError(
            'the "orthanc" fixture needs the script to load: name it in pytest.ini, under [pytest], as '
            "orthanc_script = your_script.py (no quotes), or in pyproject.toml, under [tool.pytest.ini_options], "
            'as orthanc_script = "your_script.py"; or use orthanc_factory(script)'
        )
    if not script.is_file():
        raise pytest.UsageError(f"orthanc_script names {script}, which does not exist")
    config_path = _from_ini(request.config, "orthanc_config")
    config = read_orthanc_json(str(config_path)) if config_path else None
    return orthanc_factory(script, config=config)


def _script_file(script: str | Path | None, folder: Path) -> str | None:
    """``script`` as a path: Python source (a ``str`` holding a newline) is written to a file first."""
    if isinstance(script, str) and "\n" in script:
        path = folder / "script.py"
        path.write_text(textwrap.dedent(script))
        return str(path)
    return None if script is None else str(script)


@contextlib.contextmanager
def orthanc_cluster(nodes: int = 2, script: str | Path | None = None, config: Mapping[str, Any] | None = None,
                    balancer: bool = True, workdir: str | Path | None = None,
                    **options: Any) -> Iterator[OrthancCluster]:
    """A running :class:`~orthanc_py.cluster_server.OrthancCluster`: PostgreSQL, ``nodes`` Orthanc nodes, nginx.

    ``script`` is a path or Python source, as for ``orthanc_factory``; every
    node loads it. Everything is stopped, and the database removed, on exit.
    """
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="orthanc-py-cluster-"))
    folder.mkdir(parents=True, exist_ok=True)
    cluster = OrthancCluster(str(folder), nodes=nodes, script=_script_file(script, folder), config=config,
                             balancer=balancer, **options)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def orthanc_cluster_factory(tmp_path_factory: pytest.TempPathFactory,
                            pytestconfig: pytest.Config) -> Iterator[ClusterFactory]:
    """Starts clusters: ``orthanc_cluster_factory(script, nodes=2, config=None, balancer=True, **options)``.

    See :func:`orthanc_cluster`; ``config`` goes over the kit's ``StableAge``, as
    for ``orthanc_factory``. Each cluster is stopped at the end of the test.
    """
    find_orthanc()  # a missing Orthanc skips the test (see pytest_runtest_setup)
    stable_age = _stable_age(pytestconfig)
    with contextlib.ExitStack() as stack:

        def start(script: str | Path | None = None, nodes: int = 2, config: Mapping[str, Any] | None = None,
                  balancer: bool = True, **options: Any) -> OrthancCluster:
            return stack.enter_context(orthanc_cluster(nodes, script, _with_stable_age(config, stable_age), balancer,
                                                       workdir=tmp_path_factory.mktemp("cluster"), **options))

        yield start
