# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate ``orthanc_py/_sdk_calls.py``: one Python function per SDK function, its calling convention spelled out.

``tools/gen_sdk.py`` records what each inline function of ``OrthancCPlugin.h``
does (its arguments, which params field gets which argument, which locals
receive results, what it returns). This module classifies each function's
convention once, here, and writes it as code a reviewer can read: the
conversion of each argument, the params struct it fills, the service it
invokes, and who frees what it returns. Nothing about a function is inferred
at run time; the helpers the code calls live in ``orthanc_py._calls``.

Functions whose shape does not fit (callback registrations...) are listed in
``UNSUPPORTED`` with the reason; the Pythonic layers wrap them by hand.

Called by ``tools/gen_sdk.py`` after it has written ``_sdk.py``.
"""

from __future__ import annotations

import ctypes
import keyword
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

INTEGER_TYPES = {
    "int": ctypes.c_int,
    "int32_t": ctypes.c_int32,
    "uint8_t": ctypes.c_uint8,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "int64_t": ctypes.c_int64,
}
CTYPES_NAMES = {
    "int": "c_int", "int32_t": "c_int32", "uint8_t": "c_uint8", "uint16_t": "c_uint16",
    "uint32_t": "c_uint32", "uint64_t": "c_uint64", "int64_t": "c_int64",
}
BUFFER_TYPES = ("OrthancPluginMemoryBuffer", "OrthancPluginMemoryBuffer64")
PLUGIN_NAME_EXPRESSION = "expr:OrthancPluginGetName ( )"

# IRREGULAR functions whose only extra is a NULL test on the result: a NULL
# result becomes None here, which is the same.
NULL_CHECK_ONLY = {"OrthancPluginGetErrorDescription", "OrthancPluginSubmitJob"}

# Functions whose result the hand-written wrappers interpret: they compute
# it from a local (HasInstanceMetadata returns ``result != 0``), or return
# memory Orthanc keeps (GetInstanceData). Their "raw" variant returns the
# local as is: an integer, or a pointer as an address.
RAW = {"OrthancPluginHasInstanceMetadata", "OrthancPluginHasInstancePixelData",
       "OrthancPluginGetInstanceData", "OrthancPluginGetImageBuffer"}

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

# Functions whose text result the header documents as NULL on success
# ("NULL if the property does not exist").
NULLABLE_RESULTS = {"OrthancPluginGetPeerUserProperty"}

# Text arguments of the RestOutput functions that do not go into an HTTP header.
NOT_HEADER_TEXT = {("OrthancPluginSetHttpErrorDetails", "details")}

# Services that may run callbacks of the script again, on the calling thread
# (Orthanc's REST API runs plugins' routes and stored-instance callbacks):
# their calls go through _capi.call_reentrant, which bounds the nesting.
REENTRANT_SERVICES = {
    "RestApiGet", "RestApiPost", "RestApiPut", "RestApiDelete", "RestApiGet2", "CallRestApi",
    "RestApiGetAfterPlugins", "RestApiPostAfterPlugins", "RestApiPutAfterPlugins", "RestApiDeleteAfterPlugins",
}

# Services whose failure in Orthanc 1.10 is not an Orthanc error but a C++
# exception that escapes through the plugin: what they would trip on is
# checked first, by the named helper of orthanc_py._calls.
# (helper, generated functions it is given)
PRECONDITIONS = {"OrthancPluginGetCommandLineArgument": ("check_command_line_index", "GetCommandLineArgumentsCount")}

# The image services that read (or, for an accessor, keep) pitch * height
# bytes of a caller's buffer, whatever its length.
IMAGE_ARGUMENTS = ("format", "width", "height", "pitch", "buffer")


class Unsupported(Exception):
    """A function the generated code does not call; the message says why."""


def base_type(c_type: str) -> tuple[str, int, bool]:
    """``"const OrthancPluginImage *"`` -> ``("OrthancPluginImage", 1, True)``."""
    const = c_type.startswith("const ")
    stripped = c_type[6:] if const else c_type
    stars = stripped.count("*")
    return stripped.replace("*", "").replace("const", "").strip(), stars, const


def int_range(c_name: str) -> tuple[int, int]:
    c_type = INTEGER_TYPES.get(c_name, ctypes.c_int32)  # C enums are 32-bit ints (some are bit flags)
    bits = ctypes.sizeof(c_type) * 8
    if c_type(-1).value == -1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclass
class Parameter:
    """One Python parameter of a generated function."""

    name: str
    base: str  # the C base type: "int32_t", "char", "void", "OrthancPluginImage"...
    kind: str  # int, float, text, header-text, bytes, sized-text, handle, headers
    nullable: bool = False
    size_type: str | None = None  # bytes and sized-text: the C type of the size Orthanc is told


@dataclass
class Convention:
    """How one SDK function is called, as classified from its header facts."""

    fn: Any
    raw: bool
    parameters: list[Parameter] = field(default_factory=list)
    sizes: dict[str, str] = field(default_factory=dict)  # derived size argument -> the buffer it measures
    text_sizes: dict[str, str] = field(default_factory=dict)  # size given by the caller -> its text
    maps: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # parameter -> (count, keys, values)
    out_buffers: list[tuple[str, str]] = field(default_factory=list)  # (argument, buffer struct)
    out_scalars: list[tuple[str, str]] = field(default_factory=list)  # (argument, C integer type)
    out_structs: list[tuple[str, str]] = field(default_factory=list)  # (argument, struct)

    @property
    def python_name(self) -> str:
        return str(self.fn.name[len("OrthancPlugin"):])


def classify(fn: Any, sdk: ModuleType, raw: bool = False) -> Convention:
    """The convention of ``fn`` (an ``SdkFunction``); raises :class:`Unsupported`."""
    convention = Convention(fn, raw)
    enums = {cls.__name__ for cls in sdk.ENUMS}
    opaque = {cls.__name__ for cls in sdk.OPAQUE_TYPES}
    structs = {cls.__name__ for cls in sdk.STRUCTS}
    if fn.service is None:
        raise Unsupported("it invokes no service of its own")
    if fn.name in sdk.IRREGULAR and fn.name not in NULL_CHECK_ONLY and not raw:
        raise Unsupported("its body does more than fill one params struct")
    for field_name, source in fn.assignments:
        if source.startswith("expr:") and source != PLUGIN_NAME_EXPRESSION:
            raise Unsupported(f"field '{field_name}' is computed ({source[5:]})")
    if fn.returns.startswith("expr:") and not raw:
        raise Unsupported(f"it returns a computed value ({fn.returns[5:]})")
    if fn.direct_params is not None and not fn.direct_params.startswith("arg:"):
        raise Unsupported(f"it passes {fn.direct_params} to InvokeService")

    arguments = fn.arguments
    answers_http = bool(arguments) and base_type(arguments[0][1])[0] == "OrthancPluginRestOutput"
    skip: set[str] = set()
    add = convention.parameters.append
    for index, (name, c_type) in enumerate(arguments):
        if keyword.iskeyword(name) or name.startswith(("_", "c_", "lease_")):  # the generated code's own names
            raise Unsupported(f"argument '{name}' cannot be a Python parameter")
        base, stars, const = base_type(c_type)
        following = arguments[index + 1] if index + 1 < len(arguments) else None
        nullable = (fn.name, name) in NULLABLE
        if name in convention.sizes or name in skip:
            continue
        if (name.endswith("Count") and base in INTEGER_TYPES and index + 2 < len(arguments)
                and arguments[index + 1][1] == arguments[index + 2][1] == "const char *const *"):
            # (count, keys[], values[]) is one mapping in Python, e.g. HTTP headers.
            group = name[: -len("Count")]
            keys, values = arguments[index + 1][0], arguments[index + 2][0]
            convention.maps[group] = (name, keys, values)
            skip.update((keys, values))
            add(Parameter(group, base, "headers"))
        elif base == "void" and stars == 1:
            if following and following[1] in INTEGER_TYPES and following[0].lower().endswith("size"):
                convention.sizes[following[0]] = name
                add(Parameter(name, base, "bytes", size_type=following[1]))
            else:
                add(Parameter(name, base, "bytes"))
        elif base == "char" and stars == 1 and following and following[0] == name + "Size":
            # A text with its length: two arguments, as in C (only ``const void*`` + size
            # become one). The text may hold NULs; the length says how much of it is sent.
            convention.text_sizes[following[0]] = name
            add(Parameter(name, base, "sized-text", size_type=following[1]))
            add(Parameter(following[0], following[1], "int"))
            skip.add(following[0])
        elif base == "char" and stars == 1:
            header = answers_http and (fn.name, name) not in NOT_HEADER_TEXT
            add(Parameter(name, base, "header-text" if header else "text", nullable))
        elif base in BUFFER_TYPES and stars == 1 and not const:
            convention.out_buffers.append((name, base))
        elif base in INTEGER_TYPES and stars == 1 and not const:
            convention.out_scalars.append((name, base))
        elif base in enums and stars == 1 and not const:
            # An enum Orthanc writes (AdoptDicomInstance's store status): a 32-bit C int, returned as an int.
            convention.out_scalars.append((name, "int32_t"))
        elif base in structs and stars == 1 and not const:
            convention.out_structs.append((name, base))
        elif base in opaque and stars == 1:
            add(Parameter(name, base, "handle", nullable))
        elif stars == 0 and (base in INTEGER_TYPES or base in enums):
            add(Parameter(name, base, "int"))
        elif stars == 0 and base == "float":
            add(Parameter(name, base, "float"))
        elif base in sdk.CALLBACKS:
            raise Unsupported(f"argument '{name}' is a C callback ({base}); use the registration function")
        else:
            raise Unsupported(f"argument '{name}' has type {c_type}")
    return convention


# --- writing ---------------------------------------------------------------------------------

class Writer:
    """Writes the code of one function."""

    def __init__(self, convention: Convention, sdk: ModuleType, wire_name: str) -> None:
        self.c = convention
        self.sdk = sdk
        self.wire_name = wire_name
        self.lines: list[str] = []
        self.values: dict[str, str] = {}  # C argument -> the Python expression of its converted value
        self.bytes_fields: list[str] = []  # params fields that receive bytes (c_char_p in the wire struct)
        self.locals: dict[str, str] = {}  # C local or out-argument -> the Python local holding it

    def what(self, name: str) -> str:
        return repr(f"{self.c.python_name}() argument '{name}'")

    def emit(self, line: str, indent: int = 1) -> None:
        self.lines.append("    " * indent + line)

    def convert(self, parameter: Parameter) -> None:
        name, what = parameter.name, self.what(parameter.name)
        kind = parameter.kind
        if kind == "int":
            low, high = int_range(parameter.base)
            c_name = parameter.base if parameter.base in INTEGER_TYPES else f"{parameter.base} (a 32-bit C enum)"
            self.emit(f"if _type({name}) is not _int or not {low} <= {name} <= {high}:")
            self.emit(f"{name} = _integer({name}, {what}, {low}, {high}, {c_name!r})", 2)
            self.values[name] = name
        elif kind == "float":
            self.emit(f"{name} = _float({name}, {what})")
            self.values[name] = name
        elif kind in ("text", "header-text"):
            helper = {"text": "_text", "header-text": "_header_text"}[kind]
            self.emit(f"c_{name} = {helper}{'_or_null' if parameter.nullable else ''}({name}, {what})")
            self.values[name] = f"c_{name}"
        elif kind in ("bytes", "sized-text"):
            limit = int_range(parameter.size_type)[1] if parameter.size_type else None
            self.emit(f"c_{name} = _data({name}, {what}{f', {limit}' if limit is not None else ''})")
            self.values[name] = f"c_{name}"
        elif kind == "handle":
            helper = "_address_or_null" if parameter.nullable else "_address"
            self.emit(f"c_{name} = {helper}({name}, {parameter.base!r}, {what})")
            self.values[name] = f"c_{name}"
        elif kind == "headers":
            count, keys, values = self.c.maps[name]
            self.emit(f"c_{count}, c_{keys}, c_{values} = _string_pairs({name}, {what})")
            self.values[count] = f"c_{count}"
            self.values[keys] = f"_addressof(c_{keys})"
            self.values[values] = f"_addressof(c_{values})"
        else:  # pragma: no cover - classify() makes no other kind
            raise AssertionError(kind)

    def write(self) -> list[str]:
        c, fn = self.c, self.c.fn
        names = [p.name for p in c.parameters]
        head = f"def {c.python_name}({', '.join(names)}{', /' if names else ''}):"
        self.lines.append(head)
        self.lines += docstring(c)
        if fn.since is not None:
            self.emit(f"if _capi.release < {fn.since!r}:")
            self.emit(f"raise _too_old({fn.name!r}, {fn.since!r})", 2)
        handles = [p.name for p in c.parameters if p.kind == "handle"]
        if handles:
            # Objects Orthanc lent to a callback running on another thread are
            # held until Orthanc is done with them: that callback cannot end meanwhile.
            for name in handles:
                lent = f"_getattr({name}, '_owner', None) is not None"
                self.emit(f"lease_{name} = {name}._take_lease() if {lent} else None")
            self.emit("try:")
        body_start = len(self.lines)
        image = all(name in names for name in IMAGE_ARGUMENTS)
        for parameter in c.parameters:
            if image and parameter.name == "buffer":
                # Orthanc reads pitch * height bytes: checked before anything is copied.
                self.emit(f"_check_image({c.python_name + '()'!r}, format, width, height, pitch, buffer)")
            self.convert(parameter)
        for size, buffer in c.sizes.items():
            self.values[size] = f"_len(c_{buffer})"
        for size, text in c.text_sizes.items():
            # C would read past the end of a text shorter than the size it is given.
            self.emit(f"if {size} > _len(c_{text}):")
            self.emit(f"raise _size_error({c.python_name + '()'!r}, {size!r}, {size}, {text!r}, c_{text})", 2)
        if fn.name in PRECONDITIONS:
            helper, *needs = PRECONDITIONS[fn.name]
            args = ", ".join([self.values[p.name] for p in c.parameters] + needs)
            self.emit(f"_{helper}({c.python_name + '()'!r}, {args})")
        for name, struct in c.out_buffers:
            self.emit(f"c_{name} = _sdk.{struct}()")
            self.locals[name] = f"c_{name}"
        for name, c_type in c.out_scalars:
            self.emit(f"c_{name} = _{CTYPES_NAMES[c_type]}()")
            self.locals[name] = f"c_{name}"
        for name, struct in c.out_structs:
            self.emit(f"c_{name} = _sdk.{struct}()")
            self.locals[name] = f"c_{name}"
        for name, c_type in fn.locals:
            base, stars, _ = base_type(c_type)
            if base == "char" and stars == 1:
                ctype = "TextOut"  # read as bytes up to the NUL, or as the address to free
            else:
                ctype = "c_void_p" if stars else CTYPES_NAMES.get(base, "c_int32")
            self.emit(f"c_{name} = _{ctype}()")
            self.locals[name] = f"c_{name}"
        params = self.params_expression()
        service = int(fn.service)
        call = "_call"
        extra = ""
        if fn.service.name in REENTRANT_SERVICES:
            call = "_call_reentrant"
            extra = ", c_uri" if "uri" in names else ", None"
        self.emit(f"{call}({service}, {params}, {c.python_name!r}{extra})  # {fn.service.name}")
        self.emit_result()
        if handles:
            self.lines[body_start:] = ["    " + line for line in self.lines[body_start:]]
            self.emit("finally:")
            for name in handles:
                self.emit(f"if lease_{name} is not None:", 2)
                self.emit(f"lease_{name}.release()", 3)
        return self.lines

    def source_value(self, source: str) -> str | None:
        kind, _, name = source.partition(":")
        if kind == "arg":
            if name in self.locals:  # an out-argument
                return f"_addressof({self.locals[name]})"
            return self.values[name]
        if kind == "ref":
            return f"_addressof({self.locals[name]})"
        if kind == "enum":
            enum_name, _, member = name.partition(".")
            return f"{int(getattr(getattr(self.sdk, enum_name), member))}"
        if kind == "int":
            return str(int(name))
        if source == PLUGIN_NAME_EXPRESSION:
            return "_PLUGIN_NAME"
        return None  # NULL

    def params_expression(self) -> str:
        fn = self.c.fn
        if fn.params is None:
            if fn.direct_params is not None:
                return self.values[fn.direct_params[4:]]
            return "None"
        top_level = [name for name, *_ in fn.params._fields_]
        values = {}
        for field_name, source in fn.assignments:
            value = self.source_value(source)
            if value is None:
                continue
            values[field_name] = value
            if source == PLUGIN_NAME_EXPRESSION or (source.startswith("arg:") and self.is_bytes(source[4:])):
                self.bytes_fields.append(field_name)
        if any("." in name for name in values):
            # A nested struct: filled field by field.
            self.emit(f"_params = {self.wire_name}()")
            for name, value in values.items():
                self.emit(f"_params.{name} = {value}")
            return "_addressof(_params)"
        arguments = ", ".join(f"{name}={values[name]}" for name in top_level if name in values)
        self.emit(f"_params = {self.wire_name}({arguments})")
        return "_addressof(_params)"

    def is_bytes(self, argument: str) -> bool:
        return any(p.name == argument and p.kind in ("text", "header-text", "bytes", "sized-text")
                   for p in self.c.parameters)

    def emit_result(self) -> None:
        c, fn = self.c, self.c.fn
        results = [f"_capi.take_bytes(c_{name}.data, c_{name}.size)" for name, _ in c.out_buffers]
        results += [f"c_{name}.value" for name, _ in c.out_scalars]
        results += [f"_struct_dict(c_{name})" for name, _ in c.out_structs]
        if c.raw and fn.locals:
            name = fn.returns[6:] if fn.returns.startswith("local:") else fn.locals[0][0]
            base, stars, _ = base_type(dict(fn.locals)[name])
            value = "address" if base == "char" and stars == 1 else "value"
            self.emit(f"return c_{name}.{value}  # raw: the caller interprets it")
            return
        if fn.returns.startswith("local:"):
            name = fn.returns[6:]
            c_type = dict(fn.locals)[name]
            base, stars, const = base_type(c_type)
            opaque = {cls.__name__ for cls in self.sdk.OPAQUE_TYPES}
            if stars == 0:
                self.emit(f"return c_{name}.value")
            elif base == "char" and const:
                self.emit(f"return _static_text(c_{name})  # Orthanc's own string: not freed")
            elif base == "char":
                self.emit(f"return _capi.take_text(c_{name}.address)  # copied, then freed (context->Free)")
            elif base in opaque:
                free = self.sdk.FREE_FUNCTIONS.get(base)
                self.emit(f"return _owned({base!r}, c_{name}.value)  # the script's: freed by {free}")
            else:
                self.emit(f"return c_{name}.value  # an address")
            return
        if not results:
            return
        comment = "  # memory buffers: copied, then freed here" if c.out_buffers else ""
        self.emit(f"return {results[0] if len(results) == 1 else '(' + ', '.join(results) + ')'}{comment}")


def result_description(c: Convention, sdk: ModuleType) -> str:
    """What the generated function returns, in the notation of ``CONVENTIONS``."""
    fn = c.fn
    if fn.returns.startswith("local:"):
        base, stars, _ = base_type(dict(fn.locals)[fn.returns[6:]])
        if stars == 0:
            return "int"
        if base == "char":
            return "str?" if fn.name in NULLABLE_RESULTS else "str"
        if base in {cls.__name__ for cls in sdk.OPAQUE_TYPES}:
            return f"handle:{base}"
        return "address"
    results = ["bytes" for _ in c.out_buffers] + ["int" for _ in c.out_scalars] + ["dict" for _ in c.out_structs]
    if not results:
        return "None"
    return results[0] if len(results) == 1 else f"tuple[{', '.join(results)}]"


def docstring(c: Convention) -> list[str]:
    fn = c.fn
    doc = (fn.doc or f"Calls {fn.name}.").replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return [f'    """{doc}', "", f"    Wraps the SDK function ``{fn.name}``.", '    """']


PREAMBLE = '''\
# Generated by tools/gen_sdk.py (tools/gen_calls.py) from OrthancCPlugin.h of SDK {version}.
# Do not edit by hand: change the generator and run it again.
# SPDX-License-Identifier: GPL-3.0-or-later
# ruff: noqa: E501
"""One Python function per SDK function, each calling its service directly.

Every function converts its arguments (with the checks of ``orthanc_py._calls``:
ranges of C integers, NULs in C strings, sizes of buffers), fills the params
struct of its service, invokes the service through ``_capi.call`` and converts
what Orthanc returns, freeing what the plugin owns. The params structs are
the layouts of ``_sdk`` with pointer fields taking plain addresses (``_wire``).

``CALLS`` maps each C name to its function, ``RAW`` holds the functions whose
result the caller interprets, ``UNSUPPORTED`` says why the others are written
by hand, and :func:`sdk_function` finds one by its C name.
"""

from ctypes import addressof as _addressof
{ctypes_imports}from typing import Any, Callable

from . import _calls, _capi, _sdk
from ._calls import PLUGIN_NAME as _PLUGIN_NAME
from ._calls import TextOut as _TextOut
from ._calls import address as _address
from ._calls import address_or_null as _address_or_null
from ._calls import check_command_line_index as _check_command_line_index
from ._calls import check_image as _check_image
from ._calls import data as _data
from ._calls import float_value as _float
from ._calls import header_text as _header_text
from ._calls import header_text_or_null as _header_text_or_null
from ._calls import integer as _integer
from ._calls import owned as _owned
from ._calls import size_error as _size_error
from ._calls import static_text as _static_text
from ._calls import string_pairs as _string_pairs
from ._calls import struct_dict as _struct_dict
from ._calls import text as _text
from ._calls import text_or_null as _text_or_null
from ._calls import too_old as _too_old
from ._calls import wire as _wire

_call = _capi.call
_call_reentrant = _capi.call_reentrant
# Builtins under names no SDK argument takes (SetMetricsValue has an argument "type").
_type, _int, _len, _getattr = type, int, len, getattr
'''


POSTAMBLE = '''

class UnsupportedFunction(NotImplementedError):
    """An SDK function that has no generated call; the message says why."""


def sdk_function(name: str, raw: bool = False) -> Callable[..., Any]:
    """The generated function of the SDK function ``name`` (``"OrthancPluginRestApiGet"``).

    :param raw: for the functions in ``RAW``: the variant that returns the
        value their result is computed from.
    :raises KeyError: no such function in the SDK header.
    :raises UnsupportedFunction: when its shape needs a hand-written wrapper.
    """
    if raw and name in RAW:
        return RAW[name]
    function = CALLS.get(name)
    if function is not None:
        return function
    if name in UNSUPPORTED:
        raise UnsupportedFunction(f"{name} cannot be called generically: {UNSUPPORTED[name]}")
    raise KeyError(name)


def call(name: str, *args: Any, raw: bool = False) -> Any:
    """Calls the SDK function ``OrthancPlugin<name>`` (``"RestApiGet"``) with ``args``: for hand-written code.

    :raises KeyError: no such function in the SDK header.
    :raises UnsupportedFunction: when its shape needs a hand-written wrapper.
    """
    return sdk_function("OrthancPlugin" + name, raw)(*args)


# Handle.close() frees the objects the script owns with these.
_calls.FREE_CALLS.update({c_type: CALLS[name] for c_type, name in _sdk.FREE_FUNCTIONS.items() if name in CALLS})
'''


def render(sdk: ModuleType) -> str:
    version = ".".join(map(str, sdk.SDK_VERSION))
    out: list[str] = []
    calls: list[tuple[str, str]] = []
    conventions: list[tuple[str, str]] = []
    raws: list[tuple[str, str]] = []
    unsupported: list[tuple[str, str]] = []
    used_ctypes: set[str] = set()
    for fn in sdk.FUNCTIONS.values():
        for raw in (False, True) if fn.name in RAW else (False,):
            try:
                convention = classify(fn, sdk, raw)
            except Unsupported as why:
                unsupported.append((fn.name, str(why)))
                continue
            python_name = convention.python_name + ("_raw" if raw else "")
            wire_name = f"_P_{python_name}"
            writer = Writer(convention, sdk, wire_name)
            lines = writer.write()
            lines[0] = lines[0].replace(f"def {convention.python_name}(", f"def {python_name}(", 1)
            if fn.params is not None:
                fields = sorted(set(writer.bytes_fields))
                out.append(f"{wire_name} = _wire(_sdk.{fn.params.__name__}, {tuple(fields)!r})\n\n")
            out.append("\n".join(lines) + "\n\n\n")
            for line in lines:
                for name in {*CTYPES_NAMES.values(), "c_void_p"}:  # _TextOut is imported by the preamble
                    if f"_{name}()" in line:
                        used_ctypes.add(name)
            (raws if raw else calls).append((fn.name, python_name))
            if not raw:
                parameters = tuple((p.name, p.base, p.kind + ("?" if p.nullable else ""))
                                   for p in convention.parameters)
                conventions.append((fn.name, f"({parameters!r}, {result_description(convention, sdk)!r})"))
    out.append("CALLS: dict[str, Callable[..., Any]] = {\n" + "".join(f"    {c!r}: {p},\n" for c, p in calls) + "}\n")
    out.append('"""Each SDK function the generated code calls, by C name."""\n\n')
    out.append("CONVENTIONS = {\n" + "".join(f"    {c!r}: {d},\n" for c, d in conventions) + "}\n")
    out.append('''"""Each function of ``CALLS``: ``((parameter, C base type, kind), ...), result``.

A kind is ``int``, ``float``, ``text`` (a C string: ``str``), ``header-text`` (one
that goes into an HTTP header: no CR or LF), ``bytes`` (a buffer, its size
derived), ``sized-text`` (a text whose size is the next parameter), ``handle``
(an Orthanc object) or ``headers`` (a mapping of str to str); ``?`` marks
those that take ``None`` (NULL). The result is ``None``, ``int``, ``str``
(``str?`` when Orthanc may return NULL), ``bytes``, ``dict``, ``address``,
``handle:<C type>`` (the script's object, freed when collected) or a tuple.
"""

''')
    out.append("RAW: dict[str, Callable[..., Any]] = {\n" + "".join(f"    {c!r}: {p},\n" for c, p in raws) + "}\n")
    out.append('"""Functions that compute their result in C: these return the local it is computed from."""\n\n')
    out.append("UNSUPPORTED = {\n" + "".join(f"    {c!r}: {w!r},\n" for c, w in unsupported) + "}\n")
    out.append('"""SDK functions written by hand in the Pythonic layers, with the reason."""\n')
    out.append(POSTAMBLE)
    imports = "".join(f"from ctypes import {name} as _{name}\n" for name in sorted(used_ctypes))
    return PREAMBLE.format(version=version, ctypes_imports=imports) + "\n\n" + "".join(out)
