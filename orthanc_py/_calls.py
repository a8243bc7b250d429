# SPDX-License-Identifier: GPL-3.0-or-later
"""What the generated SDK calls (``_sdk_calls``) are made of: conversions, checks and Orthanc's objects.

``tools/gen_sdk.py`` writes one Python function per SDK function, its calling
convention classified once, at generation time. Those functions call the
helpers here, each doing one conversion with the checks that keep a script
from crashing Orthanc:

- a ``const char*`` takes ``str`` (or ``bytes``): no NUL, which would cut it
  short in C; no CR or LF where it becomes part of an HTTP header;
- a ``const void*`` with its size takes ``bytes``, ``str`` or any buffer, the
  size derived and checked against the range of its C type;
- C integers are range-checked (ctypes would silently wrap ``-1`` to
  ``2**32 - 1``), image buffers checked against ``pitch * height``;
- Orthanc's objects (``OrthancPluginImage*``...) are :class:`Handle` objects:
  owned ones free themselves, lent ones expire when their callback returns;
- a returned ``char*`` or memory buffer is copied, then freed.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, ClassVar, TypeVar

from . import _capi, _sdk

INTEGER_TYPES = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "uint8_t": ctypes.c_uint8,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "int64_t": ctypes.c_int64,
}


PLUGIN_NAME = b"orthanc_py"
"""What the loader's ``OrthancPluginGetName()`` answers."""

SdkVersionError = _capi.SdkVersionError


_H = TypeVar("_H", bound="Handle")


class Handle(_capi.Borrowed):
    """An object of Orthanc's (an image, a DICOM instance...) held through a C pointer.

    Objects that Orthanc created for the script (``owned``) are freed with the
    matching ``OrthancPluginFree...`` when closed, collected, or at the end of
    a ``with`` block; objects Orthanc lends to a callback are not, and are
    expired when the callback returns (:func:`orthanc_py._capi.expire`).
    """

    c_type_name: ClassVar[str] = ""
    """The opaque C type, e.g. ``"OrthancPluginImage"``; set by subclasses."""

    after_callback: ClassVar[str] = "copy what you need from it while the callback runs"
    """What to do instead of keeping a lent object past its callback (said in the error)."""

    _expired: str | None = None  # the error message, once Orthanc has taken the object back
    # A lent object: the thread of the callback that lent it. Other threads take its lease
    # for each call, and the end of the callback waits for the lease (see _take_lease).
    _owner: int | None = None
    _lease: Any | None = None  # a threading.RLock, made when another thread first uses the object
    _shared = False  # another thread has used the object: expiring takes the lease

    def __init__(self, address: int, owned: bool = False) -> None:
        self._address = address
        self._owned = owned

    @classmethod
    def lent(cls: type[_H], address: int) -> _H:
        """Wraps an object Orthanc lends to the running callback: never freed by Python, expired when it returns.

        Another thread may be inside an SDK call on the object when the
        callback returns: expiring waits for that call to end (the lease),
        so Orthanc never frees the object under it.
        """
        handle = cls(address)
        handle._owner = threading.get_ident()
        return handle

    def _take_lease(self) -> Any | None:
        """Takes the lease when a thread other than the lending callback's uses the object; returns it, or None.

        The callback's own thread needs none: the object expires on that
        thread, after the handler, so never during one of its calls. The
        caller releases what this returns once Orthanc is done with the object.
        """
        owner = self._owner
        if owner is None or owner == threading.get_ident():
            return None
        lease = _capi.lease_of(self)
        # Shared first, then taken: _expire() sets "expired" first, then reads
        # "shared"; whichever runs first, the address check after this sees it.
        self._shared = True
        lease.acquire()
        return lease

    @property
    def address(self) -> int:
        """The C pointer, as an integer.

        :raises ExpiredError: when Orthanc lent the object to a callback that has returned.
        :raises ValueError: when the object was closed.
        """
        address = self._address
        if not address or self._expired is not None:
            if self._expired is not None:
                raise _capi.ExpiredError(self._expired or self._expired_message())
            raise ValueError(f"this {type(self).__name__} was closed")
        return address

    def _expire(self, message: str | None = None) -> None:
        # On every request's path: the message is only written if it is ever needed.
        self._expired = message or ""  # from now on, new calls refuse
        if not self._shared:
            self._address = 0
            return
        with self._lease:  # type: ignore[union-attr]  # waits for a call another thread is making with it
            self._address = 0

    def _expired_message(self) -> str:
        name = f"{type(self).__module__}.{type(self).__name__}".replace("orthanc_py._calls.", "")
        return (f"this {name} was lent by Orthanc to a callback that has returned, and Orthanc has freed it: "
                f"{self.after_callback}")

    def close(self) -> None:
        """Frees the Orthanc object now, if the script owns it."""
        owned, self._owned = self._owned, False  # whichever thread closes first frees it
        if owned and self._address and _capi.is_attached():
            free = FREE_CALLS.get(self.c_type_name)
            if free is not None:
                try:
                    free(self)
                finally:
                    self._address = 0
        self._address = 0

    def detach(self) -> int:
        """Forgets the Orthanc object without freeing it; returns its address.

        For an object that passes to Orthanc (which frees it from now on), or
        one that was never the script's to free.
        """
        address, self._owned, self._address = self._address, False, 0
        return address

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - not contextlib: at interpreter shut-down, modules may already be gone
            self.close()
        except Exception:
            pass


# The generated function that frees each opaque type (``OrthancPluginFreeImage``...), by C type: filled
# by ``_sdk_calls``, which makes every object the script owns.
FREE_CALLS: dict[str, Callable[[Handle], None]] = {}

# Python classes that wrap each opaque type; the Pythonic layers register theirs.
HANDLE_CLASSES: dict[str, type[Handle]] = {}


def handle_class(c_type_name: str) -> type[Handle]:
    """The :class:`Handle` subclass registered for an opaque C type (a plain one if none)."""
    cls = HANDLE_CLASSES.get(c_type_name)
    if cls is None:
        cls = type(c_type_name, (Handle,), {"c_type_name": c_type_name})
        HANDLE_CLASSES[c_type_name] = cls
    return cls


def _to_bytes(value: Any, what: str, limit: int | None = None) -> bytes:
    """``bytes``, ``str`` (sent as UTF-8) or any buffer (``bytearray``, ``memoryview``, ``mmap``...) as bytes.

    :param limit: the largest size the C side can be told (its size field's
        range); checked before anything is copied.
    """
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8")
    else:
        try:
            view = memoryview(value)
        except TypeError:
            raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}") from None
        if limit is not None and view.nbytes > limit:
            raise _too_large(what, view.nbytes, limit)
        return view.tobytes()
    if limit is not None and len(data) > limit:
        raise _too_large(what, len(data), limit)
    return data


def buffer_size(value: Any, what: str) -> int:
    """How many bytes :func:`_to_bytes` would make of ``value``, without copying it."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    try:
        return memoryview(value).nbytes
    except TypeError:
        raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}") from None


def _too_large(what: str, size: int, limit: int) -> ValueError:
    return ValueError(f"{what} holds {size} bytes, more than Orthanc can take here ({limit} bytes: "
                      f"its size is a {limit.bit_length()}-bit field); send it in pieces")


def _to_c_string(value: Any, what: str) -> bytes | None:
    """A ``str`` (or ``bytes``) for a ``const char*``; ``None`` is NULL.

    :raises ValueError: when it holds a NUL character, which would cut it short in C.
    """
    if value is None:
        return None
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if b"\0" in data:
        # C would read up to the NUL: "/studies/ID\0x" would act on "/studies/ID".
        raise ValueError(f"{what} holds a NUL character (\\0), which C strings cannot hold: {value!r}")
    return data


def _required(convert: Callable[[Any, str], bytes | None]) -> Callable[[Any, str], bytes]:
    """``convert``, refusing ``None`` (NULL) where Orthanc needs a text."""
    def required(value: Any, what: str) -> bytes:
        if value is None:
            raise TypeError(f"{what} must be str, not None")
        return convert(value, what)  # type: ignore[return-value]

    return required


_to_required_c_string = _required(_to_c_string)
"""Like :func:`_to_c_string`, where Orthanc does not accept NULL."""


def _to_header_text(value: Any, what: str) -> bytes | None:
    """A C string that becomes part of an HTTP header: no CR or LF (header injection)."""
    data = _to_c_string(value, what)
    if data is not None and (b"\r" in data or b"\n" in data):
        raise ValueError(f"{what} holds a line break (CR or LF), which would end the HTTP header "
                         f"and start another: {value!r}")
    return data


def _to_string_pairs(value: Any, what: str) -> list[tuple[bytes, bytes]]:
    """A ``dict`` (or pairs) of ``str`` for C arrays of keys and values: HTTP headers, so no CR or LF."""
    if value is None:
        return []
    if hasattr(value, "items"):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:  # any other iterable (a buffer of 4 GiB...) is no mapping: refused before it is walked
        raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__}")
    pairs = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__}")
        key, text = item
        if not isinstance(key, (str, bytes)) or not isinstance(text, (str, bytes)):
            raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__}")
        pairs.append((_to_header_text(key, what) or b"", _to_header_text(text, what) or b""))
    return pairs


def _to_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(value.__index__())
        except AttributeError:
            raise TypeError(f"{what} must be int, not {type(value).__name__}") from None
    return int(value)


def _int_range(c_type: Any) -> tuple[int, int]:
    """The values a ctypes integer type holds: ``c_uint32`` -> ``(0, 2**32 - 1)``."""
    bits = ctypes.sizeof(c_type) * 8
    if c_type(-1).value == -1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _int_converter(base: str) -> Callable[[Any, str], int]:
    """Converts to ``int`` and checks the C type's range: ctypes would silently wrap ``-1`` to ``2**32 - 1``."""
    # C enums are ints; some are bit flags (DicomToJsonFlags), so any int32 may be meant.
    low, high = _int_range(INTEGER_TYPES.get(base, ctypes.c_int32))
    c_name = base if base in INTEGER_TYPES else f"{base} (a 32-bit C enum)"

    def convert(value: Any, what: str) -> int:
        number = _to_int(value, what)
        if not low <= number <= high:
            raise ValueError(f"{what} is {number}, out of the range of its C type {c_name}: {low} to {high}")
        return number

    return convert


def _bytes_per_pixel() -> dict[int, int]:
    """Bytes per pixel of each pixel format, from the bits in its name (``RGB24`` -> 3); not ``Unknown``."""
    sizes = {}
    for member in _sdk.OrthancPluginPixelFormat:
        digits = "".join(c for c in member.name if c.isdigit())
        if digits:
            sizes[int(member)] = int(digits) // 8
    return sizes


BYTES_PER_PIXEL = _bytes_per_pixel()

# The image services that read (or, for an accessor, keep) ``pitch * height``
# bytes from a caller's buffer, whatever its length.
_IMAGE_ARGUMENTS = ("format", "width", "height", "pitch", "buffer")


def check_image_buffer(what: str, format: int, width: int, height: int, pitch: int, size: int) -> None:
    """Checks that a buffer of ``size`` bytes holds the image Orthanc will read from it.

    Orthanc reads ``width * bytesPerPixel`` bytes from each of ``height``
    rows, ``pitch`` bytes apart, and trusts the caller: a short buffer is a
    read past its end.

    :raises ValueError: naming the argument at fault and the size needed.
    """
    per_pixel = BYTES_PER_PIXEL.get(format)
    if per_pixel is None:
        known = ", ".join(f"{m.name}={int(m)}" for m in _sdk.OrthancPluginPixelFormat if int(m) in BYTES_PER_PIXEL)
        raise ValueError(f"{what}: format {format} is not a pixel format whose size is known ({known})")
    for name, value in (("width", width), ("height", height), ("pitch", pitch)):
        if value < 0:
            raise ValueError(f"{what}: {name} is {value}; it cannot be negative")
    row = width * per_pixel
    if pitch < row:
        raise ValueError(f"{what}: pitch is {pitch} bytes, less than a row of {width} pixels of "
                         f"{per_pixel} byte(s) ({row} bytes)")
    needed = pitch * (height - 1) + row if height else 0
    if size < needed:
        raise ValueError(f"{what}: buffer holds {size} bytes, but {height} rows of pitch {pitch} need "
                         f"{needed} bytes (pitch * (height - 1) + width * {per_pixel})")


def _handle_converter(c_type_name: str, nullable: bool = False) -> Callable[[Any, str], int]:
    def convert(value: Any, what: str) -> int:
        if isinstance(value, Handle) and value.c_type_name == c_type_name:
            return value.address
        if value is None and nullable:
            return 0  # NULL: the SDK takes it where the object is optional (CreateDicom's pixelData)
        expected = handle_class(c_type_name).__name__
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__}")

    return convert


# --- what the generated functions of _sdk_calls call -------------------------------------
#
# Each takes the text of its error message ready-made (``what``): it costs
# nothing until an argument is refused.

def integer(value: Any, what: str, low: int, high: int, c_name: str) -> int:
    """An argument for a C integer: an ``int`` (or anything with ``__index__``) within ``low..high``.

    ctypes would silently wrap ``-1`` to ``2**32 - 1``: out of range is refused.
    """
    number = _to_int(value, what)
    if not low <= number <= high:
        raise ValueError(f"{what} is {number}, out of the range of its C type {c_name}: {low} to {high}")
    return number


def float_value(value: Any, what: str) -> float:
    """An argument for a C ``float``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{what} must be float, not {type(value).__name__}")


def text(value: Any, what: str) -> bytes:
    """An argument for a ``const char*`` Orthanc reads: ``str`` (sent as UTF-8) or ``bytes``, no NUL, not ``None``."""
    if type(value) is str:
        data = value.encode("utf-8")
        if "\0" not in value:
            return data
    if value is None:
        raise TypeError(f"{what} must be str, not None")
    return _to_c_string(value, what)  # type: ignore[return-value]


def text_or_null(value: Any, what: str) -> bytes | None:
    """Like :func:`text`, where the header documents NULL as meaningful: ``None`` is NULL."""
    return None if value is None else text(value, what)


def header_text(value: Any, what: str) -> bytes:
    """A C string that becomes part of an HTTP header: no CR or LF (header injection), not ``None``."""
    if value is None:
        raise TypeError(f"{what} must be str, not None")
    return _to_header_text(value, what)  # type: ignore[return-value]


def header_text_or_null(value: Any, what: str) -> bytes | None:
    return _to_header_text(value, what)


def data(value: Any, what: str, limit: int | None = None) -> bytes:
    """An argument for a ``const void*`` and its size: ``bytes``, ``str`` or any buffer; at most ``limit`` bytes."""
    if type(value) is bytes and (limit is None or len(value) <= limit):
        return value
    return _to_bytes(value, what, limit)


def address(value: Any, c_type_name: str, what: str) -> int:
    """The address of an Orthanc object given as argument; refuses other types, closed and expired objects."""
    if isinstance(value, Handle) and value.c_type_name == c_type_name:
        return value.address
    raise TypeError(f"{what} must be {handle_class(c_type_name).__name__}, not {type(value).__name__}")


def address_or_null(value: Any, c_type_name: str, what: str) -> int:
    """Like :func:`address`, where the SDK takes NULL (CreateDicom's pixelData): ``None`` is 0."""
    return 0 if value is None else address(value, c_type_name, what)


def string_pairs(value: Any, what: str) -> tuple[int, Any, Any]:
    """A mapping of str to str (HTTP headers) as C arrays: ``(count, keys, values)``."""
    pairs = _to_string_pairs(value, what)
    array = ctypes.c_char_p * len(pairs)
    return len(pairs), array(*(k for k, _ in pairs)), array(*(v for _, v in pairs))


def check_image(what: str, format: Any, width: Any, height: Any, pitch: Any, buffer: Any) -> None:
    """Checks the buffer of an image service against ``pitch * height``, before anything is copied."""
    low, high = _int_range(ctypes.c_uint32)
    columns, rows, row_bytes = (integer(value, f"{what} argument '{name}'", low, high, "uint32_t")
                                for name, value in (("width", width), ("height", height), ("pitch", pitch)))
    kind = integer(format, f"{what} argument 'format'", *_int_range(ctypes.c_int32), "a 32-bit C enum")
    check_image_buffer(what, kind, columns, rows, row_bytes, buffer_size(buffer, f"{what} argument 'buffer'"))


def size_error(what: str, size_name: str, size: int, text_name: str, text: bytes) -> ValueError:
    return ValueError(f"{what} argument '{size_name}' is {size}, but '{text_name}' holds {len(text)} bytes: "
                      f"give len({text_name}) (in UTF-8 bytes) or less")


def check_command_line_index(what: str, argument: int, arguments_count: Callable[[], int]) -> None:
    """GetCommandLineArgument past the end: Orthanc 1.10 lets a C++ exception escape, so it is refused here."""
    count = int(arguments_count())
    if argument >= count:
        raise IndexError(f"{what} argument 'argument' is {argument}, but Orthanc has {count} "
                         f"command-line argument(s): ask for 0 to {count - 1} (GetCommandLineArgumentsCount())")


def too_old(c_name: str, since: tuple[int, int, int]) -> SdkVersionError:
    """The error of a function newer than the running Orthanc."""
    need = ".".join(map(str, since))
    return SdkVersionError(
        _capi.ErrorCode.UnknownPluginService,
        f"{c_name[len('OrthancPlugin'):]}() needs Orthanc {need} or newer; this Orthanc is {_capi.orthanc_version()}",
    )


class TextOut(ctypes.Union):
    """A ``char*`` Orthanc writes: read as ``bytes`` up to its NUL (``text``), or as an address (``address``).

    One object for both views: the copy and the free cost one attribute read each.
    """

    _fields_ = [("text", ctypes.c_char_p), ("address", ctypes.c_void_p)]


def take_text(out: TextOut) -> str | None:
    """A ``char*`` Orthanc allocated for the plugin: copied, then freed."""
    return _capi.take_text(out.address)


def static_text(out: TextOut) -> str | None:
    """A ``const char*`` Orthanc keeps (a static description, a field of its own): copied, not freed."""
    text = out.text
    return None if text is None else text.decode("utf-8", "replace")


def struct_dict(struct: Any) -> dict[str, Any]:
    """A filled out-struct (``OrthancPluginDictionaryEntry``...) as ``{field: value}``."""
    return {entry[0]: getattr(struct, entry[0]) for entry in struct._fields_}


def owned(c_type_name: str, address: int | None) -> Handle | None:
    """An object Orthanc created for the script: a :class:`Handle` that frees it, or ``None`` for NULL."""
    return None if not address else handle_class(c_type_name)(address, owned=True)


def wire(params: type[ctypes.Structure], bytes_fields: tuple[str, ...] = ()) -> type[ctypes.Structure]:
    """The layout of ``params`` with pointer fields taking plain addresses, or ``bytes`` for ``bytes_fields``.

    Same offsets and size as ``params`` (checked): the generated calls fill
    it with integers and ``bytes`` directly, without building ctypes pointers.
    Nested structs get their own wire layout (``"outer.inner"`` names a
    nested bytes field).
    """
    fields = []
    c_type: Any
    for name, c_type, *bits in params._fields_:
        if isinstance(c_type, type) and issubclass(c_type, ctypes.Structure):
            inner = tuple(f[len(name) + 1:] for f in bytes_fields if f.startswith(name + "."))
            c_type = wire(c_type, inner)
        elif _is_pointer(c_type):
            c_type = ctypes.c_char_p if name in bytes_fields else ctypes.c_void_p
        fields.append((name, c_type, *bits))
    made = type(params.__name__, (ctypes.Structure,), {"_fields_": fields})
    for name, *_ in fields:
        if getattr(made, name).offset != getattr(params, name).offset:
            raise AssertionError(f"wire layout of {params.__name__} differs at field {name}")
    if ctypes.sizeof(made) != ctypes.sizeof(params):
        raise AssertionError(f"wire layout of {params.__name__} differs in size")
    return made


def _is_pointer(c_type: Any) -> bool:
    return (c_type in (ctypes.c_void_p, ctypes.c_char_p)
            or (isinstance(c_type, type) and issubclass(c_type, (ctypes._Pointer, ctypes._CFuncPtr))))  # type: ignore[attr-defined]
