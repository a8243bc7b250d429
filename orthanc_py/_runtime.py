# SPDX-License-Identifier: GPL-3.0-or-later
"""Start-up and shut-down of Python inside Orthanc.

The loader calls :func:`start` once the interpreter runs, and :func:`stop`
when Orthanc finalizes its plugins. Nothing else in the package is called
from C directly except the callback trampolines.
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
from typing import Any, Callable, Optional

from . import _capi, _logging

log = logging.getLogger("orthanc_py")

# How long stop() waits, in all, for queued events and the script's threads.
SHUTDOWN_GRACE_SECONDS = 3.0


class Phase(enum.Enum):
    IDLE = "idle"  # not inside Orthanc, or no script
    LOADING = "loading"  # the script runs: callbacks may be registered
    RUNNING = "running"  # Orthanc serves: registrations are closed
    STOPPED = "stopped"


phase = Phase.IDLE
_after_load: list[Callable[[], None]] = []
_on_stop: list[Callable[[], None]] = []


def after_load(check: Callable[[], None]) -> None:
    """Runs ``check`` once the script has loaded; an exception from it stops Orthanc's start-up."""
    _after_load.append(check)


def on_stop(callback: Callable[[], None]) -> None:
    """Runs ``callback`` when Orthanc stops, after the change handlers and before the script's threads are joined."""
    _on_stop.append(callback)


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

    script: Optional[str]
    """Absolute path of the script to run, or ``None`` to stay idle."""
    script_option: str = ""
    """The option the script came from, and how it was written there."""
    base_folder: str = ""
    """The folder a relative script path was resolved from."""
    verbose: bool = False
    offload_workers: Optional[int] = None
    """``Python.OffloadWorkers``: size of the pool of offloaded routes (default: the number of cores)."""

    @classmethod
    def from_configuration(cls, config: dict[str, Any], config_path: Optional[str]) -> "Settings":
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
            raise ConfigurationError(f'"Python.OffloadWorkers" must be a whole number of at least 1, not {json.dumps(workers)}')
        if script is None:
            return cls(script=None, verbose=verbose, offload_workers=workers)
        if config_path and os.path.isdir(config_path):
            base = config_path
        elif config_path:
            base = os.path.dirname(os.path.abspath(config_path))
        else:
            base = os.getcwd()
        resolved = os.path.normpath(os.path.join(base, os.path.expanduser(script)))
        return cls(script=resolved, script_option=f'"{option}": "{script}"', base_folder=base, verbose=verbose,
                   offload_workers=workers)


settings = Settings(script=None)
"""The options in force (read from Orthanc's configuration at start-up)."""


class _ImportTracer(importlib.abc.MetaPathFinder):
    """With ``PythonVerbose``, logs each module the script imports."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        log.info("import %s", fullname)
        return None


def start(context_address: int, loader_path: str) -> bool:
    """Entry point called by the loader during ``OrthancPluginInitialize``.

    :returns: ``True`` when Orthanc may go on starting.
    """
    global phase, settings
    _capi.attach(context_address)
    _logging.install()
    try:
        settings = Settings.from_configuration(
            json.loads(_capi.get_configuration()), _capi.get_configuration_path()
        )
    except (ConfigurationError, ValueError) as error:
        _capi.log_error(f"orthanc_py: bad configuration: {error}")
        return False
    if settings.verbose:
        _logging.install(verbose=True)
        logging.getLogger().setLevel(logging.DEBUG)
    _capi.log_warning(
        f"orthanc_py {_version()} on Python {sys.version.split()[0]} ({sys.prefix}), loader {loader_path}"
    )
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
        sys.meta_path.insert(0, _ImportTracer())
        log.info("sys.executable=%s sys.path=%s", sys.executable, sys.path)
    phase = Phase.LOADING
    try:
        ok = _run_script(settings.script)
    finally:
        phase = Phase.RUNNING
    return ok


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
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
        _capi.log_error(f"orthanc_py: the script {path} failed while loading:\n{text}")
        return False
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    return True


def stop() -> bool:
    """Entry point called by the loader during ``OrthancPluginFinalize``.

    Delivers ``ORTHANC_STOPPED`` and what else is queued, gives the script's
    threads a bounded time to end, then detaches from Orthanc.

    :returns: ``True`` when no thread of the script still runs, so that the
        loader may finalize the interpreter without waiting forever.
    """
    global phase
    from . import _events

    phase = Phase.STOPPED
    deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
    if not _events.changes.stop(timeout=SHUTDOWN_GRACE_SECONDS):
        _capi.log_warning(
            f"orthanc_py: an on-change handler still runs after {SHUTDOWN_GRACE_SECONDS:g} s; "
            "Orthanc stops without waiting for it"
        )
    for callback in _on_stop:
        try:
            callback()
        except Exception:
            _capi.report_exception("orthanc_py's shut-down")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    left = _join_threads(deadline)
    for thread in left:
        _capi.log_warning(
            f"orthanc_py: the script's thread {thread.name!r} still runs; Orthanc stops without "
            "waiting for it (make it a daemon thread, or end it on ORTHANC_STOPPED)"
        )
    _capi.detach()
    _logging.uninstall()
    if left:
        # Py_FinalizeEx would wait for those threads forever, so the loader
        # skips it; run the exit functions (multiprocessing's pool clean-up,
        # the script's own atexit hooks) that it would have run.
        import atexit

        atexit._run_exitfuncs()
    return not left


def _join_threads(deadline: float) -> list[threading.Thread]:
    """Joins the script's non-daemon threads until ``deadline``; returns those left."""
    current = threading.current_thread()
    left = []
    for thread in threading.enumerate():
        if thread is current or thread.daemon or thread is threading.main_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            left.append(thread)
    return left


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orthanc-py")
    except PackageNotFoundError:
        return "(not installed)"
