# SPDX-License-Identifier: GPL-3.0-or-later
"""Start-up and shut-down of Python inside Orthanc.

The loader calls :func:`start` once the interpreter runs, and :func:`stop`
when Orthanc finalizes its plugins. Everything else C calls is a callback
the script's run registered: the REST entries (:mod:`._capi_rest`), the
on-change entry, and the trampolines of :mod:`._capi`.
"""

from __future__ import annotations

import enum
import importlib.abc
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from . import _capi, _capi_rest, _events, _logging, _metrics, _paths

log = logging.getLogger("orthanc_py")

# How long the script's threads and offloaded work may go on once Orthanc
# stops (``Python.ShutdownGrace``); queued events are all delivered unless
# ``Python.ShutdownEventsTimeout`` caps the wait.
DEFAULT_SHUTDOWN_GRACE = 5.0


class Phase(enum.Enum):
    IDLE = "idle"  # not inside Orthanc, or no script
    LOADING = "loading"  # the script runs: callbacks may be registered
    RUNNING = "running"  # Orthanc serves: registrations are closed
    STOPPING = "stopping"  # Orthanc announced its stop: queued events are being delivered
    STOPPED = "stopped"


phase = Phase.IDLE
# What this run of the script registered; each run starts with empty lists.
_after_load: list[Callable[[], None]] = []
_when_stopping: list[Callable[[], None]] = []
_on_stop: list[Callable[[], None]] = []
# What each module forgets when a new run starts (routes, filters...).
_new_run: list[Callable[[], None]] = []
# What orthanc_py registers for itself at each run, before the script.
_each_run: list[Callable[[], None]] = []


def after_load(check: Callable[[], None]) -> None:
    """Runs ``check`` once the script has loaded; an exception from it stops Orthanc's start-up."""
    _after_load.append(check)


def when_stopping(callback: Callable[[], None]) -> None:
    """Runs ``callback`` as soon as Orthanc announces its stop, before the queued events are delivered."""
    _when_stopping.append(callback)


def on_stop(callback: Callable[[], None]) -> None:
    """Runs ``callback`` when Orthanc finalizes the plugin, after the events and the script's threads."""
    _on_stop.append(callback)


def on_new_run(forget: Callable[[], None]) -> None:
    """Registers how a module drops what the previous run of the script registered.

    Orthanc restarts inside its process (``POST /tools/reset``, a changed
    configuration): the interpreter stays, and the script runs again.
    """
    _new_run.append(forget)


def at_each_run(register: Callable[[], None]) -> None:
    """Registers what orthanc_py adds to each run of a script, before the script runs.

    ``register`` is called while registrations are open, as the script's
    own are: its handlers (the refresher of orthanc_py's metrics) go with
    the script's into the same hooks. One that raises is logged, and the
    script still runs.
    """
    _each_run.append(register)


on_new_run(_capi_rest.forget_routes)


class SetupError(RuntimeError):
    """A registration that Orthanc only accepts while the plugin initialises."""


class ConfigurationError(ValueError):
    """An orthanc_py option in Orthanc's configuration is missing or malformed."""


def require_setup(what: str) -> None:
    """Raises :class:`SetupError` unless the script is still loading."""
    if phase is not Phase.LOADING:
        raise SetupError(
            f"{what} must be called while the script loads (at module level), not after "
            "Orthanc has started: Orthanc only accepts callbacks while plugins initialise"
        )


@dataclass(frozen=True)
class Settings:
    """The options orthanc_py reads from Orthanc's configuration."""

    script: str | None
    """Absolute path of the script to run, or ``None`` to stay idle."""
    script_option: str = ""
    """The option the script came from, and how it was written there."""
    base_folder: str = ""
    """The folder a relative script path was resolved from."""
    verbose: bool = False
    offload_workers: int | None = None
    """``Python.OffloadWorkers``: size of the pool of offloaded routes (default: the number of cores)."""
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    """``Python.ShutdownGrace``: seconds the script's threads and offloaded work get when Orthanc stops."""
    shutdown_events_timeout: float | None = None
    """``Python.ShutdownEventsTimeout``: the longest wait for queued change events at stop (``None``: all)."""
    development_server: bool = False
    """``Python.DevelopmentServer``, which ``orthanc-py run`` sets: a route that raises answers the
    exception's type and the route, and the script's routes are logged once it has loaded."""
    metrics: bool = True
    """``Python.Metrics``: ``False`` turns orthanc_py's own metrics off (see :mod:`._metrics`)."""

    @classmethod
    def from_configuration(cls, config: dict[str, Any], config_path: str | None) -> Settings:
        """Reads ``PythonScript``/``Python.Path`` and ``PythonVerbose``/``Python.Verbose``.

        A relative script path is relative to the folder of the configuration
        file (or to the configuration folder, when Orthanc was given one), as
        Orthanc resolves its own paths.

        :raises ConfigurationError: naming the option when a value has the wrong type.
        """
        section = config.get("Python", {})
        if not isinstance(section, dict):
            raise ConfigurationError(
                f'"Python" must be a JSON object such as {{"Path": "script.py"}}, not {json.dumps(section)}'
            )
        script, option = None, ""
        for name, value in (("Python.Path", section.get("Path")), ("PythonScript", config.get("PythonScript"))):
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise ConfigurationError(f'"{name}" must be the path of a Python script, not {json.dumps(value)}')
            if script is not None and value != script:
                raise ConfigurationError(
                    f'"{option}" ({script}) and "{name}" ({value}) name different scripts: keep only one'
                )
            script, option = value, name
        verbose = False
        for name, value in (("Python.Verbose", section.get("Verbose")), ("PythonVerbose", config.get("PythonVerbose"))):
            if value is None:
                continue
            if not isinstance(value, bool):
                raise ConfigurationError(f'"{name}" must be true or false, not {json.dumps(value)}')
            verbose = verbose or value
        workers = section.get("OffloadWorkers")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigurationError(
                f'"Python.OffloadWorkers" must be a whole number of at least 1, not {json.dumps(workers)}'
            )
        timing = {name: _seconds(section, name) for name in ("ShutdownGrace", "ShutdownEventsTimeout")}
        grace = timing["ShutdownGrace"]
        development = section.get("DevelopmentServer", False)
        if not isinstance(development, bool):
            raise ConfigurationError(
                f'"Python.DevelopmentServer" must be true or false, not {json.dumps(development)}'
            )
        metrics = section.get("Metrics", True)
        if not isinstance(metrics, bool):
            raise ConfigurationError(f'"Python.Metrics" must be true or false, not {json.dumps(metrics)}')
        common: dict[str, Any] = dict(
            verbose=verbose, offload_workers=workers,
            shutdown_grace=DEFAULT_SHUTDOWN_GRACE if grace is None else grace,
            shutdown_events_timeout=timing["ShutdownEventsTimeout"],
            development_server=development, metrics=metrics,
        )
        if script is None:
            return cls(script=None, **common)
        if config_path and os.path.isdir(config_path):
            base = config_path
        elif config_path:
            base = os.path.dirname(os.path.abspath(config_path))
        else:
            base = os.getcwd()
        resolved = os.path.normpath(os.path.join(base, os.path.expanduser(script)))
        return cls(script=resolved, script_option=f'"{option}": "{script}"', base_folder=base, **common)


def _seconds(section: dict[str, Any], name: str) -> float | None:
    value = section.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ConfigurationError(f'"Python.{name}" must be a number of seconds (0 or more), not {json.dumps(value)}')
    return float(value)


settings = Settings(script=None)
"""The options in force (read from Orthanc's configuration at start-up)."""


class _ImportTracer(importlib.abc.MetaPathFinder):
    """With ``PythonVerbose``, logs each module the script imports."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        log.info("import %s", fullname)
        return None


def start(context_address: int, loader_path: str) -> bool:
    """Entry point called by the loader during ``OrthancPluginInitialize``, once per run.

    :returns: ``True`` when Orthanc may go on starting.
    """
    global phase, settings, _stop_announced

    _capi.attach(context_address)
    _capi.use_loader(loader_path)
    _logging.install()
    _metrics.new_run()
    for forget in _new_run:
        forget()
    for registered in (_after_load, _when_stopping, _on_stop):
        registered.clear()
    _events.new_run(require_setup, orthanc_stopped)
    _stop_announced = False
    phase = Phase.IDLE
    try:
        configuration = json.loads(_capi.get_configuration())
        settings = Settings.from_configuration(configuration, _capi.get_configuration_path())
    except (ConfigurationError, ValueError) as error:
        _capi.log_error(f"orthanc_py: bad configuration: {error}")
        return False
    _metrics.enabled = settings.metrics  # before anything registers a route
    if settings.verbose:
        _logging.install(verbose=True)
        logging.getLogger().setLevel(logging.DEBUG)
    _capi.log_warning(
        f"orthanc_py {_version()} on Python {sys.version.split()[0]} ({sys.prefix}), loader {loader_path}"
    )
    others = _paths.other_python_plugins(configuration.get("Plugins"), loader_path)
    if others:
        _capi.log_error(
            f"orthanc_py: another Python plugin is listed in \"Plugins\" ({', '.join(others)}); one process "
            "holds one Python interpreter, and Python aborts when a second plugin starts it again: keep only "
            "one of them"
        )
        return False
    if settings.script is None:
        _capi.log_warning('orthanc_py: no "PythonScript" in the configuration: the plugin stays idle')
        return True
    if not os.path.isfile(settings.script):
        _capi.log_error(
            f"orthanc_py: PythonScript not found: {settings.script} (from {settings.script_option}, "
            f"resolved relative to {settings.base_folder})"
        )
        return False
    if settings.verbose:
        if not any(isinstance(finder, _ImportTracer) for finder in sys.meta_path):
            sys.meta_path.insert(0, _ImportTracer())
        log.info("sys.executable=%s sys.path=%s", sys.executable, sys.path)
    _fork_by_default()
    phase = Phase.LOADING
    for register in _each_run:
        _run_guarded(register, "orthanc_py's own handlers")
    try:
        # ORTHANC_STOPPED is when the script's threads lose the SDK, while
        # Orthanc still serves: listen for it whatever the script registers.
        _events.changes.register()
        ok = _run_script(settings.script)
    finally:
        phase = Phase.RUNNING
    return ok


def _fork_by_default() -> None:
    """Makes ``fork`` the start method of ``multiprocessing`` that a script gets unless it chooses one.

    ``fork`` was Linux's default until CPython 3.14, and scripts written for
    the official plugin count on it: with 3.14's ``forkserver``, a child
    re-runs the script to find its functions, and a module-level
    ``multiprocessing.Pool(4)`` then fails there. Only the fallback changes
    (the script may still call ``set_start_method()`` or ``get_context()``);
    the offload pool keeps its own ``forkserver``. The risks of ``fork`` in
    a process with threads are stated in docs/concurrency.rst.
    """
    import multiprocessing.context

    default = getattr(multiprocessing.context, "_default_context", None)
    fork = getattr(multiprocessing.context, "_concrete_contexts", {}).get("fork")
    if fork is not None and hasattr(default, "_default_context"):
        default._default_context = fork  # type: ignore[union-attr]


def _end_script_pools(deadline: float) -> None:
    """Terminates the script's ``multiprocessing.Pool`` objects still open, within the grace.

    Their helper threads end only with the pool: without this, each pool
    would hold the stop for the whole grace. Orthanc stops (or restarts in
    the process, and the script makes its pools again), so their workers end.
    A pool whose workers do not end is left behind when the grace is over:
    the stop must not wait for it.
    """
    import multiprocessing.util

    def end_pools() -> None:
        for finalizer in list(getattr(multiprocessing.util, "_finalizer_registry", {}).values()):
            if getattr(getattr(finalizer, "_callback", None), "__name__", "") == "_terminate_pool":
                _run_guarded(finalizer, "ending a multiprocessing.Pool of the script")

    ender = threading.Thread(target=end_pools, name="orthanc_py-pools", daemon=True)
    ender.start()
    ender.join(max(0.0, deadline - time.monotonic()))


def _run_script(path: str) -> bool:
    """Runs the script as ``__main__``, the way ``python script.py`` would.

    Running it as ``__main__`` lets ``multiprocessing`` with the ``spawn`` and
    ``forkserver`` start methods find the script's functions in a worker,
    and lets the usual ``if __name__ == "__main__":`` guard keep a worker from
    redoing the script's start-up work.
    """
    import types

    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.argv = [path]
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__spec__ = None
    sys.modules["__main__"] = module
    _capi.log_warning(f"orthanc_py: running {path}")
    try:
        with open(path, "rb") as source:
            code = compile(source.read(), path, "exec")
        exec(code, module.__dict__)
        for check in _after_load:
            check()
    except BaseException as error:  # SystemExit too: the script must not end Orthanc by itself
        # Show the traceback from the script's own frames: orthanc_py's frames
        # that ran it say nothing to the user. A syntax error of the script is
        # raised by compile() here, with no frame of the script: what is left
        # is the file, line and caret the SyntaxError carries, as with
        # `python script.py`.
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename == __file__:
            trace = trace.tb_next
        text = "".join(traceback.format_exception(type(error), error, trace)).rstrip()
        _capi.log_error(f"orthanc_py: the script {path} failed while loading:\n{text}")
        return False
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    if settings.development_server:
        _capi.log_warning(f"orthanc_py: routes of the script: {json.dumps(_route_names())}")
    return True


def _route_names() -> list[str]:
    """The routes this run of the script registered, as declared: a rule, or the regular expression."""
    prefix = "route "  # what web.py names a decorator route by, followed by its rule
    return [where[len(prefix):] if where.startswith(prefix) else regex for regex, where in _capi.rest_routes]


_stop_announced = False


def orthanc_stopped(events_timeout: float | None = None) -> None:
    """Orthanc announced its stop (``ORTHANC_STOPPED``), while its REST API still works.

    Called on Orthanc's thread from the on-change callback, which Orthanc
    waits for before it tears down HTTP, DICOM and the database. Delivers
    every queued change event, ``ORTHANC_STOPPED`` and ``@on_shutdown`` (all
    of them unless ``Python.ShutdownEventsTimeout`` caps the wait), gives the
    script's threads ``Python.ShutdownGrace`` seconds, then closes the SDK to
    every thread but Orthanc's own.
    """
    global phase, _stop_announced

    if _stop_announced:
        return
    _stop_announced = True
    phase = Phase.STOPPING
    for callback in _when_stopping:
        _run_guarded(callback, "orthanc_py's stop")
    timeout = settings.shutdown_events_timeout
    if events_timeout is not None:
        timeout = events_timeout if timeout is None else min(timeout, events_timeout)
    left = _events.changes.deliver_stop(timeout)
    if left:
        _capi.log_warning(f"orthanc_py: {left} queued change events were dropped: they were not delivered within "
                          f"{timeout or 0:g} s (Python.ShutdownEventsTimeout)")
    _stop_threads(time.monotonic() + settings.shutdown_grace)


def _stop_threads(deadline: float) -> None:
    _end_script_pools(deadline)
    for thread in _join_threads(deadline):
        _capi.log_warning(
            f"orthanc_py: the script's thread {thread.name!r} still runs {settings.shutdown_grace:g} s after "
            "Orthanc began to stop; from now on its calls to Orthanc raise NotInOrthancError (end it when "
            "Orthanc stops: @on_shutdown, or the ORTHANC_STOPPED change)"
        )
    if not _capi.close(max(0.0, deadline - time.monotonic()) + 1.0):
        _capi.log_warning("orthanc_py: calls of the script's threads into Orthanc were still running as Orthanc stops")


def stop() -> None:
    """Entry point called by the loader during ``OrthancPluginFinalize``, once per run.

    When Orthanc finalizes without having announced its stop (a failed
    start-up), does the stop's work first, within the grace. Then ends what
    the run started (the offload pool...) and detaches from Orthanc. The
    interpreter stays for the next run of the same process.
    """
    global phase

    if not _stop_announced and phase is not Phase.IDLE:
        # Orthanc's REST API may be gone already: the events get the grace only.
        orthanc_stopped(events_timeout=settings.shutdown_grace)
    dropped = _events.changes.stop(timeout=0)
    if dropped:
        _capi.log_warning(f"orthanc_py: {dropped} change events arrived after Orthanc's stop and were not delivered")
    phase = Phase.STOPPED
    for callback in _on_stop:
        _run_guarded(callback, "orthanc_py's shut-down")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _capi.detach()
    _logging.uninstall()


def _run_guarded(callback: Callable[[], None], where: str) -> None:
    try:
        callback()
    except BaseException:
        _capi.report_exception(where)


def _script_threads() -> list[threading.Thread]:
    """The threads the script started, daemons included; not orthanc_py's nor Python's own."""
    import concurrent.futures.process
    import multiprocessing.queues  # noqa: F401  (the feeder threads of the offload pool's queues)

    current = threading.current_thread()
    threads = []
    for thread in threading.enumerate():
        if (thread is current or thread is threading.main_thread() or isinstance(thread, threading._DummyThread)
                or thread.name.startswith(("orthanc_py-", "QueueFeederThread"))
                or isinstance(thread, concurrent.futures.process._ExecutorManagerThread)):
            continue
        threads.append(thread)
    return threads


def _join_threads(deadline: float) -> list[threading.Thread]:
    """Joins the script's threads, daemons too, until ``deadline``; returns those left running.

    A thread started from a callback inherits ``daemon=True`` from Orthanc's
    thread; whether a thread is a daemon says little of what it does, so
    every thread of the script gets the same grace.
    """
    left = []
    for thread in _script_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    return left


def thread_ended() -> None:
    """Called by the loader when an Orthanc thread that called Python ends.

    Forgets the placeholder :mod:`threading` made for it, if any, so that
    short-lived threads (archive loaders, job workers) leave nothing behind.
    """
    ident = threading.get_ident()
    known = threading._active.get(ident)  # type: ignore[attr-defined]
    if isinstance(known, threading._DummyThread):
        with threading._active_limbo_lock:  # type: ignore[attr-defined]
            threading._active.pop(ident, None)  # type: ignore[attr-defined]


def process_exit() -> None:
    """Called by the loader when Orthanc's process exits: Python's exit functions.

    The script's ``atexit`` hooks and the standard library's (multiprocessing,
    concurrent.futures) run as at the end of ``python script.py``, on a
    thread of their own and within a bounded time: a hook waiting for a
    thread that never ends must not keep the process alive.
    """
    import atexit

    runner = threading.Thread(target=atexit._run_exitfuncs, name="orthanc_py-exit", daemon=True)
    runner.start()
    runner.join(settings.shutdown_grace)
    if runner.is_alive() and _capi._original_stderr() is not None:
        _capi._original_stderr().write(
            f"orthanc_py: Python's exit functions still ran after {settings.shutdown_grace:g} s; exiting without them\n"
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orthanc-py")
    except PackageNotFoundError:
        return "(not installed)"
