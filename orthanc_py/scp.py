# SPDX-License-Identifier: GPL-3.0-or-later
"""DICOM SCPs with decorators: ``@find_scp``, ``@worklist_scp`` and ``@move_scp``.

>>> @find_scp
... def patients(query):
...     if query.level == "PATIENT":
...         yield {"PatientID": "P1", "PatientName": "Doe^Jane"}

Orthanc takes one handler for each of these SCPs, and the decorators share
it with the ``orthanc`` module's ``RegisterFindCallback``,
``RegisterWorklistCallback`` and ``RegisterMoveCallback`` families: a script
declares each SCP in one style or the other, and a second handler stops the
script at start-up with an error naming the first. Every handler learns who
asks from a :class:`Connection`; on Orthanc 1.12.10 and later, which hand
plugins the DICOM connection, that includes the modality's IP address.

orthanc_py's metrics count each handler's requests and those that failed
(``orthanc_py_handler_deliveries_total{kind="find_scp",handler="patients"}``;
kinds ``find_scp``, ``worklist_scp`` and ``move_scp``).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, TypeVar

from . import _capi, _hooks, _metrics, _sdk, _sdk_calls, rest
from ._calls import Handle
from ._enums import CreateDicomFlags, DicomToJsonFlags, DicomToJsonFormat
from ._official import scp as _scp
from ._official.registration import _decode

__all__ = ["Connection", "FindQuery", "MoveRequest", "WorklistQuery", "find_scp", "move_scp", "worklist_scp"]

F = TypeVar("F", bound=Callable[..., Any])

CONNECTION_SINCE = (1, 12, 10)
"""The first Orthanc that hands the SCP callbacks the DICOM connection, with the modality's IP address."""

_call = _sdk_calls.call
_name = _capi.name_of
Service = _capi.Service


@dataclass(frozen=True)
class Connection:
    """The DICOM association a request came through: who asks, from where, and whom it called."""

    remote_aet: str
    """The AE title of the modality that sent the request."""
    remote_ip: str | None
    """The modality's IP address; ``None`` on an Orthanc older than 1.12.10, which does not tell plugins."""
    called_aet: str
    """The AE title the modality called: Orthanc's own (``DicomAet``), or any other when Orthanc's
    ``DicomCheckCalledAet`` is off (its default)."""


def _read_connection(connection: Handle) -> Connection:
    return Connection(_call("GetConnectionRemoteAet", connection) or "",
                      _call("GetConnectionRemoteIp", connection) or "",
                      _call("GetConnectionCalledAet", connection) or "")


def _check(decorator: str, function: Any) -> str:
    """The handler as the log names it; refuses what cannot be called."""
    if not callable(function):
        raise TypeError(f"{decorator}: the handler must be callable, not {type(function).__name__}")
    return f"the {decorator} handler {_name(function)}"


# --- answers --------------------------------------------------------------------------------

def _answers(result: Any, where: str) -> Iterator[Any]:
    """The answers a handler returned or yielded, one at a time (``None``: none)."""
    if result is None:
        return iter(())
    # One answer returned bare would be read as its keys or its bytes: say what to return.
    if isinstance(result, (Mapping, bytes, bytearray, memoryview, str)):
        raise TypeError(f"{where} returned a {type(result).__name__}: return (or yield) the answers, "
                        "an iterable of dicts of tags or of DICOM files, e.g. [answer]")
    try:
        return iter(result)
    except TypeError:
        raise TypeError(f"{where} returned {type(result).__name__}, not an iterable of answers") from None


def _dicom(answer: Any, where: str, defaults: Mapping[str, str] | None = None) -> bytes:
    """A DICOM file for ``answer``: itself when ``bytes``, made by Orthanc (``CreateDicom``) from a dict of tags.

    :param defaults: tags the file gets when the dict does not set them.
    """
    if isinstance(answer, (bytes, bytearray, memoryview)):
        return bytes(answer)
    if isinstance(answer, Mapping):
        tags = _as_text({**(defaults or {}), **answer})
        return bytes(_call("CreateDicom", json.dumps(tags), None, CreateDicomFlags.NONE))
    raise TypeError(f"{where}: {type(answer).__name__} is neither a dict of tags (name -> value) nor a DICOM "
                    "file (bytes)")


def _as_text(value: Any) -> Any:
    """Tags as ``CreateDicom`` takes them: every value text, a sequence a list of dicts of tags.

    Orthanc refuses a JSON number for a tag; DICOM writes dates, numbers and
    names as text anyway, so ``19700101``, a ``Decimal`` or pydicom's
    ``PersonName`` become their text, and ``None`` an empty value.
    """
    if isinstance(value, Mapping):
        return {str(name): _as_text(item) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_text(item) for item in value]
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


# --- C-FIND and worklists: the hooks ----------------------------------------------------------

class _FindService(NamedTuple):
    """One C-FIND-shaped SCP of the SDK, in its two variants (before and from Orthanc 1.12.10)."""

    hook: _hooks.Hook
    kind: str
    """The SCP's name in the metrics (``kind="find_scp"``)."""
    answers_type: str
    query_type: str
    params: tuple[Any, Any]
    """The registration's structure: the first variant's, the second's."""
    callbacks: tuple[Any, Any]
    """The C callback types."""
    services: tuple[Service, Service]


_FIND = _FindService(_hooks.find, "find_scp", "OrthancPluginFindAnswers", "OrthancPluginFindQuery",
                     (_sdk._OrthancPluginFindCallback, _sdk._OrthancPluginFindCallback2),
                     (_sdk.OrthancPluginFindCallback, _sdk.OrthancPluginFindCallback2),
                     (Service.RegisterFindCallback, Service.RegisterFindCallback2))
_WORKLIST = _FindService(_hooks.worklist, "worklist_scp", "OrthancPluginWorklistAnswers",
                         "OrthancPluginWorklistQuery",
                         (_sdk._OrthancPluginWorklistCallback, _sdk._OrthancPluginWorklistCallback2),
                         (_sdk.OrthancPluginWorklistCallback, _sdk.OrthancPluginWorklistCallback2),
                         (Service.RegisterWorklistCallback, Service.RegisterWorklistCallback2))

Serve = Callable[[Handle, Handle, Connection], None]
"""``serve(answers, query, connection)``: answers one request of a C-FIND-shaped SCP."""


def _register_find(service: _FindService, function: Callable[..., Any], by: str, where: str, serve: Serve) -> None:
    """Takes the SCP's one handler; registers the variant this Orthanc has, with the connection where it can."""

    def first(answers: Handle, query: Handle, issuer_aet: str, called_aet: str) -> None:
        serve(answers, query, Connection(issuer_aet, None, called_aet))

    def second(answers: Handle, query: Handle, connection: Handle) -> None:
        serve(answers, query, _read_connection(connection))

    def connect() -> None:
        newer = _capi.release >= CONNECTION_SINCE
        params = service.params[newer]()
        # The trampoline lends the objects for the call, expires them after, fails the
        # C-FIND when the handler raises (the modality gets a failure status), and counts both.
        stats = _metrics.handler(service.kind, _name(function))
        params.callback = _scp._find_trampoline(service.callbacks[newer], second if newer else first, where,
                                                service.answers_type, service.query_type, stats,
                                                with_connection=newer)
        _hooks.register(service.services[newer], params, by)

    service.hook.add(function, by, where, connect=connect)


# --- C-FIND --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FindQuery:
    """A C-FIND request, as the modality sent it."""

    level: str
    """Its QueryRetrieveLevel (0008,0052): ``"PATIENT"``, ``"STUDY"``, ``"SERIES"`` or ``"IMAGE"``
    (``""`` when the modality sent none)."""
    tags: dict[str, str]
    """Every tag of the request by name (``"PatientID"``, ``"StudyDate"``...; a private tag, or one the
    DICOM dictionary lacks, by number: ``"0011,0010"``) and its value as sent: what to match (``"DOE*"``,
    ``"20240101-20240131"``), or ``""`` for a tag the modality wants in the answers. QueryRetrieveLevel
    is one of them; a tag whose value is binary, which Orthanc does not give plugins as text, is left out."""
    connection: Connection
    """Who asks."""


def _tag_name(name: str | None, group: int, element: int, taken: Mapping[str, str]) -> str:
    """The key of a tag in :attr:`FindQuery.tags`: its name, or its numbers where a name would not say which it is.

    Orthanc names a tag its dictionary lacks "Unknown Tag & Data", and every
    private creator "PrivateCreator" whatever its group: private tags, and any
    name already given to another tag of the request, are keyed by number.
    """
    if name and name.isidentifier() and group % 2 == 0 and name not in taken:
        return name
    return f"{group:04x},{element:04x}"


def _read_find_query(query: Handle, connection: Connection) -> FindQuery:
    tags: dict[str, str] = {}
    for index in range(_call("GetFindQuerySize", query)):
        group, element = _call("GetFindQueryTag", query, index)
        name = _tag_name(_call("GetFindQueryTagName", query, index), group, element, tags)
        try:
            value = _call("GetFindQueryValue", query, index)
        except _capi.OrthancError:
            # A binary value (a tag of unknown VR) Orthanc gives plugins no text for: a key the
            # SCP cannot match on, which DICOM lets an SCP ignore, rather than a failed C-FIND.
            continue
        tags[name] = value or ""
    return FindQuery(tags.get("QueryRetrieveLevel", ""), tags, connection)


def find_scp(function: F) -> F:
    """Answers the C-FIND requests of modalities with the decorated ``handler(query)``.

    ``query`` is a :class:`FindQuery`: its level, its tags by name and the
    :class:`Connection` it came through. The handler returns or yields the
    matches, each a ``dict`` of tags (``{"PatientID": "P1", "PatientName":
    "Doe^Jane"}``; values as DICOM writes them, text) or a DICOM file
    (``bytes``); Orthanc makes each dict a DICOM answer, with the query's
    QueryRetrieveLevel unless the dict sets it. Nothing (``None``, ``[]``)
    answers "no match"::

        @find_scp
        def studies(query):
            if query.level != "STUDY":
                return []
            found = rest.post_json("/tools/find", {"Level": "Study", "Expand": True,
                                                   "Query": {"PatientID": query.tags.get("PatientID") or "*"}})
            return [{**study["PatientMainDicomTags"], **study["MainDicomTags"]} for study in found]

    It replaces Orthanc's own C-FIND SCP (worklist queries excepted: see
    :func:`worklist_scp`), and Orthanc sends the answers as given, without
    filtering them: the handler decides what matches. When the handler
    raises, or gives something other than such answers, the traceback goes
    to Orthanc's log with the handler's name, the modality gets a failure
    status, and Orthanc goes on serving. Handlers run on Orthanc's DICOM
    threads, where calling :mod:`orthanc_py.rest` is safe.

    On Orthanc 1.12.10 and later ``query.connection.remote_ip`` is the
    modality's address; on an older Orthanc it is ``None`` (the AE titles are
    there on every version).

    :raises RuntimeError: when the script has a C-FIND handler already (this
        decorator or ``orthanc.RegisterFindCallback``/``RegisterFindCallback2``).
    """
    where = _check("@find_scp", function)

    def serve(answers: Handle, query: Handle, connection: Connection) -> None:
        request = _read_find_query(query, connection)
        level = {"QueryRetrieveLevel": request.level} if request.level else None
        for answer in _answers(function(request), where):
            _call("FindAddAnswer", answers, _dicom(answer, where, level))

    _register_find(_FIND, function, "@find_scp", where, serve)
    return function


# --- worklists -----------------------------------------------------------------------------

class WorklistQuery:
    """A modality worklist request (a C-FIND of the worklist model), as the modality sent it.

    :meth:`matches` asks Orthanc while the handler runs; the other attributes
    stay readable after.
    """

    def __init__(self, query: Handle, connection: Connection) -> None:
        self._query = query
        self.connection = connection
        """Who asks (a :class:`Connection`)."""
        self.dicom: bytes = bytes(_call("WorklistGetDicomQuery", query))
        """The request as a DICOM data set (``bytes``; ``pydicom.dcmread(io.BytesIO(query.dicom))`` reads it)."""
        self.tags: dict[str, Any] = json.loads(_call("DicomBufferToJson", self.dicom, DicomToJsonFormat.HUMAN,
                                                     DicomToJsonFlags.NONE, 0))
        """The request's tags by name, as Orthanc's ``simplified-tags`` shows an instance's: text values
        (``""`` for a tag to return), a sequence as a list of such dicts
        (``query.tags["ScheduledProcedureStepSequence"][0]["Modality"]``)."""

    def matches(self, item: Mapping[str, Any] | bytes) -> bool:
        """Whether a worklist item matches the request, by Orthanc's worklist matching (as Orthanc's own SCP does).

        :param item: a DICOM file, or a dict of tags (made into one as answers are).
        :raises ExpiredError: after the handler has returned.
        """
        return bool(_call("WorklistIsMatch", self._query, _dicom(item, "WorklistQuery.matches()")))

    def __repr__(self) -> str:
        return f"<WorklistQuery from {self.connection.remote_aet}>"


def worklist_scp(function: F) -> F:
    """Answers the modality worklist requests (C-FIND of the worklist model) with the decorated ``handler(query)``.

    ``query`` is a :class:`WorklistQuery`: the request's tags, the request as
    a DICOM data set, the :class:`Connection` it came through, and
    :meth:`WorklistQuery.matches`, which applies Orthanc's worklist matching
    to an item. The handler returns or yields the items to send, each a
    ``dict`` of tags or a DICOM file (``bytes``); Orthanc keeps the tags the
    modality asked for::

        @worklist_scp
        def scheduled(query):
            for path in sorted(Path("/var/lib/worklists").glob("*.wl")):
                item = path.read_bytes()
                if query.matches(item):
                    yield item

    Only what the handler gives is sent: items it does not check with
    :meth:`~WorklistQuery.matches` are sent whatever the request. When the
    handler raises, or gives something other than such items, the traceback
    goes to Orthanc's log with the handler's name, the modality gets a
    failure status, and Orthanc goes on serving.

    On Orthanc 1.12.10 and later ``query.connection.remote_ip`` is the
    modality's address; on an older Orthanc it is ``None`` (the AE titles
    are there on every version).

    :raises RuntimeError: when the script has a worklist handler already
        (this decorator or ``orthanc.RegisterWorklistCallback``/``RegisterWorklistCallback2``).
    """
    where = _check("@worklist_scp", function)

    def serve(answers: Handle, query: Handle, connection: Connection) -> None:
        request = WorklistQuery(query, connection)
        for item in _answers(function(request), where):
            _call("WorklistAddAnswer", answers, query, _dicom(item, where))

    _register_find(_WORKLIST, function, "@worklist_scp", where, serve)
    return function


# --- C-MOVE --------------------------------------------------------------------------------

@dataclass(frozen=True)
class MoveRequest:
    """A C-MOVE request: what to send, and to which modality."""

    level: str
    """The QueryRetrieveLevel: ``"PATIENT"``, ``"STUDY"``, ``"SERIES"`` or ``"INSTANCE"`` (``""`` when absent)."""
    identifiers: dict[str, str]
    """The identifiers the modality sent, by name: among ``PatientID``, ``AccessionNumber``,
    ``StudyInstanceUID``, ``SeriesInstanceUID`` and ``SOPInstanceUID``, those it set."""
    target_aet: str
    """The AE title of the modality to send the instances to (the move destination)."""
    message_id: int
    """The request's message ID, which each C-STORE of the move quotes (Move Originator Message ID)."""
    connection: Connection
    """Who asks."""


class _Move:
    """A C-MOVE under way: the instances to send, how many are sent, where, and on whose behalf."""

    __slots__ = ("instances", "modality", "request", "sent")

    def __init__(self, request: MoveRequest, instances: list[str], modality: str) -> None:
        self.request = request
        self.instances = instances
        self.modality = modality
        self.sent = 0


_IDENTIFIERS = ("PatientID", "AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _modality_of(aet: str) -> str:
    """The name, in Orthanc's ``DicomModalities``, of the modality whose AE title is ``aet``."""
    modalities = rest.get_json("/modalities?expand")
    for name, modality in sorted(modalities.items()):
        if modality.get("AET") == aet:
            return str(name)
    raise LookupError(f"unknown move destination {aet!r}: no modality of Orthanc's DicomModalities has this "
                      "AE title")


def _instances(result: Any, where: str) -> list[str]:
    if result is None:
        return []
    if isinstance(result, (str, bytes, Mapping)):
        raise TypeError(f"{where} returned a {type(result).__name__}: return (or yield) the Orthanc IDs of the "
                        "instances to send, e.g. [instance_id]")
    instances = list(result) if isinstance(result, Iterable) else None
    if instances is None or not all(isinstance(instance, str) for instance in instances):
        raise TypeError(f"{where} returned {type(result).__name__}, not an iterable of Orthanc instance IDs (str)")
    return instances


def move_scp(function: F) -> F:
    """Carries out the C-MOVE requests of modalities: the decorated ``handler(request)`` says what to send.

    ``request`` is a :class:`MoveRequest`: the level, the identifiers, the
    move destination's AE title and the :class:`Connection`. The handler
    returns or yields the Orthanc IDs of the instances to send::

        @move_scp
        def retrieve(request):
            if not request.identifiers:
                return []  # no identifier would match every instance
            return rest.post_json("/tools/find", {"Level": "Instance", "Query": request.identifiers})

    The plugin then sends them one by one to the modality of Orthanc's
    ``DicomModalities`` whose AE title is the destination, with Orthanc's own
    C-STORE SCU (``POST /modalities/{name}/store``): each instance is a
    sub-operation, whose progress the modality sees. An instance that cannot
    be sent ends the move, which the modality is told finished with
    failures (Orthanc stops a C-MOVE at its first failed sub-operation); the
    reason goes to Orthanc's log. When the handler raises or returns
    something other than instance IDs, or when no modality of Orthanc's has
    the destination's AE title, the modality is told the C-MOVE failed, and
    the reason goes to the log.

    On Orthanc 1.12.10 and later ``request.connection.remote_ip`` is the
    modality's address; on an older Orthanc it is ``None`` (the AE titles
    are there on every version).

    :raises RuntimeError: when the script has a C-MOVE handler already (this
        decorator or ``orthanc.RegisterMoveCallback``/``2``/``3``).
    """
    where = _check("@move_scp", function)
    by = "@move_scp"

    def start(identifiers: dict[str, Any], target_aet: str, message_id: int, connection: Connection) -> _Move:
        # A destination Orthanc cannot reach fails the move before the handler does any work.
        modality = _modality_of(target_aet)
        request = MoveRequest(identifiers["Level"], {k: identifiers[k] for k in _IDENTIFIERS if identifiers[k]},
                              target_aet, message_id, connection)
        return _Move(request, _instances(function(request), where), modality)

    def first(request: dict[str, Any]) -> _Move:
        return start(request, request["TargetAET"], request["OriginatorID"],
                     Connection(request["OriginatorAET"], None, request["SourceAET"]))

    def second(level: int, patient_id: bytes | None, accession_number: bytes | None, study_uid: bytes | None,
               series_uid: bytes | None, sop_uid: bytes | None, connection_pointer: Any, target_aet: bytes | None,
               originator_id: int) -> int:
        identifiers = _scp._move_identifiers(level, patient_id, accession_number, study_uid, series_uid, sop_uid)
        connection = _scp._lend_connection(connection_pointer)
        try:
            seen = _read_connection(connection)
        finally:
            _capi.expire(connection)
        return _scp._start_move(start(identifiers, _decode(target_aet), originator_id, seen))

    def send(move: _Move) -> None:
        instance = move.instances[move.sent]
        move.sent += 1
        request = move.request
        rest.post(f"/modalities/{urllib.parse.quote(move.modality, safe='')}/store", {
            "Resources": [instance], "Synchronous": True,
            # The C-STORE says on whose behalf it comes, as Orthanc's own C-MOVE SCP's do.
            "MoveOriginatorAet": request.connection.remote_aet, "MoveOriginatorID": request.message_id,
        })

    def connect() -> None:
        wheres = (where, f"{where} (counting its instances)", f"{where} (sending an instance)",
                  f"{where} (ending the move)")
        # Each request is a delivery; a failure when the handler, the destination or a C-STORE fails.
        stats = _metrics.handler("move_scp", _name(function))
        params: Any
        if _capi.release >= CONNECTION_SINCE:
            params = _sdk._OrthancPluginMoveCallback2()
            _scp._move_callbacks(params, _sdk.OrthancPluginMoveCallback2, second, _count, send, None, wheres, stats)
            _hooks.register(Service.RegisterMoveCallback2, params, by)
        else:
            params = _sdk._OrthancPluginMoveCallback()
            _scp._move_callbacks(params, _sdk.OrthancPluginMoveCallback, _scp._c_create_v1(first), _count, send,
                                 None, wheres, stats)
            _hooks.register(Service.RegisterMoveCallback, params, by)

    _hooks.move.add(function, by, where, connect=connect)
    return function


def _count(move: _Move) -> int:
    return len(move.instances)
