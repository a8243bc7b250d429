# SPDX-License-Identifier: GPL-3.0-or-later
"""DICOM SCPs: C-FIND, worklists, C-MOVE and storage commitment.

- :func:`RegisterFindCallback` / :func:`RegisterWorklistCallback` --
  ``callback(answers, query, issuerAet, calledAet)``, the query a
  :class:`FindQuery`; their ``2`` variants (Orthanc 1.12.10) --
  ``callback(answers, query, connection)``, the connection a
  :class:`DicomConnection`;
- :func:`RegisterMoveCallback` -- ``callback(**request)``, the whole move
  in one call; :func:`RegisterMoveCallback2` -- a driver per request,
  made by ``create(**request)``, that counts and applies the
  sub-operations one by one; :func:`RegisterMoveCallback3` (Orthanc
  1.12.10) -- the same, ``create(connection, **request)``;
- :func:`RegisterStorageCommitmentScpCallback` -- a factory of handlers
  and their lookup of each instance; its ``2`` variant (Orthanc 1.12.10)
  hands the factory the :class:`DicomConnection`.

A script registers one variant of each SCP: Orthanc takes one handler of
each kind.

Each request is counted in orthanc_py's metrics (:mod:`.._metrics`), under
the name of the callback (of ``create`` and of ``factory`` for C-MOVE and
storage commitment): a delivery, and a failure when one of the request's
callbacks fails.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

from .. import _capi, _hooks, _metrics, _sdk
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
    _require_sdk,
)

__all__ = [
    "DicomConnection",
    "FindQuery",
    "RegisterFindCallback",
    "RegisterFindCallback2",
    "RegisterMoveCallback",
    "RegisterMoveCallback2",
    "RegisterMoveCallback3",
    "RegisterStorageCommitmentScpCallback",
    "RegisterStorageCommitmentScpCallback2",
    "RegisterWorklistCallback",
    "RegisterWorklistCallback2",
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


class DicomConnection(Handle):
    """The DICOM association a request came through (Orthanc 1.12.10 or newer).

    Given to the callbacks of :func:`RegisterFindCallback2`,
    :func:`RegisterWorklistCallback2`, :func:`RegisterMoveCallback3` and
    :func:`RegisterStorageCommitmentScpCallback2`: ``GetConnectionRemoteAet()``
    (the AE title of the modality), ``GetConnectionRemoteIp()`` (its IP
    address) and ``GetConnectionCalledAet()`` (the AE title the modality
    called: Orthanc's), each a ``str``.
    """

    c_type_name = "OrthancPluginDicomConnection"
    after_callback = "read its AE titles and IP address while the callback runs"


def _lend_connection(pointer: Any) -> DicomConnection:
    # The class registered for the C type is DicomConnection's (the orthanc module subclasses it).
    return cast(DicomConnection, _hooks.lend(DicomConnection.c_type_name, pointer))


# --- C-FIND: queries and worklists ------------------------------------------------------

FindCallback = Callable[[Handle, Handle, str, str], Any]
FindCallback2 = Callable[[Handle, Handle, DicomConnection], Any]


def _find_trampoline(c_type: Any, callback: Callable[..., Any], where: str, answers_type: str, query_type: str,
                     stats: _metrics.HandlerStats, with_connection: bool = False) -> Any:
    """The C callback of a C-FIND-shaped SCP: each request is a delivery in ``stats``, and one that raises a failure."""
    if with_connection:
        def c_find(answers_pointer: Any, query_pointer: Any, connection_pointer: Any) -> int:
            stats.deliveries += 1
            answers = _hooks.lend(answers_type, answers_pointer)
            query = _hooks.lend(query_type, query_pointer)
            connection = _lend_connection(connection_pointer)
            try:
                callback(answers, query, connection)
            except BaseException:
                stats.failures += 1
                raise
            finally:
                _capi.expire(answers, query, connection)
            return SUCCESS
    else:
        def c_find(answers_pointer: Any, query_pointer: Any,  # type: ignore[misc]
                   issuer_aet: bytes | None, called_aet: bytes | None) -> int:
            stats.deliveries += 1
            answers = _hooks.lend(answers_type, answers_pointer)
            query = _hooks.lend(query_type, query_pointer)
            try:
                callback(answers, query, _decode(issuer_aet), _decode(called_aet))
            except BaseException:
                stats.failures += 1
                raise
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
    :raises RuntimeError: when a C-FIND handler is already registered (by this
        function or by :func:`RegisterFindCallback2`).
    """
    function = "RegisterFindCallback"
    _check_callable(function, "callback", callback)
    params = _sdk._OrthancPluginFindCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginFindCallback, callback, f"the C-FIND callback {_name(callback)}",
        "OrthancPluginFindAnswers", "OrthancPluginFindQuery", _metrics.handler("find_scp", _name(callback)),
    )
    by = f"orthanc.{function}()"
    _hooks.find.add(callback, by, f"the C-FIND callback {_name(callback)}", once=True,
                    connect=lambda: _hooks.register(Service.RegisterFindCallback, params, by))


def RegisterFindCallback2(callback: FindCallback2) -> None:
    """Registers ``callback(answers, query, connection)``, which answers C-FIND requests (Orthanc 1.12.10 or newer).

    As :func:`RegisterFindCallback`, but the callback gets the DICOM
    association the request came through, a :class:`orthanc.DicomConnection`
    (``GetConnectionRemoteAet()``, ``GetConnectionRemoteIp()``,
    ``GetConnectionCalledAet()``), instead of the two AE titles: a script can
    answer according to the modality's address. The three objects are valid
    during the call only; the return value is ignored. When the callback
    raises, the traceback goes to Orthanc's log and the modality gets a
    failed C-FIND.

    :param callback: the C-FIND handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.10.
    :raises RuntimeError: when a C-FIND handler is already registered (by this
        function or by :func:`RegisterFindCallback`).
    """
    function = "RegisterFindCallback2"
    _check_callable(function, "callback", callback)
    _require_sdk(function, "RegisterFindCallback2")
    where = f"the C-FIND callback {_name(callback)}"
    params = _sdk._OrthancPluginFindCallback2()
    params.callback = _find_trampoline(_sdk.OrthancPluginFindCallback2, callback, where, "OrthancPluginFindAnswers",
                                       "OrthancPluginFindQuery", _metrics.handler("find_scp", _name(callback)),
                                       with_connection=True)
    by = f"orthanc.{function}()"
    _hooks.find.add(callback, by, where, once=True,
                    connect=lambda: _hooks.register(Service.RegisterFindCallback2, params, by))


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
    :raises RuntimeError: when a worklist handler is already registered (by
        this function or by :func:`RegisterWorklistCallback2`).
    """
    function = "RegisterWorklistCallback"
    _check_callable(function, "callback", callback)
    params = _sdk._OrthancPluginWorklistCallback()
    params.callback = _find_trampoline(
        _sdk.OrthancPluginWorklistCallback, callback, f"the worklist callback {_name(callback)}",
        "OrthancPluginWorklistAnswers", "OrthancPluginWorklistQuery",
        _metrics.handler("worklist_scp", _name(callback)),
    )
    by = f"orthanc.{function}()"
    _hooks.worklist.add(callback, by, f"the worklist callback {_name(callback)}", once=True,
                        connect=lambda: _hooks.register(Service.RegisterWorklistCallback, params, by))


def RegisterWorklistCallback2(callback: FindCallback2) -> None:
    """Registers ``callback(answers, query, connection)``, which answers worklist C-FIND requests (Orthanc 1.12.10+).

    As :func:`RegisterWorklistCallback`, but the callback gets the DICOM
    association the request came through, a :class:`orthanc.DicomConnection`
    (``GetConnectionRemoteAet()``, ``GetConnectionRemoteIp()``,
    ``GetConnectionCalledAet()``), instead of the two AE titles. The three
    objects are valid during the call only; the return value is ignored.
    When the callback raises, the traceback goes to Orthanc's log and the
    modality gets a failed C-FIND.

    :param callback: the worklist handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.10.
    :raises RuntimeError: when a worklist handler is already registered (by
        this function or by :func:`RegisterWorklistCallback`).
    """
    function = "RegisterWorklistCallback2"
    _check_callable(function, "callback", callback)
    _require_sdk(function, "RegisterWorklistCallback2")
    where = f"the worklist callback {_name(callback)}"
    params = _sdk._OrthancPluginWorklistCallback2()
    params.callback = _find_trampoline(_sdk.OrthancPluginWorklistCallback2, callback, where,
                                       "OrthancPluginWorklistAnswers", "OrthancPluginWorklistQuery",
                                       _metrics.handler("worklist_scp", _name(callback)), with_connection=True)
    by = f"orthanc.{function}()"
    _hooks.worklist.add(callback, by, where, once=True,
                        connect=lambda: _hooks.register(Service.RegisterWorklistCallback2, params, by))


# --- C-MOVE -------------------------------------------------------------------------------

MoveCallback = Callable[..., Any]
MoveSize = Callable[[Any], int]
MoveApply = Callable[[Any], Any]
MoveFree = Callable[[Any], Any]

_LEVELS = {
    int(_sdk.OrthancPluginResourceType.Patient): "PATIENT",
    int(_sdk.OrthancPluginResourceType.Study): "STUDY",
    int(_sdk.OrthancPluginResourceType.Series): "SERIES",
    int(_sdk.OrthancPluginResourceType.Instance): "INSTANCE",
}

_MAX_SUB_OPERATIONS = 0xFFFFFFFF  # Orthanc reads the count as a uint32_t


class _Move:
    """A C-MOVE request between its creation and Orthanc's freeing of it."""

    __slots__ = ("counted", "driver", "failed")

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        # Counting its sub-operations failed: the one sub-operation Orthanc is then told of fails.
        self.failed = False
        # A failure of the request is in the handler's figures already: a request fails once there.
        self.counted = False


# Pending C-MOVE requests, by the driver "pointer" Orthanc hands back to us:
# a counter, never 0 (NULL would tell Orthanc the request is refused).
_moves: dict[int, _Move] = {}
_move_ids = itertools.count(1)


def _move_identifiers(level: int, patient_id: bytes | None, accession_number: bytes | None,
                      study_uid: bytes | None, series_uid: bytes | None, sop_uid: bytes | None) -> dict[str, Any]:
    """The identifiers of a C-MOVE request, as every variant gives them to the script."""
    return {
        # The official plugin fails the whole C-MOVE when the level is
        # missing; "" lets the script decide from the identifiers.
        "Level": _LEVELS.get(level, ""),
        "PatientID": _decode(patient_id),
        "AccessionNumber": _decode(accession_number),
        "StudyInstanceUID": _decode(study_uid),
        "SeriesInstanceUID": _decode(series_uid),
        "SOPInstanceUID": _decode(sop_uid),
    }


def _start_move(driver: Any) -> int:
    """Keeps the driver of a new C-MOVE; returns the key Orthanc hands back to the other callbacks."""
    key = next(_move_ids)
    _moves[key] = _Move(driver)
    return key


def _move_callbacks(params: Any, create_type: Any, c_create: Callable[..., int], size: MoveSize, apply: MoveApply,
                    free: MoveFree | None, where: tuple[str, str, str, str], stats: _metrics.HandlerStats) -> None:
    """Fills ``params`` with the C callbacks of a C-MOVE SCP; ``c_create`` starts requests (:func:`_start_move`).

    :param create_type: the C type of ``c_create``.
    :param size: the number of sub-operations of a driver.
    :param apply: carries out the next sub-operation of a driver.
    :param free: told that Orthanc is done with a driver (``None``: nothing to tell).
    :param where: the create, size, apply and free callbacks as the log names them.
    :param stats: the handler's figures: each request is a delivery, and a failure when
        any of its callbacks fails (once, however many of them fail).
    """
    create_where, size_where, apply_where, free_where = where

    def counted_create(*request: Any) -> int:
        stats.deliveries += 1
        try:
            return c_create(*request)
        except BaseException:
            stats.failures += 1
            raise

    def count_failure(move: _Move) -> None:
        if not move.counted:
            move.counted = True
            stats.failures += 1

    def c_size(key: int | None) -> int:
        move = _moves.get(key or 0)
        if move is None:
            _capi.log_error(f"orthanc_py: {size_where}: unknown C-MOVE driver {key}")
            return 1  # its one sub-operation fails: c_apply does not know the driver either
        try:
            count = size(move.driver)
        except BaseException:  # logged; the modality is told that the C-MOVE failed
            _capi.report_exception(f"{size_where}; the C-MOVE fails")
        else:
            if _is_int(count) and 0 <= count <= _MAX_SUB_OPERATIONS:
                return int(count)
            _capi.log_error(f"orthanc_py: {size_where} returned {count!r:.80}, not a number of sub-operations "
                            f"(an int from 0 to {_MAX_SUB_OPERATIONS}); the C-MOVE fails")
        # The count has no error value: one sub-operation, failed by c_apply,
        # tells the modality that the move failed.
        move.failed = True
        count_failure(move)
        return 1

    def c_apply(key: int | None) -> int:
        move = _moves.get(key or 0)
        if move is None:
            _capi.log_error(f"orthanc_py: {apply_where}: unknown C-MOVE driver {key}")
            return PLUGIN_ERROR
        if move.failed:
            return PLUGIN_ERROR  # the reason is in the log already
        try:
            apply(move.driver)
        except BaseException:
            count_failure(move)
            raise
        return SUCCESS

    def c_free(key: int | None) -> None:
        move = _moves.pop(key or 0, None)
        if move is not None and free is not None:
            try:
                free(move.driver)
            except BaseException:
                count_failure(move)
                raise

    # NULL (0) from c_create makes Orthanc refuse the C-MOVE.
    params.callback = _capi.trampoline(create_type, create_where, on_error=0)(counted_create)
    params.getMoveSize = _capi.trampoline(_sdk.OrthancPluginGetMoveSize, size_where, on_error=1)(c_size)
    params.applyMove = _capi.trampoline(_sdk.OrthancPluginApplyMove, apply_where, on_error=PLUGIN_ERROR)(c_apply)
    params.freeMove = _capi.trampoline(_sdk.OrthancPluginFreeMove, free_where, on_error=None)(c_free)  # type: ignore[arg-type]


def _check_move_callbacks(function: str, create: Any, getMoveSize: Any, applyMove: Any, freeMove: Any) -> None:
    for argument, value in (("create", create), ("getMoveSize", getMoveSize), ("applyMove", applyMove),
                            ("freeMove", freeMove)):
        _check_callable(function, argument, value)


def _move_wheres(create: Any, size: Any, apply: Any, free: Any) -> tuple[str, str, str, str]:
    return (f"the C-MOVE create callback {_name(create)}", f"the C-MOVE size callback {_name(size)}",
            f"the C-MOVE apply callback {_name(apply)}", f"the C-MOVE free callback {_name(free)}")


def _c_create_v1(make: Callable[[dict[str, Any]], Any]) -> Callable[..., int]:
    """The C create callback of the SDK's first C-MOVE service: ``make(request)`` returns the driver."""
    def c_create(level: int, patient_id: bytes | None, accession_number: bytes | None,
                 study_uid: bytes | None, series_uid: bytes | None, sop_uid: bytes | None,
                 originator_aet: bytes | None, source_aet: bytes | None, target_aet: bytes | None,
                 originator_id: int) -> int:
        request = _move_identifiers(level, patient_id, accession_number, study_uid, series_uid, sop_uid)
        request.update({
            "OriginatorAET": _decode(originator_aet),
            "SourceAET": _decode(source_aet),
            "TargetAET": _decode(target_aet),
            "OriginatorID": originator_id,
        })
        return _start_move(make(request))

    return c_create


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
    :func:`RegisterMoveCallback2` reports each sub-operation instead.

    :param callback: the C-MOVE handler.
    :raises TypeError: when ``callback`` is not callable.
    :raises RuntimeError: when a C-MOVE handler is already registered (by this
        function, :func:`RegisterMoveCallback2` or :func:`RegisterMoveCallback3`).
    """
    function = "RegisterMoveCallback"
    _check_callable(function, "callback", callback)
    where = f"the C-MOVE callback {_name(callback)}"

    # Only record the request: Orthanc applies its one sub-operation next, and
    # a failure there is reported to the modality as a failed sub-operation.
    def run(request: dict[str, Any]) -> None:
        callback(**request)

    params = _sdk._OrthancPluginMoveCallback()
    _move_callbacks(params, _sdk.OrthancPluginMoveCallback, _c_create_v1(lambda request: request),
                    lambda request: 1, run, None, (where, where, where, where),
                    _metrics.handler("move_scp", _name(callback)))
    by = f"orthanc.{function}()"
    _hooks.move.add(callback, by, where, once=True,
                    connect=lambda: _hooks.register(Service.RegisterMoveCallback, params, by))


def RegisterMoveCallback2(create: MoveCallback, getMoveSize: MoveSize, applyMove: MoveApply,
                          freeMove: MoveFree) -> None:
    """Carries out C-MOVE requests through a driver per request, one sub-operation at a time.

    For each request, Orthanc calls:

    - ``create(**request)`` once, with the keywords of
      :func:`RegisterMoveCallback` (``Level``, ``PatientID``...,
      ``OriginatorAET``, ``SourceAET``, ``TargetAET``, ``OriginatorID``). It
      returns the request's driver: any Python object (``None`` too), given
      to the three other callbacks;
    - ``getMoveSize(driver)``: the number of sub-operations (usually the
      number of instances to send), an ``int``;
    - ``applyMove(driver)`` that many times, each call carrying out the next
      sub-operation (sending one instance, say); its return value is ignored;
    - ``freeMove(driver)`` when Orthanc is done with the request.

    The modality sees the progress of the sub-operations, and the count of
    those that failed. When ``create`` raises, the modality is told that the
    C-MOVE cannot be processed; when ``applyMove`` raises, that sub-operation
    fails and Orthanc stops the move; when ``getMoveSize`` raises or returns
    something else, the move is one failed sub-operation. The traceback or
    the reason goes to Orthanc's log.

    :raises TypeError: when an argument is not callable.
    :raises RuntimeError: when a C-MOVE handler is already registered (by this
        function, :func:`RegisterMoveCallback` or :func:`RegisterMoveCallback3`).
    """
    function = "RegisterMoveCallback2"
    _check_move_callbacks(function, create, getMoveSize, applyMove, freeMove)
    params = _sdk._OrthancPluginMoveCallback()
    wheres = _move_wheres(create, getMoveSize, applyMove, freeMove)
    _move_callbacks(params, _sdk.OrthancPluginMoveCallback, _c_create_v1(lambda request: create(**request)),
                    getMoveSize, applyMove, freeMove, wheres, _metrics.handler("move_scp", _name(create)))
    by = f"orthanc.{function}()"
    _hooks.move.add(create, by, wheres[0], once=True,
                    connect=lambda: _hooks.register(Service.RegisterMoveCallback, params, by))


def RegisterMoveCallback3(create: MoveCallback, getMoveSize: MoveSize, applyMove: MoveApply,
                          freeMove: MoveFree) -> None:
    """As :func:`RegisterMoveCallback2`, with ``create(connection, **request)`` (Orthanc 1.12.10 or newer).

    ``connection`` is the DICOM association the request came through, a
    :class:`orthanc.DicomConnection` (``GetConnectionRemoteAet()``,
    ``GetConnectionRemoteIp()``, ``GetConnectionCalledAet()``), valid during
    the call of ``create`` only. ``request`` holds ``Level``, ``PatientID``,
    ``AccessionNumber``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
    ``SOPInstanceUID``, ``TargetAET`` and ``OriginatorID``: the AE titles of
    the modality and of Orthanc are the connection's. ``getMoveSize``,
    ``applyMove`` and ``freeMove`` get the driver ``create`` returned, as in
    :func:`RegisterMoveCallback2`.

    :raises TypeError: when an argument is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.10.
    :raises RuntimeError: when a C-MOVE handler is already registered (by this
        function, :func:`RegisterMoveCallback` or :func:`RegisterMoveCallback2`).
    """
    function = "RegisterMoveCallback3"
    _check_move_callbacks(function, create, getMoveSize, applyMove, freeMove)
    _require_sdk(function, "RegisterMoveCallback2")

    def c_create(level: int, patient_id: bytes | None, accession_number: bytes | None,
                 study_uid: bytes | None, series_uid: bytes | None, sop_uid: bytes | None,
                 connection_pointer: Any, target_aet: bytes | None, originator_id: int) -> int:
        request = _move_identifiers(level, patient_id, accession_number, study_uid, series_uid, sop_uid)
        request.update({"TargetAET": _decode(target_aet), "OriginatorID": originator_id})
        connection = _lend_connection(connection_pointer)
        try:
            driver = create(connection, **request)
        finally:
            _capi.expire(connection)
        return _start_move(driver)

    params = _sdk._OrthancPluginMoveCallback2()
    wheres = _move_wheres(create, getMoveSize, applyMove, freeMove)
    _move_callbacks(params, _sdk.OrthancPluginMoveCallback2, c_create, getMoveSize, applyMove, freeMove, wheres,
                    _metrics.handler("move_scp", _name(create)))
    by = f"orthanc.{function}()"
    _hooks.move.add(create, by, wheres[0], once=True,
                    connect=lambda: _hooks.register(Service.RegisterMoveCallback2, params, by))


# --- storage commitment SCP ------------------------------------------------------------------

FailureReason = _sdk.OrthancPluginStorageCommitmentFailureReason
_FAILURE_REASONS = {int(reason) for reason in FailureReason}

StorageCommitmentFactory = Callable[[str, str, list[str], list[str], str, str], Any]
StorageCommitmentFactory2 = Callable[[str, str, list[str], list[str], DicomConnection], Any]
StorageCommitmentLookup = Callable[[str, str, Any], int]


class _Commitment:
    """A storage commitment request between its factory's call and Orthanc's destruction of its handler."""

    __slots__ = ("counted", "handler")

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        """What the script's factory returned: given to each lookup."""
        # A failure of the request is in the factory's figures already: a request fails once there.
        self.counted = False


# Pending storage commitment requests, by the handler "pointer" given to
# Orthanc: a counter, never 0.
_commitments: dict[int, _Commitment] = {}
_commitment_ids = itertools.count(1)


def _register_storage_commitment(function: str, service: Service, params: Any, factory_type: Any,
                                 factory: Callable[..., Any], c_factory: Callable[..., int],
                                 lookup: StorageCommitmentLookup) -> None:
    """Registers a storage commitment SCP whose ``c_factory`` keeps each handler with :func:`_keep_commitment`.

    Each request is a delivery in the factory's figures, and a failure when
    the factory raises or a lookup fails (once, however many of them fail).
    """
    lookup_where = f"the storage commitment lookup callback {_name(lookup)}"
    stats = _metrics.handler("storage_commitment", _name(factory))

    def counted_factory(*request: Any) -> int:
        stats.deliveries += 1
        try:
            return c_factory(*request)
        except BaseException:
            stats.failures += 1
            raise

    def c_destructor(key: int | None) -> None:
        _commitments.pop(key or 0, None)

    def c_lookup(target: Any, key: int | None, sop_class_uid: bytes | None, sop_instance_uid: bytes | None) -> int:
        target[0] = int(FailureReason.ProcessingFailure)
        commitment = _commitments.get(key or 0)
        try:
            reason = lookup(_decode(sop_class_uid), _decode(sop_instance_uid),
                            None if commitment is None else commitment.handler)
        except BaseException:  # logged; the SCU is told this instance failed
            _capi.report_exception(f"{lookup_where}; the instance is reported as PROCESSING_FAILURE")
            count_failure(commitment)
            return SUCCESS
        if not _is_int(reason) or reason not in _FAILURE_REASONS:
            _capi.log_error(
                f"orthanc_py: {lookup_where} returned {reason!r:.80}, not an orthanc.StorageCommitmentFailureReason "
                "value; the instance is reported as PROCESSING_FAILURE"
            )
            count_failure(commitment)
            return SUCCESS
        target[0] = int(reason)
        return SUCCESS

    def count_failure(commitment: _Commitment | None) -> None:
        if commitment is not None:
            if commitment.counted:
                return
            commitment.counted = True
        stats.failures += 1

    factory_where = f"the storage commitment factory {_name(factory)}"
    params.factory = _capi.trampoline(factory_type, factory_where, PLUGIN_ERROR)(counted_factory)
    params.destructor = _capi.trampoline(
        _sdk.OrthancPluginStorageCommitmentDestructor, f"the storage commitment handlers of {_name(factory)}",
        None,  # type: ignore[arg-type]
    )(c_destructor)
    params.lookup = _capi.trampoline(_sdk.OrthancPluginStorageCommitmentLookup, lookup_where, PLUGIN_ERROR)(c_lookup)
    by = f"orthanc.{function}()"
    _hooks.storage_commitment.add(factory, by, factory_where, once=True,
                                  connect=lambda: _hooks.register(service, params, by))


def _keep_commitment(handler_out: Any, handler: Any) -> int:
    """Keeps the script's handler of a request until Orthanc destroys it; gives Orthanc its key."""
    key = next(_commitment_ids)
    _commitments[key] = _Commitment(handler)
    handler_out[0] = key
    return SUCCESS


def RegisterStorageCommitmentScpCallback(factory: StorageCommitmentFactory, lookup: StorageCommitmentLookup) -> None:
    """Makes the script answer the storage commitment requests Orthanc receives (its N-ACTION SCP).

    For each request, Orthanc starts a job that calls:

    - ``factory(jobId, transactionUid, sopClassUids, sopInstanceUids,
      remoteAet, calledAet)`` once: the ID of that Orthanc job, the
      transaction UID (0008,1195), the SOP class and instance UIDs the SCU
      asks about (two ``list`` of ``str`` of the same length), and the AE
      titles of the SCU and of Orthanc. It returns a handler: any Python
      object (``None`` too), given back to ``lookup``; the place to start
      fetching the answers in the background;
    - ``lookup(sopClassUid, sopInstanceUid, handler)`` for each instance in
      turn: it returns an :class:`orthanc.StorageCommitmentFailureReason`,
      ``SUCCESS`` (``0``) when the instance is safely stored.

    Orthanc then sends the answers to the SCU (N-EVENT-REPORT). The handler
    is dropped when Orthanc drops the request's job: once the job leaves
    Orthanc's jobs history (option ``JobsHistorySize``), or when Orthanc
    stops. When ``factory`` raises, the request fails; when ``lookup`` raises
    or returns something else, the instance is reported as
    ``PROCESSING_FAILURE``. The reason goes to Orthanc's log either way.

    :raises TypeError: when an argument is not callable.
    :raises RuntimeError: when a storage commitment SCP is already registered
        (by this function or by :func:`RegisterStorageCommitmentScpCallback2`).
    """
    function = "RegisterStorageCommitmentScpCallback"
    _check_callable(function, "factory", factory)
    _check_callable(function, "lookup", lookup)
    c_strings = _capi.c_strings

    def c_factory(handler_out: Any, job_id: bytes | None, transaction_uid: bytes | None, sop_class_uids: Any,
                  sop_instance_uids: Any, count: int, remote_aet: bytes | None, called_aet: bytes | None) -> int:
        handler = factory(_decode(job_id), _decode(transaction_uid), c_strings(sop_class_uids, count),
                          c_strings(sop_instance_uids, count), _decode(remote_aet), _decode(called_aet))
        return _keep_commitment(handler_out, handler)

    _register_storage_commitment(function, Service.RegisterStorageCommitmentScpCallback,
                                 _sdk._OrthancPluginRegisterStorageCommitmentScpCallback(),
                                 _sdk.OrthancPluginStorageCommitmentFactory, factory, c_factory, lookup)


def RegisterStorageCommitmentScpCallback2(factory: StorageCommitmentFactory2, lookup: StorageCommitmentLookup) -> None:
    """As :func:`RegisterStorageCommitmentScpCallback`, the factory given the connection (Orthanc 1.12.10 or newer).

    The factory is ``factory(jobId, transactionUid, sopClassUids,
    sopInstanceUids, connection)``: ``connection`` is the DICOM association
    the request came through, a :class:`orthanc.DicomConnection`
    (``GetConnectionRemoteAet()``, ``GetConnectionRemoteIp()``,
    ``GetConnectionCalledAet()``), valid during the call of ``factory``
    only. ``lookup(sopClassUid, sopInstanceUid, handler)`` is unchanged.

    :raises TypeError: when an argument is not callable.
    :raises SdkVersionError: on an Orthanc older than 1.12.10.
    :raises RuntimeError: when a storage commitment SCP is already registered
        (by this function or by :func:`RegisterStorageCommitmentScpCallback`).
    """
    function = "RegisterStorageCommitmentScpCallback2"
    _check_callable(function, "factory", factory)
    _check_callable(function, "lookup", lookup)
    _require_sdk(function, "RegisterStorageCommitmentScpCallback2")
    c_strings = _capi.c_strings

    def c_factory(handler_out: Any, job_id: bytes | None, transaction_uid: bytes | None, sop_class_uids: Any,
                  sop_instance_uids: Any, count: int, connection_pointer: Any) -> int:
        connection = _lend_connection(connection_pointer)
        try:
            handler = factory(_decode(job_id), _decode(transaction_uid), c_strings(sop_class_uids, count),
                              c_strings(sop_instance_uids, count), connection)
        finally:
            _capi.expire(connection)
        return _keep_commitment(handler_out, handler)

    _register_storage_commitment(function, Service.RegisterStorageCommitmentScpCallback2,
                                 _sdk._OrthancPluginRegisterStorageCommitmentScpCallback2(),
                                 _sdk.OrthancPluginStorageCommitmentFactory2, factory, c_factory, lookup)
