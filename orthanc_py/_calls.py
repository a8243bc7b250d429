# SPDX-License-Identifier: GPL-3.0-or-later
"""Calls any SDK function with Python values, from the facts in ``_sdk.FUNCTIONS``.

Every SDK function of ``OrthancCPlugin.h`` fills a params struct from its
arguments and calls ``InvokeService``. :func:`sdk_function` reads what the
generator recorded about one function (its arguments, which field gets which
argument, which locals receive results, what it returns) and builds a Python
callable that does the same through ctypes:

- ``const char*`` takes ``str`` (or ``bytes``, or ``None`` for NULL);
- ``const void*`` followed by its size takes ``bytes`` (or ``str``), the size
  being derived; a ``const char*`` followed by its size stays two arguments, a
  text and how many of its bytes to send, as in the official plugin;
- opaque handles (``OrthancPluginImage*``...) take :class:`Handle` objects;
- ``OrthancPluginMemoryBuffer*`` targets become ``bytes`` results, freed here;
- a returned ``char*`` becomes ``str`` (and is freed), a returned handle an
  owned :class:`Handle` that frees itself.

Functions whose shape does not fit (callback registrations, the HTTP clients
with header arrays...) are written by hand in the Pythonic layers; for them
:func:`sdk_function` raises :class:`UnsupportedFunction` saying why.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, Callable, ClassVar, TypeVar

from . import _capi, _sdk
from ._sdk_types import SdkFunction

INTEGER_TYPES = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "uint8_t": ctypes.c_uint8,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "int64_t": ctypes.c_int64,
}
ENUM_NAMES = {cls.__name__ for cls in _sdk.ENUMS}
OPAQUE_NAMES = {cls.__name__ for cls in _sdk.OPAQUE_TYPES}
STRUCT_TYPES = {cls.__name__: cls for cls in _sdk.STRUCTS}
BUFFER_TYPES = {"OrthancPluginMemoryBuffer": _sdk.OrthancPluginMemoryBuffer,
                "OrthancPluginMemoryBuffer64": _sdk.OrthancPluginMemoryBuffer64}


PLUGIN_NAME = b"orthanc_py"
"""What the loader's ``OrthancPluginGetName()`` answers."""
_PLUGIN_NAME_EXPRESSION = "expr:OrthancPluginGetName ( )"

# IRREGULAR functions whose only extra is a NULL test on the result: a NULL
# result becomes None here, which is the same.
_NULL_CHECK_ONLY = {"OrthancPluginGetErrorDescription", "OrthancPluginSubmitJob"}


class UnsupportedFunction(NotImplementedError):
    """An SDK function that the generic marshalling cannot call; the message says why."""


class SdkVersionError(_capi.OrthancError):
    """The running Orthanc is older than the SDK function needs."""


def _base_type(c_type: str) -> tuple[str, int, bool]:
    """``"const OrthancPluginImage *"`` -> ``("OrthancPluginImage", 1, True)``."""
    const = c_type.startswith("const ")
    stripped = c_type[6:] if const else c_type
    stars = stripped.count("*")
    return stripped.replace("*", "").replace("const", "").strip(), stars, const


_H = TypeVar("_H", bound="Handle")
_LEASES_MADE = threading.Lock()


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
        lease = self._lease
        if lease is None:
            with _LEASES_MADE:
                lease = self._lease
                if lease is None:
                    lease = self._lease = threading.RLock()
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
        address, self._address = self._address, 0
        if address and self._owned and _capi.is_attached():
            free = _sdk.FREE_FUNCTIONS.get(self.c_type_name)
            if free is not None:
                sdk_function(free)(type(self)(address))

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:  # noqa: SIM105 - not contextlib: at interpreter shut-down, modules may already be gone
            self.close()
        except Exception:
            pass


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


# Pointer arguments where the header documents NULL as meaningful (its @param
# says "can be NULL"); anywhere else Orthanc would dereference NULL.
NULLABLE = {
    ("OrthancPluginHttpGet", "username"), ("OrthancPluginHttpGet", "password"),
    ("OrthancPluginHttpPost", "username"), ("OrthancPluginHttpPost", "password"),
    ("OrthancPluginHttpPut", "username"), ("OrthancPluginHttpPut", "password"),
    ("OrthancPluginHttpDelete", "username"), ("OrthancPluginHttpDelete", "password"),
    ("OrthancPluginHttpClient", "username"), ("OrthancPluginHttpClient", "password"),
    ("OrthancPluginHttpClient", "certificateFile"), ("OrthancPluginHttpClient", "certificateKeyFile"),
    ("OrthancPluginHttpClient", "certificateKeyPassword"),
    ("OrthancPluginGetTagName", "privateCreator"),
    ("OrthancPluginCreateDicom", "pixelData"), ("OrthancPluginCreateDicom2", "pixelData"),
}

# Text arguments of the RestOutput functions that do not go into an HTTP header.
_NOT_HEADER_TEXT = {("OrthancPluginSetHttpErrorDetails", "details")}


class _Compiled:
    """One SDK function, prepared for fast calls."""

    def __init__(self, fn: SdkFunction, raw: bool = False) -> None:
        self.fn = fn
        self.raw = raw
        self.python_name = fn.name[len("OrthancPlugin"):]
        self.inputs: list[tuple[str, Callable[[Any, str], Any]]] = []
        self.size_of: dict[str, str] = {}  # size argument -> the buffer argument it measures
        self.text_sizes: dict[str, str] = {}  # size argument given by the caller -> the text it measures
        self.out_buffers: list[tuple[str, type]] = []
        self.out_scalars: list[tuple[str, Any]] = []
        self.out_structs: list[tuple[str, type]] = []
        self.input_types: list[str] = []  # the C base type of each input
        # name of a dict input -> (count argument, keys argument, values argument)
        self.string_maps: dict[str, tuple[str, str, str]] = {}
        self._classify_arguments()
        # Image services: Orthanc reads pitch * height bytes of the buffer.
        names = [name for name, _ in self.inputs]
        self.image_check = all(name in names for name in _IMAGE_ARGUMENTS)
        self.precondition = _PRECONDITIONS.get(fn.name)
        self.handle_positions = [i for i, base in enumerate(self.input_types) if base in OPAQUE_NAMES]
        self.locals = {name: c_type for name, c_type in fn.locals}
        self._check_shape()

    # --- set-up --------------------------------------------------------------

    def _fail(self, why: str) -> UnsupportedFunction:
        return UnsupportedFunction(f"{self.fn.name} cannot be called generically: {why}")

    def _classify_arguments(self) -> None:
        arguments = self.fn.arguments
        skip: set[str] = set()
        # The text arguments of functions that answer an HTTP request end up in its headers.
        answers_http = bool(arguments) and _base_type(arguments[0][1])[0] == "OrthancPluginRestOutput"

        def nullable(name: str) -> bool:
            return (self.fn.name, name) in NULLABLE
        for index, (name, c_type) in enumerate(arguments):
            base, stars, const = _base_type(c_type)
            following = arguments[index + 1] if index + 1 < len(arguments) else None
            if name in self.size_of or name in skip:
                continue
            if (name.endswith("Count") and base in INTEGER_TYPES and index + 2 < len(arguments)
                    and arguments[index + 1][1] == arguments[index + 2][1] == "const char *const *"):
                # (count, keys[], values[]) is one mapping in Python, e.g. HTTP headers.
                group = name[: -len("Count")]
                keys, values = arguments[index + 1][0], arguments[index + 2][0]
                self.string_maps[group] = (name, keys, values)
                skip.update((keys, values))
                self._add_input(group, _to_string_pairs, base)
            elif base == "void" and stars == 1:
                if following and following[1] in INTEGER_TYPES and following[0].lower().endswith("size"):
                    self.size_of[following[0]] = name
                    self._add_input(name, _sized_bytes(following[1]), base)
                else:
                    self._add_input(name, _to_bytes, base)
            elif base == "char" and stars == 1 and following and following[0] == name + "Size":
                # A text with its length: two arguments, as in C (only ``const void*`` + size
                # become one). The text may hold NULs; the length says how much of it is sent.
                self.text_sizes[following[0]] = name
                self._add_input(name, _sized_bytes(following[1]), base)
                self._add_input(following[0], _int_converter(following[1]), following[1])
                skip.add(following[0])
            elif base == "char" and stars == 1:
                if answers_http and (self.fn.name, name) not in _NOT_HEADER_TEXT:
                    convert = _to_header_text if nullable(name) else _required(_to_header_text)
                else:
                    convert = _to_c_string if nullable(name) else _to_required_c_string
                self._add_input(name, convert, base)
            elif base in BUFFER_TYPES and stars == 1 and not const:
                self.out_buffers.append((name, BUFFER_TYPES[base]))
            elif base in INTEGER_TYPES and stars == 1 and not const:
                self.out_scalars.append((name, INTEGER_TYPES[base]))
            elif base in STRUCT_TYPES and stars == 1 and not const:
                self.out_structs.append((name, STRUCT_TYPES[base]))
            elif base in OPAQUE_NAMES and stars == 1:
                self._add_input(name, _handle_converter(base, nullable(name)), base)
            elif stars == 0 and (base in INTEGER_TYPES or base in ENUM_NAMES):
                self._add_input(name, _int_converter(base), base)
            elif stars == 0 and base == "float":
                self._add_input(name, lambda v, w: float(v), base)
            elif base in _sdk.CALLBACKS:
                raise self._fail(f"argument '{name}' is a C callback ({base}); use the registration function")
            else:
                raise self._fail(f"argument '{name}' has type {c_type}")

    def _add_input(self, name: str, convert: Callable[[Any, str], Any], base: str) -> None:
        self.inputs.append((name, convert))
        self.input_types.append(base)

    def _check_shape(self) -> None:
        fn = self.fn
        if fn.service is None:
            raise self._fail("it invokes no service of its own")
        if fn.name in _sdk.IRREGULAR and fn.name not in _NULL_CHECK_ONLY and not self.raw:
            raise self._fail("its body does more than fill one params struct")
        for field, source in fn.assignments:
            if source.startswith("expr:") and source != _PLUGIN_NAME_EXPRESSION:
                raise self._fail(f"field '{field}' is computed ({source[5:]})")
        if fn.returns.startswith("expr:") and not self.raw:
            raise self._fail(f"it returns a computed value ({fn.returns[5:]})")
        if fn.direct_params is not None and not fn.direct_params.startswith("arg:"):
            raise self._fail(f"it passes {fn.direct_params} to InvokeService")

    def _check_image(self, args: tuple[Any, ...]) -> None:
        """Checks the buffer of an image service against ``pitch * height``, before anything is copied."""
        given = dict(zip((name for name, _ in self.inputs), args))
        numbers = {name: convert(given[name], f"{self.python_name}() argument '{name}'")
                   for name, convert in self.inputs if name in _IMAGE_ARGUMENTS[:4]}
        check_image_buffer(f"{self.python_name}()", numbers["format"], numbers["width"], numbers["height"],
                           numbers["pitch"], buffer_size(given["buffer"], f"{self.python_name}() argument 'buffer'"))

    # --- calls ---------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        leases = None
        for position in self.handle_positions:
            # Objects Orthanc lent to a callback running on another thread: held
            # until Orthanc is done with them, so that the callback cannot end meanwhile.
            if position < len(args) and getattr(args[position], "_owner", None) is not None:
                lease = args[position]._take_lease()
                if lease is not None:
                    leases = (leases or []) + [lease]
        if leases is None:
            return self._call(args)
        try:
            return self._call(args)
        finally:
            for lease in leases:
                lease.release()

    def _call(self, args: tuple[Any, ...]) -> Any:
        fn = self.fn
        if len(args) != len(self.inputs):
            names = ", ".join(name for name, _ in self.inputs)
            raise TypeError(f"{self.python_name}({names}) takes {len(self.inputs)} argument(s), got {len(args)}")
        if fn.since is not None:
            _check_version(fn)
        if self.image_check:
            self._check_image(args)
        values: dict[str, Any] = {}
        for (name, convert), value in zip(self.inputs, args):
            values[name] = convert(value, f"{self.python_name}() argument '{name}'")
        for size_name, buffer_name in self.size_of.items():
            values[size_name] = len(values[buffer_name])
        for size_name, text_name in self.text_sizes.items():
            # C would read past the end of a text shorter than the size it is given.
            if values[size_name] > len(values[text_name]):
                raise ValueError(f"{self.python_name}() argument '{size_name}' is {values[size_name]}, but "
                                 f"'{text_name}' holds {len(values[text_name])} bytes: give len({text_name}) "
                                 f"(in UTF-8 bytes) or less")
        if self.precondition is not None:
            self.precondition(self.python_name, values)
        for group, (count_name, keys_name, values_name) in self.string_maps.items():
            pairs = values.pop(group)
            values[count_name] = len(pairs)
            values[keys_name] = (ctypes.c_char_p * len(pairs))(*(k for k, _ in pairs))
            values[values_name] = (ctypes.c_char_p * len(pairs))(*(v for _, v in pairs))
        buffers = {name: cls() for name, cls in self.out_buffers}
        scalars = {name: c_type() for name, c_type in self.out_scalars}
        structs = {name: cls() for name, cls in self.out_structs}
        locals_ = {name: ctypes.c_void_p() if "*" in c_type else INTEGER_TYPES.get(c_type, ctypes.c_int32)()
                   for name, c_type in self.locals.items()}

        if fn.params is None:
            params: Any = None
            if fn.direct_params is not None:
                params = values[fn.direct_params[4:]]
        else:
            params = fn.params()
            field_types = _field_types(fn.params)
            for field, source in fn.assignments:
                kind, _, name = source.partition(":")
                field_type = field_types[field]
                if kind == "arg":
                    if name in buffers:
                        value = ctypes.pointer(buffers[name])
                    elif name in scalars:
                        value = ctypes.pointer(scalars[name])
                    elif name in structs:
                        value = ctypes.pointer(structs[name])
                    else:
                        value = _field_value(values[name], field_type)
                elif kind == "ref":
                    value = ctypes.cast(ctypes.pointer(locals_[name]), field_type)
                elif kind == "enum":
                    enum_name, _, member = name.partition(".")
                    value = int(getattr(getattr(_sdk, enum_name), member))
                elif kind == "int":
                    value = int(name)
                elif source == _PLUGIN_NAME_EXPRESSION:
                    value = PLUGIN_NAME
                else:  # null
                    value = None
                setattr(params, field, value)

        try:
            _capi.invoke(fn.service, params, self.python_name)  # type: ignore[arg-type]
        except _capi.OrthancError as error:
            if error.code == _capi.ErrorCode.UnknownPluginService:
                raise SdkVersionError(
                    error.code, f"{self.python_name}() is not offered by this Orthanc ({_capi.orthanc_version()})"
                ) from None
            raise
        results: list[Any] = [_take_buffer(buffers[name]) for name, _ in self.out_buffers]
        results += [scalars[name].value for name, _ in self.out_scalars]
        results += [_struct_dict(structs[name]) for name, _ in self.out_structs]
        if self.raw and self.locals:
            # The caller interprets the local: an integer, or a pointer as an address.
            name = fn.returns[6:] if fn.returns.startswith("local:") else next(iter(self.locals))
            return locals_[name].value
        if fn.returns.startswith("local:"):
            name = fn.returns[6:]
            return _convert_local(locals_[name], self.locals[name])
        if not results:
            return None
        return results[0] if len(results) == 1 else tuple(results)


def _handle_converter(c_type_name: str, nullable: bool = False) -> Callable[[Any, str], int]:
    def convert(value: Any, what: str) -> int:
        if isinstance(value, Handle) and value.c_type_name == c_type_name:
            return value.address
        if value is None and nullable:
            return 0  # NULL: the SDK takes it where the object is optional (CreateDicom's pixelData)
        expected = handle_class(c_type_name).__name__
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__}")

    return convert


def _sized_bytes(size_type: str) -> Callable[[Any, str], bytes]:
    """The converter of a buffer whose size goes into a field of C type ``size_type``."""
    limit = _int_range(INTEGER_TYPES[size_type])[1]

    def convert(value: Any, what: str) -> bytes:
        return _to_bytes(value, what, limit)

    return convert


def _field_types(params: type[ctypes.Structure]) -> dict[str, Any]:
    cached = _FIELD_TYPES.get(params)
    if cached is None:
        cached = _FIELD_TYPES[params] = {name: c_type for name, c_type, *_ in params._fields_}
    return cached


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_value(value: Any, field_type: Any) -> Any:
    """Makes a converted argument fit a struct field of ``field_type``."""
    if field_type is ctypes.c_void_p and isinstance(value, bytes):
        return ctypes.cast(ctypes.c_char_p(value), ctypes.c_void_p).value
    if isinstance(value, (int, ctypes.Array)) and hasattr(field_type, "contents"):
        return ctypes.cast(value, field_type) if value else None
    return value


def _struct_dict(struct: Any) -> dict[str, Any]:
    """A filled out-struct (``OrthancPluginDictionaryEntry``...) as ``{field: value}``."""
    return {entry[0]: getattr(struct, entry[0]) for entry in struct._fields_}


def _take_buffer(buffer: Any) -> bytes:
    """Copies a memory buffer Orthanc filled, then frees it (FreeMemoryBuffer)."""
    if not buffer.data:
        return b""
    try:
        return _capi.copy_memory(buffer.data, buffer.size)
    finally:
        _capi.free(buffer.data)


def _convert_local(local: Any, c_type: str) -> Any:
    base, stars, const = _base_type(c_type)
    if stars == 0:
        return local.value
    address = local.value
    if base == "char":
        if const:
            return None if not address else ctypes.string_at(address).decode("utf-8", "replace")
        return _capi.take_string(local)
    if base in OPAQUE_NAMES:
        return None if not address else handle_class(base)(address, owned=True)
    return address


def _check_version(fn: SdkFunction) -> None:
    if fn.since is None:
        return
    running = _capi.orthanc_version()
    if running == "mainline":
        return
    try:
        have = tuple(int(part) for part in running.split(".")[:3])
    except ValueError:
        return
    if have < fn.since:
        need = ".".join(map(str, fn.since))
        raise SdkVersionError(
            _capi.ErrorCode.UnknownPluginService,
            f"{fn.name[len('OrthancPlugin'):]}() needs Orthanc {need} or newer; this Orthanc is {running}",
        )


# Services whose failure in Orthanc 1.10 is not an Orthanc error but a C++
# exception that Orthanc lets escape through the plugin, across ctypes and
# Python's frames (undefined behaviour: a hang or a crash later). What they
# would trip on is checked here instead.

def _command_line_index(python_name: str, values: dict[str, Any]) -> None:
    count = int(sdk_function("OrthancPluginGetCommandLineArgumentsCount")())
    if values["argument"] >= count:
        raise IndexError(f"{python_name}() argument 'argument' is {values['argument']}, but Orthanc has {count} "
                         f"command-line argument(s): ask for 0 to {count - 1} (GetCommandLineArgumentsCount())")


_PRECONDITIONS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "OrthancPluginGetCommandLineArgument": _command_line_index,
}

_COMPILED: dict[tuple[str, bool], _Compiled] = {}


def sdk_function(name: str, raw: bool = False) -> _Compiled:
    """The Python callable for the SDK function ``name`` (``"OrthancPluginRestApiGet"``).

    :param raw: return the value of the local the function returns as is (an
        integer, or a pointer as an address) and let the caller interpret it:
        for functions that compute their result (``HasInstanceMetadata``
        returns ``result != 0``) or return memory Orthanc keeps
        (``GetInstanceData``).
    :raises KeyError: no such function in the SDK header.
    :raises UnsupportedFunction: when its shape needs a hand-written wrapper.
    """
    compiled = _COMPILED.get((name, raw))
    if compiled is None:
        compiled = _COMPILED[(name, raw)] = _Compiled(_sdk.FUNCTIONS[name], raw)
    return compiled
