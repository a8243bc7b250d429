# SPDX-License-Identifier: GPL-3.0-or-later
"""Key-value stores in Orthanc's database: a named :class:`Store` behaves like a ``dict`` of ``str`` to ``bytes``.

.. code-block:: python

   from orthanc_py import kv, on_change, ChangeType

   seen = kv.Store("my-plugin.seen")

   @on_change(ChangeType.STABLE_STUDY)
   def remember(change):
       seen[change.resource_id] = b"1"

A store lives in Orthanc's index (Orthanc 1.12.8 and later), not in the
script: it survives restarts of Orthanc, and every node of a cluster whose
database back-end has key-value stores sees the same one. The ``orthanc``
module reaches the same stores (``orthanc.GetKeyValue(name, key)``...).

- Keys are ``str``; values are ``bytes`` (a ``bytearray`` or a
  ``memoryview`` is stored as its bytes). Text is refused rather than
  encoded, so that what is read back equals what was stored: store
  ``text.encode()`` and ``decode()`` what you read. Orthanc keeps no empty
  value.
- Each operation is one call to Orthanc's database, atomic by itself.
  Nothing spans two: ``setdefault()``, ``pop()`` or ``store[k] = store[k] + x``
  read and then write, and two nodes (or two threads) doing so at once may
  both read the old value; the last write wins. For work shared between
  nodes, use :mod:`orthanc_py.queue` or :mod:`orthanc_py.cluster`.
- Iterating walks the keys in lexicographical order; ``len()`` walks them
  all too. Deleting the current key while iterating is safe.
- A store cannot be used while the script loads (Orthanc opens its
  database after starting its plugins): from a route, an event handler or
  ``@on_startup``. Making one (``kv.Store(name)``) asks nothing of Orthanc
  and may be done at the top of the script.

On an Orthanc without key-value stores (older than 1.12.8, or a database
back-end without them), the first operation raises
:class:`StoreUnavailableError`, which says what to change.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, MutableMapping, ValuesView
from typing import Any, TypeVar, overload

from ._stores import KEY_VALUE_STORES, StoreUnavailableError, call, check_key, check_name, check_value

__all__ = ["Store", "StoreUnavailableError"]

_D = TypeVar("_D")


class Store(MutableMapping[str, bytes]):
    """The key-value store ``name`` of Orthanc's database, as a mutable mapping of ``str`` to ``bytes``.

    Two :class:`Store` objects of one name are the same store; the name is
    shared by every script and plugin of this Orthanc (and of the nodes of a
    cluster): prefix it with your plugin's name.

    :param name: the store's name: a non-empty ``str``.
    :raises TypeError: when ``name`` is not a ``str``.
    :raises ValueError: when it is empty or holds a NUL character.
    """

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = check_name("key-value store", name)

    @property
    def name(self) -> str:
        """The store's name."""
        return self._name

    def __repr__(self) -> str:
        return f"orthanc_py.kv.Store({self._name!r})"

    def _get(self, key: str) -> bytes | None:
        value, found = call(KEY_VALUE_STORES, "GetKeyValue", self._name, check_key(key))
        return bytes(value) if found else None

    def __getitem__(self, key: str) -> bytes:
        """The value of ``key``.

        :raises KeyError: when the store has no such key.
        """
        value = self._get(key)
        if value is None:
            raise KeyError(key)
        return value

    @overload
    def get(self, key: str, /) -> bytes | None: ...
    @overload
    def get(self, key: str, /, default: bytes | _D) -> bytes | _D: ...

    def get(self, key: str, /, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when the store has no such key (one call to Orthanc)."""
        value = self._get(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._get(key) is not None

    def __setitem__(self, key: str, value: bytes) -> None:
        """Stores ``value`` under ``key``, replacing what was there.

        :raises TypeError: for a key that is not a ``str``, or a value that is not bytes (``str`` included).
        :raises ValueError: for an empty value, which Orthanc does not keep.
        """
        data = check_value(f"{self!r}[{key!r}] = ...", value)
        call(KEY_VALUE_STORES, "StoreKeyValue", self._name, check_key(key), data)

    def __delitem__(self, key: str) -> None:
        """Deletes ``key``.

        :raises KeyError: when the store has no such key (:meth:`discard` does not check).
        """
        if self._get(key) is None:
            raise KeyError(key)
        self.discard(key)

    def discard(self, key: str) -> None:
        """Deletes ``key`` if the store has it, in one call to Orthanc; no error when it has not."""
        call(KEY_VALUE_STORES, "DeleteKeyValue", self._name, check_key(key))

    def _walk(self, values: bool) -> Iterator[tuple[str, bytes]]:
        """Each ``(key, value)`` in the order of the keys; the values are read only when ``values`` (else ``b""``).

        Orthanc's iterator is freed when the walk ends, is abandoned, or fails.
        """
        iterator = call(KEY_VALUE_STORES, "CreateKeysValuesIterator", self._name)
        if iterator is None:
            return
        try:
            while call(KEY_VALUE_STORES, "KeysValuesIteratorNext", iterator):
                key = call(KEY_VALUE_STORES, "KeysValuesIteratorGetKey", iterator)
                value = call(KEY_VALUE_STORES, "KeysValuesIteratorGetValue", iterator) if values else b""
                yield str(key or ""), bytes(value)
        finally:
            iterator.close()

    def __iter__(self) -> Iterator[str]:
        """The keys, in lexicographical order, read from Orthanc as the iteration goes."""
        for key, _ in self._walk(values=False):
            yield key

    def __len__(self) -> int:
        """How many keys the store has: they are all walked over to count them."""
        return sum(1 for _ in self._walk(values=False))

    def items(self) -> ItemsView[str, bytes]:
        """The ``(key, value)`` pairs, each read once as the iteration goes."""
        return _Items(self)

    def values(self) -> ValuesView[bytes]:
        """The values, in the order of their keys, read as the iteration goes."""
        return _Values(self)

    def clear(self) -> None:
        """Deletes every key of the store, walking over it once."""
        for key, _ in self._walk(values=False):
            self.discard(key)


class _Items(ItemsView[str, bytes]):
    """``store.items()``: one walk over the store, not one call per key."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return self._store._walk(values=True)


class _Values(ValuesView[bytes]):
    """``store.values()``: one walk over the store, not one call per key."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._store = store

    def __iter__(self) -> Iterator[bytes]:
        for _, value in self._store._walk(values=True):
            yield value
