# SPDX-License-Identifier: GPL-3.0-or-later
"""DICOM SCPs: C-FIND, worklists, C-MOVE and storage commitment.

- :func:`RegisterFindCallback` / :func:`RegisterWorklistCallback` --
  ``callback(answers, query, issuerAet, calledAet)``, the query a
  :class:`FindQuery`;
- :func:`RegisterMoveCallback` -- ``callback(**request)``;
- :func:`RegisterStorageCommitmentScpCallback` -- a factory of handlers,
  their destructor, and their lookup of each instance.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .. import _capi, _hooks, _sdk
from .._calls import Handle
from .registration import (
    PLUGIN_ERROR,
    SUCCESS,
    Service,
    _call,
    _check_callable,
    _decode,
    _is_int,
    _name,
)

__all__ = [
    "FindQuery",
    "RegisterFindCallback",
    "RegisterMoveCallback",
    "RegisterStorageCommitmentScpCallback",
    "RegisterWorklistCallback",
]


class FindQuery(Handle):
    """The query of a C-FIND request, given to a find callback."""

    c_type_name = "OrthancPluginFindQuery"
    after_callback = "read the query while the callback runs"

    def GetFindQueryTagGroup(self, index: int) -> int:
        """Returns the group of the ``index``-th tag of the query."""
        return int(_call("GetFindQueryTag", self, index)[0])

    def GetFindQueryTagElement(self, index: int) -> int:
        """Returns the element of the ``index``-th tag of the query."""
        return int(_call("GetFindQueryTag", self, index)[1])


# --- C-FIND: queries and worklists ------------------------------------------------------

FindCallback = Callable[[Handle, Handle, str, str], Any]


def _find_trampoline(c_type: Any, callback: FindCallback, where: str, answers_type: str, query_type: str) -> Any:
    def c_find(answers_pointer: Any, query_pointer: Any, issuer_aet: bytes | None, called_aet: bytes | None) -> int:
        answers = _hooks.lend(answers_type, answers_pointer)
        query = _hooks.lend(query_type, query_pointer)
        try:
            callback(answers, query, _decode(issuer_aet), _decode(called_aet))
        finally:
            _capi.expire(answers, query)
        return SUCCESS

    # An error code makes the C-FIND fail ("unable to process"): no partial answer looks complete.
    return _capi.trampoline(c_type, where, on_error=PLUGIN_ERROR)(c_find)


def RegisterFindCallback(callback: FindCallback) -> None:
    """Registers ``callback(answers, query, issuerAet, calledAet)``, which answers C-FIND requests.

    It replaces Orthanc's own C-FIND SCP (worklist queries excepted, see
    :func:`RegisterWorklistCallback`). ``query`` (:class:`orthanc.FindQuery`)
    holds the tags of the request: ``GetFindQuerySize()``,
    ``GetFindQueryTagName(i)``, ``GetFindQueryValue(i)``...; each answer is a
    DICOM file (``bytes``, e.g. from :func:`orthanc.CreateDicom`) given to
    ``answers.FindAddAnswer()`` (:class:`orthanc.FindAnswers`), and
    ``answers.FindMarkIncomplete()`` tells the modality that more matches
    exist. ``issuerAet`` and ``calledAet`` are the AE titles of the modality
    and of Orthanc. Both objects are valid during the call only; the return
    value is ignored.

    When the callback raises, the traceback goes to Orthanc's log and the
    modality gets a failed C-FIND.

    :param callback: the C-FIND handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a C-FIND handler is already registered.
    """
    function = "RegisterFindCallback"
    _check_callable(function, "callback", callback)
    params = _sdk._OrthancPluginFindCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginFindCallback, callback, f"the C-FIND callback {_name(callback)}",
        "OrthancPluginFindAnswers", "OrthancPluginFindQuery",
    )
    by = f"orthanc.{function}()"
    _hooks.find.add(callback, by, f"the C-FIND callback {_name(callback)}", once=True,
                    connect=lambda: _hooks.register(Service.RegisterFindCallback, params, by))


def RegisterWorklistCallback(callback: FindCallback) -> None:
    """Registers ``callback(answers, query, issuerAet, calledAet)``, which answers worklist C-FIND requests.

    ``query`` (:class:`orthanc.WorklistQuery`) gives the request as a DICOM
    file (``WorklistGetDicomQuery()``) and matches a candidate worklist item
    (``WorklistIsMatch(dicom)``); each matching item (``bytes``) goes to
    ``answers.WorklistAddAnswer(query, dicom)`` (:class:`orthanc.WorklistAnswers`).
    Both objects are valid during the call only; the return value is
    ignored. When the callback raises, the traceback goes to Orthanc's log
    and the modality gets a failed C-FIND.

    :param callback: the worklist handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a worklist handler is already registered.
    """
    function = "RegisterWorklistCallback"
    _check_callable(function, "callback", callback)
    params = _sdk._OrthancPluginWorklistCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginWorklistCallback, callback, f"the worklist callback {_name(callback)}",
        "OrthancPluginWorklistAnswers", "OrthancPluginWorklistQuery",
    )
    by = f"orthanc.{function}()"
    _hooks.worklist.add(callback, by, f"the worklist callback {_name(callback)}", once=True,
                        connect=lambda: _hooks.register(Service.RegisterWorklistCallback, params, by))


# --- C-MOVE -------------------------------------------------------------------------------

MoveCallback = Callable[..., Any]

_LEVELS = {
    int(_sdk.OrthancPluginResourceType.Patient): "PATIENT",
    int(_sdk.OrthancPluginResourceType.Study): "STUDY",
    int(_sdk.OrthancPluginResourceType.Series): "SERIES",
    int(_sdk.OrthancPluginResourceType.Instance): "INSTANCE",
}

# Pending C-MOVE requests, by the driver "pointer" Orthanc hands back to us:
# a counter, never 0 (NULL would tell Orthanc the request is refused).
_moves: dict[int, dict[str, Any]] = {}
_move_ids = itertools.count(1)


def RegisterMoveCallback(callback: MoveCallback) -> None:
    """Registers ``callback(**request)``, which carries out C-MOVE requests.

    It replaces Orthanc's own C-MOVE SCP. ``request`` holds ``Level``
    (``"PATIENT"``, ``"STUDY"``, ``"SERIES"``, ``"INSTANCE"``, or ``""`` when
    the modality sent no QueryRetrieveLevel), ``PatientID``,
    ``AccessionNumber``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
    ``SOPInstanceUID`` (``""`` when absent from the request),
    ``OriginatorAET`` (who asks), ``SourceAET`` (Orthanc), ``TargetAET``
    (where to send the instances) and ``OriginatorID`` (the request's
    message ID, an ``int``). The callback does the whole move, e.g. with
    :func:`orthanc.RestApiPost` on ``/modalities/.../store``; its return
    value is ignored.

    The C-MOVE counts as one sub-operation: when the callback raises, the
    traceback goes to Orthanc's log and the modality is told that it failed.

    :param callback: the C-MOVE handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a C-MOVE handler is already registered.
    """
    function = "RegisterMoveCallback"
    _check_callable(function, "callback", callback)
    where = f"the C-MOVE callback {_name(callback)}"

    def c_create(level: int, patient_id: bytes | None, accession_number: bytes | None,
                 study_uid: bytes | None, series_uid: bytes | None, sop_uid: bytes | None,
                 originator_aet: bytes | None, source_aet: bytes | None, target_aet: bytes | None,
                 originator_id: int) -> int:
        # Only record the request: Orthanc calls c_apply next, and a failure
        # there is reported to the modality as a failed sub-operation.
        driver = next(_move_ids)
        _moves[driver] = {
            # The official plugin fails the whole C-MOVE when the level is
            # missing; "" lets the script decide from the identifiers.
            "Level": _LEVELS.get(level, ""),
            "PatientID": _decode(patient_id),
            "AccessionNumber": _decode(accession_number),
            "StudyInstanceUID": _decode(study_uid),
            "SeriesInstanceUID": _decode(series_uid),
            "SOPInstanceUID": _decode(sop_uid),
            "OriginatorAET": _decode(originator_aet),
            "SourceAET": _decode(source_aet),
            "TargetAET": _decode(target_aet),
            "OriginatorID": originator_id,
        }
        return driver

    def c_size(driver: int | None) -> int:
        return 1  # the whole move is one call of the Python callback

    def c_apply(driver: int | None) -> int:
        request = _moves.get(driver or 0)
        if request is None:
            _capi.log_error(f"orthanc_py: {where}: unknown C-MOVE driver {driver}")
            return PLUGIN_ERROR
        callback(**request)
        return SUCCESS

    def c_free(driver: int | None) -> None:
        _moves.pop(driver or 0, None)

    params = _sdk._OrthancPluginMoveCallback()
    # NULL (0) from c_create makes Orthanc refuse the C-MOVE.
    params.callback = _capi.trampoline(_sdk.OrthancPluginMoveCallback, where, on_error=0)(c_create)
    params.getMoveSize = _capi.trampoline(_sdk.OrthancPluginGetMoveSize, where, on_error=0)(c_size)
    params.applyMove = _capi.trampoline(_sdk.OrthancPluginApplyMove, where, on_error=PLUGIN_ERROR)(c_apply)
    params.freeMove = _capi.trampoline(_sdk.OrthancPluginFreeMove, where, on_error=None)(c_free)  # type: ignore[arg-type]
    by = f"orthanc.{function}()"
    _hooks.move.add(callback, by, where, once=True,
                    connect=lambda: _hooks.register(Service.RegisterMoveCallback, params, by))


# --- storage commitment SCP ------------------------------------------------------------------

FailureReason = _sdk.OrthancPluginStorageCommitmentFailureReason
_FAILURE_REASONS = {int(reason) for reason in FailureReason}

StorageCommitmentFactory = Callable[[str, str, list[str], list[str], str, str], Any]
StorageCommitmentDestructor = Callable[[Any], Any]
StorageCommitmentLookup = Callable[[Any, str, str], int]

# Pending storage commitment requests, by the handler "pointer" given to
# Orthanc: a counter, never 0.
_commitments: dict[int, Any] = {}
_commitment_ids = itertools.count(1)


def RegisterStorageCommitmentScpCallback(factory: StorageCommitmentFactory,
                                         destructor: StorageCommitmentDestructor | None,
                                         lookup: StorageCommitmentLookup) -> None:
    """Makes the script answer the storage commitment requests Orthanc receives (its N-ACTION SCP).

    For each request, Orthanc starts a job that calls:

    - ``factory(jobId, transactionUid, sopClassUids, sopInstanceUids,
      remoteAet, calledAet)`` once: the ID of that Orthanc job, the
      transaction UID (0008,1195), the SOP class and instance UIDs the SCU
      asks about (two ``list`` of ``str`` of the same length), and the AE
      titles of the SCU and of Orthanc. It returns a handler: any Python
      object (``None`` too), given back to the two other callbacks; the
      place to start fetching the answers in the background;
    - ``lookup(handler, sopClassUid, sopInstanceUid)`` for each instance in
      turn: it returns an :class:`orthanc.StorageCommitmentFailureReason`,
      ``SUCCESS`` (``0``) when the instance is safely stored;
    - ``destructor(handler)`` when Orthanc drops the request's job, which
      may be long after the answer: once the job leaves Orthanc's jobs
      history (option ``JobsHistorySize``), or when Orthanc stops
      (``destructor`` may be ``None``).

    Orthanc then sends the answers to the SCU (N-EVENT-REPORT). When
    ``factory`` raises, the request fails; when ``lookup`` raises or returns
    something else, the instance is reported as ``PROCESSING_FAILURE``. The
    reason goes to Orthanc's log either way.

    :raises TypeError: when an argument is not callable (``destructor`` may be ``None``).
    :raises RuntimeError: when a storage commitment SCP is already registered.
    """
    function = "RegisterStorageCommitmentScpCallback"
    _check_callable(function, "factory", factory)
    if destructor is not None:
        _check_callable(function, "destructor", destructor)
    _check_callable(function, "lookup", lookup)
    c_strings = _capi.c_strings
    lookup_where = f"the storage commitment lookup callback {_name(lookup)}"

    def c_factory(handler: Any, job_id: bytes | None, transaction_uid: bytes | None, sop_class_uids: Any,
                  sop_instance_uids: Any, count: int, remote_aet: bytes | None, called_aet: bytes | None) -> int:
        created = factory(_decode(job_id), _decode(transaction_uid), c_strings(sop_class_uids, count),
                          c_strings(sop_instance_uids, count), _decode(remote_aet), _decode(called_aet))
        driver = next(_commitment_ids)
        _commitments[driver] = created
        handler[0] = driver
        return SUCCESS

    def c_destructor(driver: int | None) -> None:
        created = _commitments.pop(driver or 0, None)
        if destructor is not None:
            destructor(created)

    def c_lookup(target: Any, driver: int | None, sop_class_uid: bytes | None, sop_instance_uid: bytes | None) -> int:
        target[0] = int(FailureReason.ProcessingFailure)
        try:
            reason = lookup(_commitments.get(driver or 0), _decode(sop_class_uid), _decode(sop_instance_uid))
        except BaseException:  # logged; the SCU is told this instance failed
            _capi.report_exception(lookup_where)
            return SUCCESS
        if not _is_int(reason) or reason not in _FAILURE_REASONS:
            _capi.log_error(
                f"orthanc_py: {lookup_where} returned {reason!r}, not an orthanc.StorageCommitmentFailureReason "
                "value; the instance is reported as PROCESSING_FAILURE"
            )
            return SUCCESS
        target[0] = int(reason)
        return SUCCESS

    params = _sdk._OrthancPluginRegisterStorageCommitmentScpCallback()
    params.factory = _capi.trampoline(
        _sdk.OrthancPluginStorageCommitmentFactory, f"the storage commitment factory {_name(factory)}", PLUGIN_ERROR
    )(c_factory)
    params.destructor = _capi.trampoline(
        _sdk.OrthancPluginStorageCommitmentDestructor,
        f"the storage commitment destructor {_name(destructor) if destructor else ''}", None,  # type: ignore[arg-type]
    )(c_destructor)
    params.lookup = _capi.trampoline(_sdk.OrthancPluginStorageCommitmentLookup, lookup_where, PLUGIN_ERROR)(c_lookup)
    by = f"orthanc.{function}()"
    _hooks.storage_commitment.add(
        factory, by, f"the storage commitment factory {_name(factory)}", once=True,
        connect=lambda: _hooks.register(Service.RegisterStorageCommitmentScpCallback, params, by),
    )
