# SPDX-License-Identifier: GPL-3.0-or-later
"""Calls any SDK function with Python values, from the facts in ``_sdk.FUNCTIONS``.

Every SDK function of ``OrthancCPlugin.h`` fills a params struct from its
arguments and calls ``InvokeService``. :func:`sdk_function` reads what the
generator recorded about one function (its arguments, which field gets which
argument, which locals receive results, what it returns) and builds a Python
callable that does the same through ctypes:

- ``const char*`` takes ``str`` (or ``bytes``, or ``None`` for NULL);
- ``const void*`` followed by its size takes ``bytes`` (or ``str``), the size
  being derived;
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
from typing import Any, Callable, ClassVar, Optional

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


class Handle:
    """An object of Orthanc's (an image, a DICOM instance...) held through a C pointer.

    Objects that Orthanc created for the script (``owned``) are freed with the
    matching ``OrthancPluginFree...`` when closed, collected, or at the end of
    a ``with`` block; objects Orthanc lends to a callback are not.
    """

    c_type_name: ClassVar[str] = ""
    """The opaque C type, e.g. ``"OrthancPluginImage"``; set by subclasses."""

    def __init__(self, address: int, owned: bool = False) -> None:
        self._address = address
        self._owned = owned

    @property
    def address(self) -> int:
        """The C pointer, as an integer (0 once closed)."""
        if not self._address:
            raise ValueError(f"this {type(self).__name__} was closed")
        return self._address

    def close(self) -> None:
        """Frees the Orthanc object now, if the script owns it."""
        address, self._address = self._address, 0
        if address and self._owned and _capi.is_attached():
            free = _sdk.FREE_FUNCTIONS.get(self.c_type_name)
            if free is not None:
                sdk_function(free)(type(self)(address))

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass  # at interpreter shut-down, modules may already be gone


# Python classes that wrap each opaque type; the Pythonic layers register theirs.
HANDLE_CLASSES: dict[str, type[Handle]] = {}


def handle_class(c_type_name: str) -> type[Handle]:
    """The :class:`Handle` subclass registered for an opaque C type (a plain one if none)."""
    cls = HANDLE_CLASSES.get(c_type_name)
    if cls is None:
        cls = type(c_type_name, (Handle,), {"c_type_name": c_type_name})
        HANDLE_CLASSES[c_type_name] = cls
    return cls


def _to_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def _to_c_string(value: Any, what: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} must be str, not {type(value).__name__}")


def _to_string_pairs(value: Any, what: str) -> list[tuple[bytes, bytes]]:
    if value is None:
        return []
    items = value.items() if hasattr(value, "items") else value
    try:
        return [(_to_c_string(k, what) or b"", _to_c_string(v, what) or b"") for k, v in items]
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a dict of str to str, not {type(value).__name__}") from None


def _to_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            return int(value.__index__())
        except AttributeError:
            raise TypeError(f"{what} must be int, not {type(value).__name__}") from None
    return int(value)


class _Compiled:
    """One SDK function, prepared for fast calls."""

    def __init__(self, fn: SdkFunction, raw: bool = False) -> None:
        self.fn = fn
        self.raw = raw
        self.python_name = fn.name[len("OrthancPlugin"):]
        self.inputs: list[tuple[str, Callable[[Any, str], Any]]] = []
        self.size_of: dict[str, str] = {}  # size argument -> the buffer argument it measures
        self.out_buffers: list[tuple[str, type]] = []
        self.out_scalars: list[tuple[str, Any]] = []
        self.out_structs: list[tuple[str, type]] = []
        self.input_types: list[str] = []  # the C base type of each input
        # name of a dict input -> (count argument, keys argument, values argument)
        self.string_maps: dict[str, tuple[str, str, str]] = {}
        self._classify_arguments()
        self.locals = {name: c_type for name, c_type in fn.locals}
        self._check_shape()

    # --- set-up --------------------------------------------------------------

    def _fail(self, why: str) -> UnsupportedFunction:
        return UnsupportedFunction(f"{self.fn.name} cannot be called generically: {why}")

    def _classify_arguments(self) -> None:
        arguments = self.fn.arguments
        skip: set[str] = set()
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
                self._add_input(name, _to_bytes, base)
            elif base == "char" and stars == 1 and following and following[0] == name + "Size":
                # A text that may hold anything, NULs included: its size is given.
                self.size_of[following[0]] = name
                self._add_input(name, _to_bytes, base)
            elif base == "char" and stars == 1:
                self._add_input(name, _to_c_string, base)
            elif base in BUFFER_TYPES and stars == 1 and not const:
                self.out_buffers.append((name, BUFFER_TYPES[base]))
            elif base in INTEGER_TYPES and stars == 1 and not const:
                self.out_scalars.append((name, INTEGER_TYPES[base]))
            elif base in STRUCT_TYPES and stars == 1 and not const:
                self.out_structs.append((name, STRUCT_TYPES[base]))
            elif base in OPAQUE_NAMES and stars == 1:
                self._add_input(name, _handle_converter(base), base)
            elif stars == 0 and (base in INTEGER_TYPES or base in ENUM_NAMES):
                self._add_input(name, _to_int, base)
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

    # --- calls ---------------------------------------------------------------

    def __call__(self, *args: Any) -> Any:
        fn = self.fn
        if len(args) != len(self.inputs):
            names = ", ".join(name for name, _ in self.inputs)
            raise TypeError(f"{self.python_name}({names}) takes {len(self.inputs)} argument(s), got {len(args)}")
        if fn.since is not None:
            _check_version(fn)
        values: dict[str, Any] = {}
        for (name, convert), value in zip(self.inputs, args):
            values[name] = convert(value, f"{self.python_name}() argument '{name}'")
        for size_name, buffer_name in self.size_of.items():
            values[size_name] = len(values[buffer_name])
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


def _handle_converter(c_type_name: str) -> Callable[[Any, str], int]:
    def convert(value: Any, what: str) -> int:
        if isinstance(value, Handle) and value.c_type_name == c_type_name:
            return value.address
        if value is None:
            return 0  # NULL: the SDK takes it where the object is optional (CreateDicom's pixelData)
        expected = handle_class(c_type_name).__name__
        raise TypeError(f"{what} must be {expected}, not {type(value).__name__}")

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
        return ctypes.string_at(buffer.data, buffer.size)
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
