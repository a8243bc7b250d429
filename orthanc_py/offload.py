# SPDX-License-Identifier: GPL-3.0-or-later
"""Work offloaded past the GIL: the pool of worker processes, and :func:`run_in_worker`.

Routes declared with ``offload=True`` and :func:`run_in_worker` run their
function in a worker process of a pool started on first use, or on any
:class:`concurrent.futures.Executor` given (a ``dask.distributed`` cluster's).
The pool ends with Orthanc: running work gets the shutdown grace, then its
workers are ended.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import functools
import multiprocessing
import os
import select
import threading
import time
from typing import Any, Callable

from . import _capi, _metrics, _runtime

__all__ = ["WorkerCrashed", "run_in_worker"]

_name = _capi.name_of

_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


class WorkerCrashed(RuntimeError):
    """A worker process of the offload pool died (``os._exit``, a signal, a crash in a C extension).

    Only the calls that were running in the pool at that moment fail; the
    pool is replaced and the next call runs in a fresh worker.
    """


def default_pool() -> concurrent.futures.ProcessPoolExecutor:
    """The process pool of offloaded routes, started on first use, replaced when a worker died.

    ``forkserver`` (``spawn`` where missing) rather than ``fork``: forking the
    multi-threaded Orthanc process could copy locks held by other threads.
    """
    global _pool, _stop_hooks_set
    with _pool_lock:
        if _pool is not None and getattr(_pool, "_broken", False):
            # A dead worker breaks a ProcessPoolExecutor for good: start anew.
            _end_pool(_pool, grace=0)
            _pool = None
        if _pool is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            workers = _runtime.settings.offload_workers or os.cpu_count() or 1
            _pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                                           initializer=_end_with_orthanc, initargs=(os.getpid(),))
            _metrics.offload.workers = workers
            if not _stop_hooks_set:  # once per run: each run starts with no stop hooks
                _stop_hooks_set = True
                _runtime.when_stopping(_arm_stop_deadline)
                _runtime.on_stop(_stop_pool)
        return _pool


_stop_hooks_set = False


def _end_with_orthanc(orthanc_pid: int) -> None:
    """Runs in each worker process: end the worker as soon as Orthanc's process ends.

    Once Orthanc is gone (killed, or crashed) nobody waits for the worker's
    result; a worker busy with a long task would run on, at full CPU, and
    keep the forkserver alive with it.
    """
    try:
        handle = os.pidfd_open(orthanc_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (an old kernel): ask every second
        def watch() -> None:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(orthanc_pid, 0)
                except ProcessLookupError:
                    os._exit(1)
    else:
        def watch() -> None:
            select.select([handle], [], [])  # readable once the process has ended
            os._exit(1)

    threading.Thread(target=watch, name="orthanc_py-watch-orthanc", daemon=True).start()


def submit(executor: concurrent.futures.Executor, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``function`` on ``executor`` and waits; a worker's death becomes :class:`WorkerCrashed`.

    The call is submitted as one object (``functools.partial``), so that the
    function's own keyword arguments never reach ``submit()``: a dask
    ``ClientExecutor`` would take ``workers=`` or ``pure=`` for itself.
    """
    call = functools.partial(function, *args, **kwargs)
    stats = _metrics.offload
    own_pool = executor is _pool  # busy and waiting are told apart for orthanc_py's pool, whose size is known
    stats.started(own_pool)
    crashed = False
    try:
        if _is_dask(executor):
            # dask takes a task with the same function and arguments for the
            # same result (pure=True by default): two identical requests
            # would run once. Each call of a handler is a new task.
            return executor.submit(call, pure=False).result()
        return executor.submit(call).result()
    except concurrent.futures.process.BrokenProcessPool as error:
        crashed = True
        raise WorkerCrashed(f"a worker process of the offload pool died while running {_name(function)} "
                            "(killed, out of memory, or crashed in a C extension); the pool is replaced") from error
    except Exception as error:
        if type(error).__name__ == "KilledWorker":  # dask gave up after the workers running it died
            crashed = True
            raise WorkerCrashed(f"the dask workers died while running {_name(function)}: {error}") from error
        raise
    finally:
        stats.finished(own_pool, crashed)


def _is_dask(executor: concurrent.futures.Executor) -> bool:
    """Whether ``executor`` is a ``dask.distributed`` one (``Client.get_executor()``), without importing dask."""
    return type(executor).__module__.split(".")[0] == "distributed"


def _arm_stop_deadline() -> None:
    """Orthanc is stopping: work still running in the pool after the grace is ended by force."""

    def end_running_work() -> None:
        with _pool_lock:
            pool = _pool
        if pool is not None and _busy(pool):
            _capi.log_warning(f"orthanc_py: offloaded work still runs {_runtime.settings.shutdown_grace:g} s after "
                              "Orthanc began to stop: ending its worker processes")
            _terminate_workers(pool)

    timer = threading.Timer(_runtime.settings.shutdown_grace, end_running_work)
    timer.name = "orthanc_py-offload-deadline"
    timer.daemon = True
    timer.start()


def _busy(pool: concurrent.futures.ProcessPoolExecutor) -> bool:
    return bool(getattr(pool, "_pending_work_items", None))


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)


def _end_pool(pool: concurrent.futures.ProcessPoolExecutor, grace: float) -> None:
    """Shuts ``pool`` down: running work gets ``grace`` seconds, then its workers are ended."""
    # Wait (a bounded time) for the pool's manager thread: left running, it
    # may close its wake-up pipe while Python's exit hook writes to it (a race
    # of CPython 3.11's concurrent.futures), which prints a traceback.
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(grace)
    _terminate_workers(pool)
    if manager is not None:
        manager.join(_POOL_STOP_SECONDS)


def _stop_pool() -> None:
    global _pool, _stop_hooks_set
    with _pool_lock:
        pool, _pool = _pool, None
        _stop_hooks_set = False
    _metrics.offload.workers = 0
    if pool is not None:
        _end_pool(pool, grace=0 if _runtime.phase is _runtime.Phase.STOPPED else _runtime.settings.shutdown_grace)


_POOL_STOP_SECONDS = 5.0


def run_in_worker(function: Callable[..., Any], *args: Any, executor: concurrent.futures.Executor | None = None,
                  **kwargs: Any) -> Any:
    """Runs ``function(*args, **kwargs)`` in orthanc_py's pool of worker processes; returns its result.

    For the CPU-bound part of a handler that must also call Orthanc: fetch
    with :mod:`orthanc_py.rest` here, compute in the worker (which has no
    access to Orthanc), answer here. ``function`` must be defined at the top
    level of the script; arguments and result must pickle.

    :param executor: where to run it instead of orthanc_py's pool: any
        :class:`concurrent.futures.Executor`, such as a ``dask.distributed``
        cluster's (``Client(address).get_executor()``), whose workers may be
        other machines. (A keyword argument of ``function`` itself named
        ``executor`` goes through ``functools.partial``.)
    :raises WorkerCrashed: when the worker process died while running it.
    """
    return submit(executor if executor is not None else default_pool(), function, *args, **kwargs)
