# SPDX-License-Identifier: GPL-3.0-or-later
"""Key-value stores and queues: Orthanc's own, kept in its database (Orthanc 1.12.8 and later).

A store or a queue is named by a text of the script's choosing (``storeId``,
``queueId``); what it holds lives in Orthanc's index, so it survives a restart
and, with a shared database back-end that supports them, is seen by every
node. Keys are texts, values are bytes. The functions take the argument lists
and give the results of the official plugin 7.1, measured by running it:

- ``GetKeyValue()`` and ``DequeueValue()`` return ``bytes``, or ``None`` when
  there is nothing; ``ReserveQueueValue()`` returns ``(value, valueId)``, or
  ``(None, None)``;
- a refusal by Orthanc of ``GetKeyValue``, ``DequeueValue``, ``GetQueueSize``,
  ``ReserveQueueValue`` or ``KeysValuesIterator.Next`` comes out of the
  official plugin as a ``TypeError``; here it is an ``orthanc.OrthancException``
  that is a ``TypeError`` too, so that either ``except`` clause catches it;
- the others raise ``orthanc.OrthancException`` with Orthanc's code.

On an Orthanc older than a function, calling it raises
:class:`~orthanc_py._calls.SdkVersionError`, which names the version it needs.
Orthanc itself refuses an empty store or queue name and an empty value
(``ParameterOutOfRange``), and a call made while the script loads, before its
database is open (``DatabaseNotInitialized``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, Union

from .. import _capi, _sdk_calls
from .._calls import Handle

__all__ = [
    "AcknowledgeQueueValue",
    "CreateKeysValuesIterator",
    "DeleteKeyValue",
    "DequeueValue",
    "EnqueueValue",
    "GetKeyValue",
    "GetQueueSize",
    "KeysValuesIterator",
    "ReserveQueueValue",
    "StoreKeyValue",
]

Value = Union[bytes, bytearray, memoryview, str]
"""What a value may be given as: bytes, or a text (stored as UTF-8), or any other buffer."""


class RefusedError(_capi.OrthancError, TypeError):
    """Orthanc refused a call that the official plugin reports as ``TypeError``.

    Both an ``orthanc.OrthancException`` (``args`` are ``(code, description)``)
    and a ``TypeError``: scripts written for the official plugin catch the
    latter, scripts written for orthanc_py the former.
    """


_T = TypeVar("_T")


def _refusals_as_type_errors(call: Callable[[], _T]) -> _T:
    try:
        return call()
    except _capi.SdkVersionError:
        raise  # this Orthanc lacks the function: that error says which version has it
    except _capi.OrthancError as error:
        raise RefusedError(error.code, error.description) from None


# --- key-value stores -------------------------------------------------------------------------

def StoreKeyValue(storeId: str, key: str, value: Value, /) -> None:
    """Stores ``value`` under ``key`` in the store ``storeId``, replacing what was there.

    :param storeId: the store's name (not empty).
    :param key: the key (may be empty).
    :param value: ``bytes``, or ``str`` (stored as UTF-8), or another buffer; not empty.
    :raises OrthancException: ``ParameterOutOfRange`` for an empty name or value.
    """
    _sdk_calls.call("StoreKeyValue", storeId, key, value)


def GetKeyValue(storeId: str, key: str, /) -> bytes | None:
    """The value stored under ``key`` in the store ``storeId``, or ``None`` when there is none.

    :raises OrthancException: (a ``TypeError`` too) when Orthanc refuses the call.
    """
    value, found = _refusals_as_type_errors(lambda: _sdk_calls.call("GetKeyValue", storeId, key))
    return bytes(value) if found else None


def DeleteKeyValue(storeId: str, key: str, /) -> None:
    """Deletes ``key`` from the store ``storeId``; a key that is not there is no error."""
    _sdk_calls.call("DeleteKeyValue", storeId, key)


class KeysValuesIterator(Handle):
    """Walks over the keys and values of a store, in the lexicographical order of the keys.

    Made by :func:`CreateKeysValuesIterator`. Call :meth:`Next` first: it moves
    to the next pair and says whether there was one; then :meth:`GetKey` and
    :meth:`GetValue` read it. Orthanc reads the store in pages, from the last
    key it gave: deleting the current key while walking is safe, and a key
    added after the current one is seen.
    """

    c_type_name = "OrthancPluginKeysValuesIterator"

    def Next(self) -> bool:
        """Moves to the next pair; returns ``False`` once there is none.

        :raises OrthancException: (a ``TypeError`` too) ``BadSequenceOfCalls``
            when called again after it returned ``False``.
        """
        return bool(_refusals_as_type_errors(lambda: _sdk_calls.call("KeysValuesIteratorNext", self)))

    def GetKey(self) -> str | None:
        """The key of the current pair; ``None`` before the first :meth:`Next` and after the last."""
        try:
            key: str | None = _sdk_calls.call("KeysValuesIteratorGetKey", self)
        except _capi.SdkVersionError:
            raise
        except _capi.OrthancError:
            return None  # no current pair: the SDK gives NULL, which the official plugin returns as None
        return key

    def GetValue(self) -> bytes:
        """The value of the current pair.

        :raises OrthancException: ``BadSequenceOfCalls`` before the first :meth:`Next` and after the last.
        """
        return bytes(_sdk_calls.call("KeysValuesIteratorGetValue", self))

    # The SDK's own names, for scripts written from its documentation: the same calls.
    KeysValuesIteratorNext = Next
    KeysValuesIteratorGetKey = GetKey
    KeysValuesIteratorGetValue = GetValue


def CreateKeysValuesIterator(storeId: str, /) -> KeysValuesIterator:
    """An iterator over the pairs of the store ``storeId`` (see :class:`KeysValuesIterator`).

    The script owns it: it is freed when collected, or at once with
    ``close()`` or a ``with`` block.
    """
    iterator: KeysValuesIterator = _sdk_calls.call("CreateKeysValuesIterator", storeId)
    return iterator


# --- queues -------------------------------------------------------------------------------------

def EnqueueValue(queueId: str, value: Value, /) -> None:
    """Appends ``value`` (not empty: ``bytes``, ``str`` stored as UTF-8, or another buffer) to the queue ``queueId``."""
    _sdk_calls.call("EnqueueValue", queueId, value)


def DequeueValue(queueId: str, origin: int, /) -> bytes | None:
    """Takes a value out of the queue ``queueId`` for good; ``None`` when there is none to take.

    :param origin: :class:`orthanc.QueueOrigin` ``FRONT`` (the oldest value) or ``BACK`` (the newest).
        Values reserved by :func:`ReserveQueueValue` are skipped.
    :raises OrthancException: (a ``TypeError`` too) for another ``origin``.
    """
    value, found = _refusals_as_type_errors(lambda: _sdk_calls.call("DequeueValue", queueId, origin))
    return bytes(value) if found else None


def GetQueueSize(queueId: str, /) -> int:
    """How many values the queue ``queueId`` holds, reserved ones included; 0 for a queue never used."""
    size: int = _refusals_as_type_errors(lambda: _sdk_calls.call("GetQueueSize", queueId))
    return size


def ReserveQueueValue(queueId: str, origin: int, releaseTimeout: int, /) -> tuple[bytes, int] | tuple[None, None]:
    """Reserves a value of the queue ``queueId``: no one else gets it until it is acknowledged or expires.

    The value stays in the queue: :func:`AcknowledgeQueueValue` with its
    ``valueId`` removes it; otherwise, ``releaseTimeout`` seconds later, it
    is available again (with the same ``valueId``), to this consumer or another.

    :param origin: :class:`orthanc.QueueOrigin` ``FRONT`` or ``BACK``.
    :param releaseTimeout: seconds, at least 1.
    :returns: ``(value, valueId)``, or ``(None, None)`` when no value is available.
    :raises OrthancException: (a ``TypeError`` too) for a timeout of 0 or another ``origin``.
    """
    value, found, value_id = _refusals_as_type_errors(
        lambda: _sdk_calls.call("ReserveQueueValue", queueId, origin, releaseTimeout))
    if not found:
        return None, None
    return bytes(value), int(value_id)


def AcknowledgeQueueValue(queueId: str, valueId: int, /) -> None:
    """Removes a reserved value from the queue ``queueId`` for good: it was handled.

    :raises OrthancException: ``UnknownResource`` when no reservation has that
        ``valueId`` any more: it was acknowledged already, or its timeout ran
        out (the value is then handed out again).
    """
    _sdk_calls.call("AcknowledgeQueueValue", queueId, valueId)
