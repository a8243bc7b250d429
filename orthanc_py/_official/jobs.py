# SPDX-License-Identifier: GPL-3.0-or-later
"""Jobs: created, submitted and unserialized by the script."""

from __future__ import annotations

import collections
import ctypes
import itertools
import json
import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .. import _calls, _capi, _hooks, _sdk, _sdk_calls
from .._calls import Handle
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    Service,
    _check_callable,
    _decode,
    _hand_over,
    _is_int,
    _name,
)

__all__ = [
    "CreateJob",
    "RegisterJobsUnserializer",
]


# --- jobs -----------------------------------------------------------------------------------------

StepStatus = _sdk.OrthancPluginJobStepStatus
_STEP_STATUSES = {int(status) for status in StepStatus}


class _JobState:
    """What Orthanc's job callbacks need of one job created by :func:`CreateJob`."""

    def __init__(self, job_type: str, callbacks: dict[str, Any]) -> None:
        self.job_type = job_type
        self.type_bytes = job_type.encode("utf-8")
        self.callbacks = callbacks
        # getContent() and getSerialized() return "const char*" that stays
        # the plugin's: the text must outlive the call, and Orthanc does not
        # say when it is done reading. The last few texts of each kind are
        # kept (and all of them are dropped when Orthanc finalizes the job),
        # so that a text is never freed while another thread may still read
        # it, even when several REST requests ask for the job at once.
        self.kept: collections.deque[Any] = collections.deque(maxlen=16)
        # Orthanc throws on a text that is not a JSON object, from threads
        # where nothing catches it (the process aborts): a bad value is
        # replaced by the last good one. Before any, the content is "{}" and
        # the job is not saved (NULL).
        self.good: dict[str, bytes | None] = {"content": b"{}", "serialized": None}
        self.buffers: dict[str, Any] = {}
        self.progress = 0.0
        # What was last logged about each callback, so that a bad value that
        # every GET /jobs asks for again is reported once, not per request.
        self.complaints: dict[str, str] = {}

    def where(self, name: str) -> str:
        return f"the {name} callback {_name(self.callbacks[name])} of the job of type {self.job_type!r}"

    def complain(self, name: str, kind: str, message: str) -> None:
        if self.complaints.get(name) != kind:
            self.complaints[name] = kind
            _capi.log_error(f"orthanc_py: {self.where(name)} {message}")

    def text_of(self, name: str) -> bytes | None:
        """The JSON text of ``callbacks[name]()``, or the last good one when it fails (logged once)."""
        try:
            value = self.callbacks[name]()
        except BaseException:  # logged; the last good value stays
            _capi.report_exception(self.where(name))
            return self.good[name]
        if value is None and name == "serialized":
            text = None  # the job is not saved
        else:
            try:
                text = _job_json(value)
            except _BadJobValue as error:
                keeps = ("Orthanc shows the last valid content" if name == "content"
                         else "Orthanc keeps the last valid state")
                self.complain(name, error.kind, f"{error}; {keeps} (return a dict of JSON values)")
                return self.good[name]
        self.complaints.pop(name, None)
        self.good[name] = text
        return text

    def c_json(self, name: str) -> int | None:
        """The address of the JSON text of ``callbacks[name]()``, or of the last good one (CreateJob)."""
        text = self.text_of(name)
        if text is None:
            return None
        buffer = self.buffers.get(name)
        if buffer is None or buffer.value != text:
            buffer = self.buffers[name] = ctypes.create_string_buffer(text)
            self.kept.append(buffer)
        return ctypes.addressof(buffer)

    def c_progress(self) -> float:
        try:
            value = float(self.callbacks["progress"]())
        except BaseException:  # logged; the last good progress stays
            _capi.report_exception(self.where("progress"))
            return self.progress
        if math.isnan(value):
            # Orthanc would write NaN into its JSON answers, which then fail
            # to parse: GET /jobs answers 400 to every client.
            self.complain("progress", "not a number",
                          f"returned {value}, not a fraction from 0.0 to 1.0; the last valid progress stays")
            return self.progress
        if not 0.0 <= value <= 1.0:
            self.complain("progress", "out of range",
                          f"returned {value}, outside 0.0 to 1.0 (a fraction, not a percentage); it is clamped")
            value = min(max(value, 0.0), 1.0)
        else:
            self.complaints.pop("progress", None)
        self.progress = value
        return value


class _BadJobValue(ValueError):
    """A job's content or state that Orthanc would refuse; ``kind`` names the problem, for the log."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _refuse_constant(name: str) -> Any:
    raise _BadJobValue("not finite", f"returned JSON text holding {name}, which JSON cannot carry")


def _job_json(value: Any) -> bytes:
    """The UTF-8 JSON text of ``value`` as Orthanc takes a job's content or state: an object of finite numbers.

    :raises _BadJobValue: saying what is wrong with ``value``.
    """
    if isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except _BadJobValue:
            raise
        except ValueError as error:
            raise _BadJobValue("not JSON", f"returned text that is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise _BadJobValue("not an object", f"returned {_describe(value)}, not a dict (or the JSON text of an object)")
    try:
        # Re-encoded even when given as text: what Orthanc reads is then
        # JSON without NaN/Infinity (1e999 parses as inf) nor lone surrogates.
        return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except ValueError:
        raise _BadJobValue("not finite", "returned a number that is NaN or Infinity, which JSON cannot carry") from None
    except TypeError as error:
        raise _BadJobValue("not JSON", f"returned a value JSON cannot carry ({error})") from None
    except UnicodeEncodeError:
        raise _BadJobValue("not UTF-8", "returned text holding a lone surrogate, which UTF-8 cannot carry") from None
    except RecursionError:
        raise _BadJobValue("too deep", "returned a value nested too deeply for JSON") from None


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


# Jobs alive in Orthanc, by the "job" pointer Orthanc hands back to the
# callbacks: a counter, never 0.
_jobs: dict[int, _JobState] = {}
_job_ids = itertools.count(1)
_jobs_lock = threading.Lock()
_EMPTY_OBJECT = ctypes.create_string_buffer(b"{}")
CREATE_JOB2_SINCE = (1, 11, 3)
_FIELDS = ("finalize", "getProgress", "getContent", "getSerialized", "step", "stop", "reset")
_job_thunks: dict[str, Any] = {}


def _job_callbacks() -> dict[str, Any]:
    """The C callbacks shared by every job (made once, kept for the life of the process)."""
    with _jobs_lock:
        if _job_thunks:
            return _job_thunks

    def state_of(job: int | None) -> _JobState | None:
        return _jobs.get(job or 0)

    def c_finalize(job: int | None) -> None:
        with _jobs_lock:
            _jobs.pop(job or 0, None)

    def c_progress(job: int | None) -> float:
        state = state_of(job)
        if state is None or state.callbacks.get("progress") is None:
            return 0.0
        return state.c_progress()

    def c_content(job: int | None) -> int | None:
        state = state_of(job)
        if state is None or state.callbacks.get("content") is None:
            return ctypes.addressof(_EMPTY_OBJECT)
        return state.c_json("content")

    def c_serialized(job: int | None) -> int | None:
        state = state_of(job)
        if state is None or state.callbacks.get("serialized") is None:
            return None  # NULL: the job is not saved in Orthanc's database
        return state.c_json("serialized")

    def c_step(job: int | None) -> int:
        state = state_of(job)
        if state is None:
            _capi.log_error(f"orthanc_py: unknown job {job}: it fails")
            return int(StepStatus.Failure)
        try:
            status = state.callbacks["step"]()
        except BaseException:  # logged; the job fails
            _capi.report_exception(state.where("step"))
            return int(StepStatus.Failure)
        if not _is_int(status) or status not in _STEP_STATUSES:
            _capi.log_error(
                f"orthanc_py: {state.where('step')} returned {status!r}, not an orthanc.JobStepStatus value; "
                "the job fails"
            )
            return int(StepStatus.Failure)
        return int(status)

    def c_stop(job: int | None, reason: int) -> int:
        state = state_of(job)
        if state is not None and state.callbacks.get("stop") is not None:
            try:
                state.callbacks["stop"](reason)
            except BaseException:  # logged, and reported to Orthanc
                _capi.report_exception(state.where("stop"))
                return PLUGIN_ERROR
        return SUCCESS

    def c_reset(job: int | None) -> int:
        state = state_of(job)
        if state is not None and state.callbacks.get("reset") is not None:
            try:
                state.callbacks["reset"]()
            except BaseException:  # logged, and reported to Orthanc
                _capi.report_exception(state.where("reset"))
                return PLUGIN_ERROR
        return SUCCESS

    # CreateJob2 (Orthanc 1.11.3): the texts are copied into Orthanc's buffers, nothing is kept.
    def c_content2(target: Any, job: int | None) -> int:
        state = state_of(job)
        text = b"{}" if state is None or state.callbacks.get("content") is None else state.text_of("content")
        _capi.fill_memory_buffer(target, text or b"{}", wide=False)
        return SUCCESS

    def c_serialized2(target: Any, job: int | None) -> int:
        state = state_of(job)
        if state is None or state.callbacks.get("serialized") is None:
            return 0  # the job is not saved in Orthanc's database
        text = state.text_of("serialized")
        if text is None:
            return 0
        _capi.fill_memory_buffer(target, text, wide=False)
        return 1

    # Each function handles its own errors, to name the job in the log; the
    # trampoline is the last guard.
    thunks = {
        "finalize": _capi.trampoline(_sdk.OrthancPluginJobFinalize, "a job's finalize callback", None)(c_finalize),  # type: ignore[arg-type]
        "getProgress": _capi.trampoline(_sdk.OrthancPluginJobGetProgress, "a job's progress callback", 0)(c_progress),
        "getContent": _capi.trampoline(
            _sdk.OrthancPluginJobGetContent, "a job's content callback", ctypes.addressof(_EMPTY_OBJECT)
        )(c_content),
        "getSerialized": _capi.trampoline(_sdk.OrthancPluginJobGetSerialized, "a job's serialize callback", 0)(
            c_serialized
        ),
        "getContent2": _capi.trampoline(_sdk.OrthancPluginJobGetContent2, "a job's content callback", PLUGIN_ERROR)(
            c_content2
        ),
        "getSerialized2": _capi.trampoline(_sdk.OrthancPluginJobGetSerialized2, "a job's serialize callback", -1)(
            c_serialized2
        ),
        "step": _capi.trampoline(_sdk.OrthancPluginJobStep, "a job's step callback", int(StepStatus.Failure))(c_step),
        "stop": _capi.trampoline(_sdk.OrthancPluginJobStop, "a job's stop callback", PLUGIN_ERROR)(c_stop),
        "reset": _capi.trampoline(_sdk.OrthancPluginJobReset, "a job's reset callback", PLUGIN_ERROR)(c_reset),
    }
    with _jobs_lock:
        if not _job_thunks:
            _job_thunks.update(thunks)
        return _job_thunks


def CreateJob(jobType: str, step: Callable[[], int], *, progress: Callable[[], float] | None = None,
              content: Callable[[], Any] | None = None, serialized: Callable[[], Any] | None = None,
              stop: Callable[[int], Any] | None = None, reset: Callable[[], Any] | None = None) -> Handle:
    """Creates a job written in Python, for Orthanc's jobs engine; submit it with ``job.SubmitJob(priority)``.

    Orthanc runs each job on a thread of its own and calls its callbacks
    there, one at a time:

    - ``step()`` does a bit of the work and returns an
      :class:`orthanc.JobStepStatus`: ``CONTINUE`` (call me again),
      ``SUCCESS`` or ``FAILURE`` (the job is over);
    - ``progress()`` returns how far the job is, from 0.0 to 1.0 (default:
      0.0); a value outside is clamped, and NaN keeps the last valid one;
    - ``content()`` returns what ``GET /jobs/{id}`` shows as the job's
      ``"Content"``: a ``dict`` (made JSON here) or the JSON text of an
      object (default: ``{}``);
    - ``serialized()`` returns the job's state as a ``dict`` or JSON text, for
      Orthanc to save it in its database and recreate it when it restarts
      through :func:`orthanc.RegisterJobsUnserializer`; ``None`` (the
      default) means the job is not saved;
    - ``stop(reason)`` is told that the job leaves the running state, with an
      :class:`orthanc.JobStopReason` (``SUCCESS``, ``PAUSED``, ``FAILURE``,
      ``CANCELED``): the place to stop threads the job started;
    - ``reset()`` is called when a failed or canceled job is resubmitted.

    ``content()`` and ``serialized()`` must give JSON objects of finite
    numbers: ``SubmitJob`` raises :class:`ValueError` for another value, and
    later on such a value is logged and the last valid one kept.

    An exception in ``step`` fails the job; in any callback, it goes to
    Orthanc's log with its traceback and never reaches Orthanc.

    :param jobType: the job's type, shown by ``GET /jobs/{id}`` and given to the unserializer.
    :param step: the callback that does the work.
    :returns: an :class:`orthanc.Job`. Until it is submitted, it belongs to
        the script (closing or collecting it frees it); once submitted,
        Orthanc owns it and the Python object is closed.
    :raises TypeError: when ``jobType`` is not a ``str`` or a callback not callable.
    :raises OrthancError: when Orthanc refuses to create the job.
    """
    function = "CreateJob"
    if not isinstance(jobType, str):
        raise TypeError(f"CreateJob() argument 'jobType' must be str, not {type(jobType).__name__}")
    _check_callable(function, "step", step)
    callbacks: dict[str, Any] = {"step": step, "progress": progress, "content": content,
                                 "serialized": serialized, "stop": stop, "reset": reset}
    for argument, value in callbacks.items():
        if value is not None:
            _check_callable(function, argument, value)
    thunks = _job_callbacks()
    state = _JobState(jobType, callbacks)
    driver = next(_job_ids)
    with _jobs_lock:
        _jobs[driver] = state

    target = ctypes.POINTER(_sdk.OrthancPluginJob)()
    # CreateJob2 hands the content and the state over in Orthanc's buffers;
    # the older service reads texts the plugin must keep alive. A job whose
    # state is saved keeps the older service: Orthanc (1.11.3 to 1.13.0, in
    # PluginsJob::Serialize) asks a CreateJob2 job's content callback for its
    # state, takes the "success" code 0 for "not serializable", and never saves it.
    second = _capi.release >= CREATE_JOB2_SINCE and serialized is None
    params = _sdk._OrthancPluginCreateJob2() if second else _sdk._OrthancPluginCreateJob()
    params.target = ctypes.pointer(target)
    params.job = driver
    params.type = state.type_bytes
    for field in _FIELDS:
        setattr(params, field, thunks[field + "2"] if second and field + "2" in thunks else thunks[field])
    try:
        _capi.invoke(Service.CreateJob2 if second else Service.CreateJob, params, f"orthanc.{function}()")
    except BaseException:
        with _jobs_lock:
            _jobs.pop(driver, None)
        raise
    address = ctypes.cast(target, ctypes.c_void_p).value
    if not address:
        with _jobs_lock:
            _jobs.pop(driver, None)
        raise _capi.OrthancError(PLUGIN_ERROR, "Orthanc created no job")
    job = _calls.handle_class("OrthancPluginJob")(address, owned=True)
    _unsubmitted[job] = state
    return job


# The state of each job the script created and has not submitted yet, for
# SubmitJob's checks (weak: a job the script drops is freed as before).
_unsubmitted: weakref.WeakKeyDictionary[Handle, _JobState] = weakref.WeakKeyDictionary()


def _SubmitJob(self: Handle, priority: int) -> str:
    """Submits the job to Orthanc's jobs engine; returns its ID (as in ``GET /jobs/{id}``).

    The job's ``content()`` and ``serialized()`` are asked first: each must
    give a ``dict`` of JSON values (or its JSON text) without NaN or Infinity,
    as Orthanc refuses anything else. When they do, Orthanc owns the job from
    the call on, and this object is closed, even if Orthanc refuses the job.

    :param priority: the job's priority (higher runs first).
    :raises ValueError: when ``content()`` or ``serialized()`` gives a value
        Orthanc would refuse; the job is not submitted and stays the script's.
    :raises OrthancError: when Orthanc refuses the job; Orthanc has deleted it.
    """
    what = "orthanc.Job.SubmitJob()"
    if not _is_int(priority):
        raise TypeError(f"{what} argument 'priority' must be int, not {type(priority).__name__}")
    if not -2**31 <= priority < 2**31:
        raise ValueError(f"{what} argument 'priority' must fit in 32 bits, not {priority}")
    if not self._address or not self._owned:
        raise ValueError(f"{what}: this job was already submitted or closed; create a new one with orthanc.CreateJob()")
    state = _unsubmitted.get(self)
    if state is not None:
        _check_before_submit(state, what)
    # Orthanc takes the job at the call, and deletes it itself when it refuses
    # it: whatever happens now, Python must never free it again.
    self._owned = False
    _unsubmitted.pop(self, None)
    try:
        job_id = _sdk_calls.sdk_function("OrthancPluginSubmitJob")(self, priority)
    except _capi.OrthancError as error:
        raise _capi.OrthancError(
            error.code, f"{error.description}: Orthanc refused the job of type "
            f"{state.job_type if state else '?'!r} and deleted it"
        ) from None
    finally:
        self.detach()
    if job_id is None:
        raise _capi.OrthancError(PLUGIN_ERROR, "Orthanc gave the submitted job no ID")
    return str(job_id)


def _check_before_submit(state: _JobState, what: str) -> None:
    """Raises ``ValueError`` when the job's content or state is one Orthanc would refuse at submission."""
    for name in ("content", "serialized"):
        callback = state.callbacks.get(name)
        if callback is None:
            continue
        value = callback()
        if value is None and name == "serialized":
            continue
        try:
            _job_json(value)
        except _BadJobValue as error:
            raise ValueError(
                f"{what}: {state.where(name)} {error}; Orthanc takes only a JSON object (a dict of JSON values, "
                "finite numbers): the job is not submitted"
            ) from None


JobsUnserializer = Callable[[str, str], Any]


def RegisterJobsUnserializer(callback: JobsUnserializer) -> None:
    """Registers ``callback(jobType, serialized)``, which recreates saved jobs when Orthanc starts.

    Orthanc saves in its database the jobs whose ``serialized()`` callback
    (see :func:`CreateJob`) gives a state. When it restarts, it calls this
    callback for each one, with the job's type and that state as JSON text
    (``str``; Orthanc adds the key ``"Type"`` to the object). The callback
    returns the recreated :class:`orthanc.Job` (made with
    :func:`CreateJob`, not submitted), which Orthanc takes over, or
    ``None`` when the type is not its own. When it raises or returns
    something else, the reason goes to Orthanc's log and the job is not
    recreated.

    :param callback: the unserializer.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when an unserializer is already registered.
    """
    function = "RegisterJobsUnserializer"
    _check_callable(function, "callback", callback)
    where = f"the jobs unserializer {_name(callback)}"

    def c_unserialize(job_type: bytes | None, serialized: bytes | None) -> int | None:
        job = callback(_decode(job_type), _decode(serialized))
        if job is None:
            return None  # not ours: Orthanc asks its other unserializers
        return _hand_over(job, "OrthancPluginJob", where)

    params = _sdk._OrthancPluginJobsUnserializer()
    params.unserializer = _capi.trampoline(_sdk.OrthancPluginJobsUnserializer, where, on_error=0)(c_unserialize)
    by = f"orthanc.{function}()"
    _hooks.jobs_unserializer.add(callback, by, where, once=True,
                                 connect=lambda: _hooks.register(Service.RegisterJobsUnserializer, params, by))


# Methods of the orthanc module's classes, put there when it is assembled.
METHODS: tuple[tuple[str, Callable[..., Any]], ...] = (("OrthancPluginJob", _SubmitJob),)
