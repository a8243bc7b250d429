#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate ``orthanc_py/_sdk.py``: ctypes declarations of the Orthanc plugin SDK.

The SDK is one C header, ``OrthancCPlugin.h``. Its functions are ``static
inline`` wrappers that fill a params struct and call
``context->InvokeService(context, service, &params)``, so a ctypes layer needs
only facts from the header: enum values, struct layouts, callback signatures,
which service and params struct each inline function uses, and what its body
does (which argument, local or constant goes into each field, what it returns;
see ``BodyReader``). This script
reads them with libclang (PyPI ``libclang``, a generator-time dependency only)
and writes one deterministic Python module.

Usage: ``python tools/gen_sdk.py [--header PATH] [--output PATH]``
(defaults: ``/usr/include/orthanc/OrthancCPlugin.h`` and ``orthanc_py/_sdk.py``).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import keyword
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_calls  # the sibling module that writes the generated calls

DEFAULT_HEADER = Path("/usr/include/orthanc/OrthancCPlugin.h")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "orthanc_py" / "_sdk.py"
DEFAULT_ENUMS_OUTPUT = DEFAULT_OUTPUT.with_name("_enums.py")
DEFAULT_CALLS_OUTPUT = DEFAULT_OUTPUT.with_name("_sdk_calls.py")

# Every SDK enum is 32 bits wide: OrthancPluginCheckVersionAdvanced() refuses to
# run otherwise, and each enum ends with a 0x7fffffff sentinel to force it.
ENUM_CTYPE = "ctypes.c_int32"
INTERNAL_SENTINEL = 0x7FFFFFFF

# Checked on the typedef name before falling back to the canonical type, so that
# uint8_t* stays POINTER(c_uint8) instead of looking like a char*.
FIXED_WIDTH = {
    f"{sign}int{bits}_t": f"ctypes.c_{sign}int{bits}"
    for sign in ("", "u")
    for bits in (8, 16, 32, 64)
}
FIXED_WIDTH["size_t"] = "ctypes.c_size_t"

# libclang TypeKind name -> ctypes type, for types not spelled with a stdint name.
BUILTIN = {
    kind: f"ctypes.c_{kind.lower()}"
    for kind in "BOOL SHORT USHORT INT UINT LONG ULONG LONGLONG ULONGLONG FLOAT DOUBLE".split()  # noqa: SIM905
}
BUILTIN.update(
    CHAR_S="ctypes.c_char",
    CHAR_U="ctypes.c_char",
    SCHAR="ctypes.c_byte",
    UCHAR="ctypes.c_ubyte",
)
FUNCTION_KINDS = ("FUNCTIONPROTO", "FUNCTIONNOPROTO")

VERSION_MACROS = tuple(
    f"ORTHANC_PLUGINS_MINIMAL_{part}_NUMBER" for part in ("MAJOR", "MINOR", "REVISION")
)

# "/* New in Orthanc 1.7.0 */" after a service, "(new in 1.4.2)" on a group heading.
NEW_IN = re.compile(r"\bnew in (?:Orthanc |SDK )?(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)
# Headers of SDK 1.12.4 and later tag each function newer than Orthanc 1.0.0
# with ORTHANC_PLUGIN_SINCE_SDK("x.y.z"), which under clang is this annotation.
SINCE_SDK = re.compile(r"^ORTHANC_PLUGIN_SINCE_SDK (\d+)\.(\d+)\.(\d+)$")


class GeneratorError(Exception):
    """The header contains something this generator does not know how to map."""


@dataclass
class Enum:
    name: str
    doc: str
    members: list[tuple[str, int, str]]  # (Python name, value, doc)


@dataclass
class Struct:
    name: str
    tag: str | None  # struct tag when it differs from the typedef name
    doc: str
    opaque: bool
    # (name, ctypes expression, doc)
    fields: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Callback:
    name: str
    doc: str
    restype: str
    argtypes: list[str]


@dataclass
class Body:
    """What the statements of an inline function do (see SdkFunction's fields)."""

    locals: list[tuple[str, str]] = field(default_factory=list)
    assignments: list[tuple[str, str]] = field(default_factory=list)
    direct_params: str | None = None
    returns: str = "void"
    failure_value: str | None = None
    checks_status: bool = False
    # Why these facts do not tell the whole body; empty when they do.
    irregular: list[str] = field(default_factory=list)


@dataclass
class Function:
    name: str
    service: str | None
    params: str | None
    arguments: list[tuple[str, str]]
    result: str
    since: tuple[int, int, int] | None
    doc: str
    calls: list[str]
    body: Body


@dataclass
class Sdk:
    version: tuple[int, int, int]
    enums: list[Enum] = field(default_factory=list)
    structs: list[Struct] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)
    functions: list[Function] = field(default_factory=list)
    # Opaque handle type -> the OrthancPluginFree* function that releases it.
    free_functions: dict[str, str] = field(default_factory=dict)


def one_line(text: str | None) -> str:
    """Collapse a doxygen brief into one line of single spaces."""
    return " ".join((text or "").split())


def py_string(text: str) -> str:
    """A quoted Python literal for a one-line string, quoted as ruff format would.

    Double quotes, unless the text holds more double than single quotes
    (``'"Unknown error code"'``): then single quotes need fewer escapes.
    """
    quote = "'" if text.count('"') > text.count("'") else '"'
    body = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return quote + body + quote


def parse_version(match: re.Match[str] | None) -> tuple[int, int, int] | None:
    """(major, minor, revision) from a NEW_IN match."""
    if match is None:
        return None
    major, minor, revision = map(int, match.groups())
    return (major, minor, revision)


def enum_member_name(typedef: str, c_name: str) -> str:
    """Python member name: the C enumerator without its ``<typedef>_`` prefix."""
    prefix = typedef + "_"
    name = c_name.removeprefix(prefix)
    if name[:1].isdigit():
        name = "_" + name
    if keyword.iskeyword(name):  # OrthancPluginResourceType_None -> None_
        name += "_"
    if not name.isidentifier():
        raise GeneratorError(f"enumerator {c_name} gives no Python identifier")
    return name


def is_function_pointer(ctype: Any) -> bool:
    """True for ``T (*)(...)`` (a pointer to a function type)."""
    return (
        ctype.kind.name == "POINTER" and ctype.get_pointee().kind.name in FUNCTION_KINDS
    )


# Expression cursors that denote the same value as their single operand: implicit
# conversions (libclang shows them as UNEXPOSED_EXPR), parentheses, explicit casts.
# A marshalling layer converts through ctypes, so these casts carry no information.
TRANSPARENT = ("UNEXPOSED_EXPR", "PAREN_EXPR", "CSTYLE_CAST_EXPR")
SUCCESS = "OrthancPluginErrorCode_Success"


def unwrap(node: Any) -> Any:
    """``node`` without the implicit conversions, parentheses and casts around it."""
    while node.kind.name in TRANSPARENT:
        operands = [c for c in node.get_children() if c.kind.is_expression()]
        if len(operands) != 1:  # a cast's other child is the TYPE_REF of its type
            break
        node = operands[0]
    return node


def c_text(node: Any) -> str:
    """The C source of ``node``: its tokens joined by single spaces.

    Comments are dropped (libclang returns them as tokens when the translation
    unit keeps a detailed preprocessing record, as it does here).
    """
    return " ".join(t.spelling for t in node.get_tokens() if t.kind.name != "COMMENT")


def shorten(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters, for a one-line comment."""
    return text if len(text) <= width else text[: width - 4] + " ..."


def or_operands(node: Any) -> list[Any]:
    """The operands of ``a || b || c`` (parsed as ``(a || b) || c``), else [node]."""
    node = unwrap(node)
    if node.kind.name == "BINARY_OPERATOR" and operator(node) == "||":
        left, right = node.get_children()
        return or_operands(left) + or_operands(right)
    return [node]


def operator(node: Any) -> str:
    """The operator of a UNARY_OPERATOR or BINARY_OPERATOR cursor.

    The Python bindings of libclang 18 do not expose it, so it is read from the
    tokens: the first one of a (prefix) unary operator, the first one after the
    left operand of a binary operator.
    """
    tokens = list(node.get_tokens())
    if node.kind.name == "UNARY_OPERATOR":
        return tokens[0].spelling
    left_end = next(node.get_children()).extent.end.offset
    return next(t.spelling for t in tokens if t.extent.start.offset >= left_end)


def same(a: Any | None, b: Any | None) -> bool:
    """Cursor equality that accepts None (libclang's ``==`` raises on it)."""
    return a is not None and b is not None and a == b


def is_invoke_service(node: Any) -> bool:
    return node.kind.name == "CALL_EXPR" and node.spelling == "InvokeService"


# CXEvalResultKind of libclang's Index.h: the result is an integer.
CXEVAL_INT = 1


@functools.cache
def evaluation_api() -> Any:
    """libclang with ``clang_Cursor_Evaluate`` and its helpers declared.

    The Python bindings do not wrap them, so they are declared here, once.
    """
    from clang import cindex

    lib = cindex.conf.lib
    lib.clang_Cursor_Evaluate.argtypes = [cindex.Cursor]
    lib.clang_Cursor_Evaluate.restype = ctypes.c_void_p
    for name, restype in (
        ("clang_EvalResult_getKind", ctypes.c_int),
        ("clang_EvalResult_isUnsignedInt", ctypes.c_uint),
        ("clang_EvalResult_getAsLongLong", ctypes.c_longlong),
        ("clang_EvalResult_getAsUnsigned", ctypes.c_ulonglong),
        ("clang_EvalResult_dispose", None),
    ):
        getattr(lib, name).argtypes = [ctypes.c_void_p]
        getattr(lib, name).restype = restype
    return lib


def integer_value(node: Any) -> int | None:
    """The value of an integer constant expression, or None.

    Asks libclang (``clang_Cursor_Evaluate``). Token text would not do: the
    ``0`` inside ``NULL`` comes from a macro and has no tokens of its own.
    Expressions with ``sizeof`` are refused: their value is the compiler's, not
    the header's.
    """
    node = unwrap(node)
    if any(n.kind.name == "CXX_UNARY_EXPR" for n in node.walk_preorder()):
        return None  # sizeof / _Alignof
    lib = evaluation_api()
    result = lib.clang_Cursor_Evaluate(node)
    if not result:
        return None
    try:
        if lib.clang_EvalResult_getKind(result) != CXEVAL_INT:
            return None
        if lib.clang_EvalResult_isUnsignedInt(result):
            return int(lib.clang_EvalResult_getAsUnsigned(result))
        return int(lib.clang_EvalResult_getAsLongLong(result))
    finally:
        lib.clang_EvalResult_dispose(result)


class BodyReader:
    """Describes the body of one inline SDK function as a :class:`Body`.

    The header's functions follow a few shapes: declare locals and a params
    struct, ``memset`` it, assign its fields, then call ``InvokeService`` and
    either ignore its result, return it, or return a local (or a fallback when
    the call failed) from an ``if``/``else`` on it. Anything outside these
    shapes is still described as far as it goes, and the reason is recorded in
    ``Body.irregular`` so that it ends up in the generated ``IRREGULAR``.
    """

    def __init__(self, reader: HeaderReader, cursor: Any, invoke: Any | None) -> None:
        self.reader = reader
        self.cursor = cursor
        self.invoke = invoke
        self.body = Body()
        self.params_var: Any | None = None  # the VAR_DECL whose address is passed
        if invoke is not None:
            third = unwrap(list(invoke.get_arguments())[2])
            if third.kind.name == "UNARY_OPERATOR" and operator(third) == "&":
                target = unwrap(next(third.get_children()))
                if target.kind.name == "DECL_REF_EXPR":
                    self.params_var = target.referenced
            if self.params_var is None:  # the log functions pass their message
                self.body.direct_params = self.source(third, pointer=True)

    def read(self) -> Body:
        compound = next(
            c for c in self.cursor.get_children() if c.kind.name == "COMPOUND_STMT"
        )
        for statement in compound.get_children():
            self.statement(statement)
        if self.invoke is None:
            # Every statement is foreign then: one reason showing the body is enough.
            self.body.irregular = [f"invokes no service: `{shorten(c_text(compound))}`"]
        self.body.checks_status = any(
            self.is_status_test(n) for n in compound.walk_preorder()
        )
        if self.cursor.result_type.kind.name == "VOID":
            self.body.returns = "void"
        elif self.body.returns == "void":  # no shape matched: keep the whole body
            self.body.returns = "expr:" + c_text(compound)
        return self.body

    def irregular(self, reason: str) -> None:
        if reason not in self.body.irregular:
            self.body.irregular.append(reason)

    # -- statements ----------------------------------------------------------
    def statement(self, node: Any) -> None:
        kind = node.kind.name
        if kind == "DECL_STMT":
            for var in node.get_children():
                self.declaration(var)
        elif kind == "BINARY_OPERATOR" and operator(node) == "=":
            self.assignment(node)
        elif kind == "CALL_EXPR" and is_invoke_service(node):
            pass  # its error code is ignored: returns stays "void"
        elif kind == "CALL_EXPR" and self.is_params_memset(node):
            pass  # zeroing the params struct: a fresh ctypes.Structure already is
        elif kind == "RETURN_STMT":
            self.return_statement(node)
        elif kind == "IF_STMT" and self.contains_invoke(node):
            self.status_branch(node)
        else:
            self.irregular(f"statement `{shorten(c_text(node))}`")

    def declaration(self, var: Any) -> None:
        if var.kind.name != "VAR_DECL":
            self.irregular(f"declaration `{shorten(c_text(var))}`")
            return
        if self.contains_invoke(var):
            self.irregular(f"service called in the declaration of {var.spelling}")
        if not same(var, self.params_var):
            self.body.locals.append((var.spelling, var.type.spelling))

    def assignment(self, node: Any) -> None:
        """``params.<field>[.<field>...] = <expr>;``"""
        left, right = node.get_children()
        path: list[str] = []
        target = unwrap(left)
        while target.kind.name == "MEMBER_REF_EXPR":
            path.insert(0, target.spelling)
            target = unwrap(next(target.get_children()))
        if not path or not same(target.referenced, self.params_var):
            self.irregular(f"assignment `{shorten(c_text(node))}`")
            return
        pointer = left.type.get_canonical().kind.name == "POINTER"
        self.body.assignments.append((".".join(path), self.source(right, pointer)))

    def return_statement(self, node: Any) -> None:
        value = next(node.get_children(), None)
        if value is None:
            return
        if same(unwrap(value), self.invoke):
            self.body.returns = "status"
        else:
            self.body.returns = "expr:" + c_text(value)

    def status_branch(self, node: Any) -> None:
        """``if (InvokeService(...) ==/!= Success) {return a;} else {return b;}``"""
        children = list(node.get_children())
        operands = or_operands(children[0])
        tests = [o for o in operands if self.is_status_test(o)]
        if len(tests) != 1 or len(children) != 3:
            self.irregular(f"if statement `{shorten(c_text(node))}`")
            return
        condition = tests[0]
        extras = [c_text(o) for o in operands if o != condition]
        if extras and operator(condition) == "!=":
            # "call failed || <extra>": the fallback also comes when <extra> holds,
            # which returns/failure_value cannot say.
            self.irregular(f"also returns the fallback when `{' || '.join(extras)}`")
        elif extras:
            self.irregular(f"if statement `{shorten(c_text(node))}`")
            return
        then_value, else_value = (self.returned(c) for c in children[1:])
        success, failure = then_value, else_value
        if operator(condition) == "!=":
            success, failure = else_value, then_value
        if success is None or failure is None:
            self.irregular("the branches on the service's result do not only return")
            return
        inner = unwrap(success)
        if (
            inner.kind.name == "DECL_REF_EXPR"
            and inner.referenced.kind.name == "VAR_DECL"
            and inner.referenced.spelling in dict(self.body.locals)
        ):
            self.body.returns = "local:" + inner.referenced.spelling
        else:
            self.body.returns = "expr:" + c_text(success)
        self.body.failure_value = self.source_text(failure)

    # -- expressions -----------------------------------------------------------
    def source(self, expr: Any, pointer: bool) -> str:
        """The notation of SdkFunction.assignments for an assigned expression.

        ``pointer``: the destination is a pointer, so a literal 0 means NULL.
        """
        node = unwrap(expr)
        kind = node.kind.name
        ref = node.referenced if kind == "DECL_REF_EXPR" else None
        if (
            ref is not None
            and ref.kind.name == "PARM_DECL"
            and ref.spelling != "context"
        ):
            return "arg:" + ref.spelling
        if ref is not None and ref.kind.name == "ENUM_CONSTANT_DECL":
            typedef = self.reader.enum_typedefs[ref.semantic_parent.get_usr()]
            return f"enum:{typedef}.{enum_member_name(typedef, ref.spelling)}"
        if kind == "UNARY_OPERATOR" and operator(node) == "&":
            target = unwrap(next(node.get_children()))
            if (
                target.kind.name == "DECL_REF_EXPR"
                and target.referenced.spelling in dict(self.body.locals)
            ):
                return "ref:" + target.referenced.spelling
        value = integer_value(node)
        if value is not None:
            return "null" if pointer and value == 0 else f"int:{value}"
        return "expr:" + c_text(expr)

    def source_text(self, node: Any) -> str:
        """The C text of ``node`` as the header writes it, whitespace collapsed.

        Used for failure values, where ``-1`` reads better than the tokens
        ``- 1``. The extent of a macro use (``NULL``) is the macro's name.
        """
        start, end = node.extent.start, node.extent.end
        lines = self.reader.lines[start.line - 1 : end.line]
        lines[-1] = lines[-1][: end.column - 1]
        lines[0] = lines[0][start.column - 1 :]
        return " ".join(" ".join(lines).split())

    def returned(self, branch: Any) -> Any | None:
        """The returned expression of a branch that only returns, else None."""
        if branch.kind.name == "COMPOUND_STMT":
            statements = list(branch.get_children())
            if len(statements) != 1:
                return None
            branch = statements[0]
        if branch.kind.name != "RETURN_STMT":
            return None
        return next(branch.get_children(), None)

    def is_status_test(self, node: Any) -> bool:
        """``InvokeService(...) == Success`` or ``!=``, either way round."""
        if node.kind.name != "BINARY_OPERATOR" or operator(node) not in ("==", "!="):
            return False
        operands = {unwrap(c).kind.name: unwrap(c) for c in node.get_children()}
        call, constant = operands.get("CALL_EXPR"), operands.get("DECL_REF_EXPR")
        return (
            call is not None
            and is_invoke_service(call)
            and constant is not None
            and constant.spelling == SUCCESS
        )

    def contains_invoke(self, node: Any) -> bool:
        return any(is_invoke_service(n) for n in node.walk_preorder())

    def is_params_memset(self, node: Any) -> bool:
        """``memset(&params, 0, sizeof(params))``."""
        if node.spelling != "memset" or self.params_var is None:
            return False
        first = unwrap(next(node.get_arguments()))
        return first.kind.name == "UNARY_OPERATOR" and same(
            unwrap(next(first.get_children())).referenced, self.params_var
        )


class HeaderReader:
    """Walks the libclang translation unit of the header and builds an :class:`Sdk`."""

    def __init__(self, header: Path, tu: Any) -> None:
        self.header = header
        self.lines = header.read_text(encoding="utf-8").splitlines()
        self.cursors = [c for c in tu.cursor.get_children() if self._in_header(c)]
        self.enum_names: set[str] = set()
        self.struct_names: set[str] = set()  # structs and opaque structs
        self.callback_names: set[str] = set()  # function-pointer typedefs
        self.record_names: dict[str, str] = {}  # struct USR -> typedef name
        self.enum_typedefs: dict[str, str] = {}  # enum USR -> typedef name
        self.sdk = Sdk(version=self._version())

    def _in_header(self, cursor: Any) -> bool:
        loc = cursor.location.file
        return loc is not None and Path(loc.name).resolve() == self.header.resolve()

    def _version(self) -> tuple[int, int, int]:
        values = {}
        for c in self.cursors:
            if c.kind.name == "MACRO_DEFINITION" and c.spelling in VERSION_MACROS:
                values[c.spelling] = int(list(c.get_tokens())[1].spelling)
        if len(values) != 3:
            raise GeneratorError(f"version macros not found, got {values}")
        major, minor, revision = (values[m] for m in VERSION_MACROS)
        return (major, minor, revision)

    # -- types -------------------------------------------------------------
    def ctype(self, t: Any, callback_result: bool = False) -> str:
        """The ctypes expression for C type ``t``.

        ``callback_result``: pointers returned by a Python callback must be plain
        ``c_void_p`` (ctypes refuses POINTER results and would leak c_char_p ones).
        """
        kind = t.kind.name
        if kind == "ELABORATED":
            return self.ctype(t.get_named_type(), callback_result)
        if kind == "TYPEDEF":
            name = t.get_declaration().spelling
            if name in FIXED_WIDTH:
                return FIXED_WIDTH[name]
            if name in self.enum_names:
                return ENUM_CTYPE
            if name in self.callback_names:
                return "ctypes.c_void_p" if callback_result else name
            if name in self.struct_names:
                if callback_result:
                    raise GeneratorError(f"callback returning struct {name} by value")
                return name
            return self.ctype(t.get_canonical(), callback_result)
        if kind == "ENUM":
            return ENUM_CTYPE
        if kind == "RECORD":
            return self.record_names[t.get_declaration().get_usr()]
        if kind == "POINTER":
            return (
                "ctypes.c_void_p" if callback_result else self._pointer(t.get_pointee())
            )
        if kind == "CONSTANTARRAY":
            return f"({self.ctype(t.element_type)} * {t.element_count})"
        if kind in BUILTIN:
            return BUILTIN[kind]
        raise GeneratorError(f"cannot map C type {t.spelling!r}")

    def _pointer(self, pointee: Any) -> str:
        kind = pointee.kind.name
        if kind == "VOID":
            return "ctypes.c_void_p"
        if kind in ("CHAR_S", "CHAR_U"):  # char*, const char*: NUL-terminated strings
            return "ctypes.c_char_p"
        if kind in FUNCTION_KINDS:
            raise GeneratorError("unnamed function pointer outside a struct field")
        return f"ctypes.POINTER({self.ctype(pointee)})"

    def callback(self, name: str, fn_type: Any, doc: str) -> Callback:
        """Describe a function type as a CFUNCTYPE signature."""
        res = fn_type.get_result()
        restype = "None" if res.kind.name == "VOID" else self.ctype(res, True)
        args = []  # FUNCTIONNOPROTO is C's "()" (RefreshMetricsCallback): no arguments
        if fn_type.kind.name == "FUNCTIONPROTO":
            args = [self.ctype(a) for a in fn_type.argument_types()]
        return Callback(name, doc, restype, args)

    def collect_names(self) -> None:
        """First pass: know every type name before mapping any field."""
        for c in self.cursors:
            if c.kind.name != "TYPEDEF_DECL":
                continue
            under = c.underlying_typedef_type
            if is_function_pointer(under):
                self.callback_names.add(c.spelling)
                continue
            decl = under.get_declaration()
            if decl.kind.name == "ENUM_DECL":
                self.enum_names.add(c.spelling)
                self.enum_typedefs[decl.get_usr()] = c.spelling
            elif decl.kind.name == "STRUCT_DECL":
                self.struct_names.add(c.spelling)
                self.record_names[decl.get_usr()] = c.spelling
            else:
                raise GeneratorError(f"typedef {c.spelling}: unknown {decl.kind.name}")

    def collect_types(self) -> None:
        """Second pass, in header order: enums, structs, callbacks."""
        for c in self.cursors:
            if c.kind.name != "TYPEDEF_DECL":
                continue
            under = c.underlying_typedef_type
            doc = one_line(c.brief_comment)
            if is_function_pointer(under):
                cb = self.callback(c.spelling, under.get_pointee(), doc)
                self.sdk.callbacks.append(cb)
                continue
            decl = under.get_declaration()
            if decl.kind.name == "ENUM_DECL":
                self.sdk.enums.append(self.enum(c.spelling, decl, doc))
            else:
                self.sdk.structs.append(self.struct(c.spelling, decl, doc))

    def enum(self, name: str, decl: Any, doc: str) -> Enum:
        members = []
        for const in decl.get_children():
            if const.kind.name != "ENUM_CONSTANT_DECL":
                continue  # an attribute of the enum (newer headers mark some deprecated)
            value = const.enum_value
            if const.spelling.endswith("_INTERNAL") and value == INTERNAL_SENTINEL:
                continue  # only there to make the enum 32 bits wide
            py_name = enum_member_name(name, const.spelling)
            members.append((py_name, value, one_line(const.brief_comment)))
        if len({m[0] for m in members}) != len(members):
            raise GeneratorError(f"duplicate member names in {name}")
        return Enum(name, doc, members)

    def struct(self, name: str, decl: Any, doc: str) -> Struct:
        tag = decl.spelling if decl.spelling and decl.spelling != name else None
        definition = decl.get_definition()
        if definition is None:
            return Struct(name, tag, doc, opaque=True)
        struct = Struct(name, tag, doc, opaque=False)
        for f in definition.get_children():
            if f.kind.name != "FIELD_DECL":
                raise GeneratorError(f"{name}: unsupported member {f.kind.name}")
            if f.is_bitfield():
                raise GeneratorError(f"{name}.{f.spelling}: bit fields unsupported")
            if is_function_pointer(f.type):
                # An inline function-pointer field (OrthancPluginContext.InvokeService)
                # gets a CFUNCTYPE of its own, named <struct>_<field>.
                cb_name = f"{name}_{f.spelling}"
                cb_doc = f"Type of {name}.{f.spelling} (the header gives it no name)."
                cb = self.callback(cb_name, f.type.get_pointee(), cb_doc)
                self.sdk.callbacks.append(cb)
                self.callback_names.add(cb_name)
                ctype = cb_name
            else:
                ctype = self.ctype(f.type)
            struct.fields.append((f.spelling, ctype, one_line(f.brief_comment)))
        return struct

    # -- functions -----------------------------------------------------------
    def service_since(self) -> dict[str, tuple[int, int, int]]:
        """``_OrthancPluginService_X`` -> version, from the header's comments.

        A comment on the enumerator's own line wins; otherwise the last group
        heading comment above it applies (``/* ... (new in 1.4.2) */``).
        """
        enums = (c for c in self.cursors if c.kind.name == "ENUM_DECL")
        decl = next(c for c in enums if c.spelling == "_OrthancPluginService")
        since: dict[str, tuple[int, int, int]] = {}
        group: tuple[int, int, int] | None = None
        previous = decl.extent.start.line
        for const in decl.get_children():
            line = const.location.line
            for text in self.lines[previous : line - 1]:  # lines strictly between
                if (
                    "/*" in text
                ):  # a group heading: it sets or clears the group's version
                    group = parse_version(NEW_IN.search(text))
            version = parse_version(NEW_IN.search(self.lines[line - 1])) or group
            if version is not None:
                since[const.spelling] = version
            previous = line
        return since

    def collect_functions(self) -> None:
        since = self.service_since()
        opaque = {s.name for s in self.sdk.structs if s.opaque}
        for c in self.cursors:
            if c.kind.name == "FUNCTION_DECL" and c.is_definition():
                self.sdk.functions.append(self.function(c, since))
                self._free_function(c, opaque)

    def _free_function(self, cursor: Any, opaque: set[str]) -> None:
        """Record ``OrthancPluginFreeX(context, X*)`` as the way to release an X."""
        args = list(cursor.get_arguments())[1:]  # after the context
        if not cursor.spelling.startswith("OrthancPluginFree") or len(args) != 1:
            return
        if args[0].type.kind.name != "POINTER":
            return
        handle = args[0].type.get_pointee().get_declaration().spelling
        if handle not in opaque:
            return  # FreeString, FreeMemoryBuffer: not a handle of the SDK
        if handle in self.sdk.free_functions:
            raise GeneratorError(f"{handle} has two free functions")
        self.sdk.free_functions[handle] = cursor.spelling

    def function(self, cursor: Any, since: dict[str, tuple[int, int, int]]) -> Function:
        args = [(a.spelling, a.type.spelling) for a in cursor.get_arguments()]
        if args and args[0] == ("context", "OrthancPluginContext *"):
            args = args[1:]
        service = params = invoke = None
        calls: list[str] = []
        for call in (n for n in cursor.walk_preorder() if n.kind.name == "CALL_EXPR"):
            if call.spelling == "InvokeService":
                if service is not None:
                    raise GeneratorError(f"{cursor.spelling} invokes several services")
                service, params = self._invocation(list(call.get_arguments()))
                invoke = call
            elif call.spelling == "Free":
                calls.append("context->Free")
            elif call.referenced is not None and self._in_header(call.referenced):
                calls.append(call.spelling)
        prefix = "_OrthancPluginService_"
        return Function(
            name=cursor.spelling,
            service=service[len(prefix) :] if service else None,
            params=params,
            arguments=args,
            result=cursor.result_type.spelling,
            since=self.declared_since(cursor) or (since.get(service) if service else None),
            doc=one_line(cursor.brief_comment),
            calls=sorted(set(calls)),
            body=BodyReader(self, cursor, invoke).read(),
        )

    @staticmethod
    def declared_since(cursor: Any) -> tuple[int, int, int] | None:
        """The version of the function's own ``ORTHANC_PLUGIN_SINCE_SDK`` tag, if the header has one.

        It is more precise than the service's comment: SetRootUri2 invokes
        the old SetPluginProperty service, yet needs Orthanc 1.12.4.
        """
        for child in cursor.get_children():
            if child.kind.name == "ANNOTATE_ATTR":
                version = parse_version(SINCE_SDK.match(child.spelling))
                if version is not None:
                    return version
        return None

    def _invocation(self, args: list[Any]) -> tuple[str, str | None]:
        """(service enumerator, params struct or None) of one InvokeService call."""

        def refs(node: Any) -> list[Any]:
            return [
                n.referenced
                for n in node.walk_preorder()
                if n.kind.name == "DECL_REF_EXPR"
            ]

        service = refs(args[1])
        if len(service) != 1 or service[0].kind.name != "ENUM_CONSTANT_DECL":
            raise GeneratorError("InvokeService with a service that is not a constant")
        # "&params" refers to a local variable (VAR_DECL); "message" to a parameter.
        local = [r for r in refs(args[2]) if r.kind.name == "VAR_DECL"]
        return service[0].spelling, self.ctype(local[0].type) if local else None

    def read(self) -> Sdk:
        self.collect_names()
        self.collect_types()
        self.collect_functions()
        check_unique_names(self.sdk)
        return self.sdk


def check_unique_names(sdk: Sdk) -> None:
    """Fail if two C names would become the same module attribute."""
    names = [e.name for e in sdk.enums] + [c.name for c in sdk.callbacks]
    names += [s.name for s in sdk.structs] + [s.tag for s in sdk.structs if s.tag]
    names += [table.split(":")[0] for table in TABLES] + ["SDK_VERSION", "SdkFunction"]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise GeneratorError(f"names defined twice in the module: {clashes}")


def parse_header(header: Path) -> Sdk:
    """Parse ``header`` with libclang as C99 and return what it declares."""
    from clang import cindex  # imported here so --help works without libclang

    compiler = shutil.which("gcc") or shutil.which("cc") or "gcc"
    # libclang needs the compiler's own headers (stddef.h, stdint.h) to parse libc.
    command = [compiler, "-print-file-name=include"]
    builtin_include = subprocess.check_output(command, text=True).strip()
    tu = cindex.Index.create().parse(
        str(header),
        args=["-x", "c", "-std=c99", f"-I{builtin_include}"],
        options=cindex.TranslationUnit.PARSE_DETAILED_PROCESSING_RECORD,
    )
    errors = [str(d) for d in tu.diagnostics if d.severity >= cindex.Diagnostic.Error]
    if errors:
        raise GeneratorError(
            "libclang could not parse the header: " + "; ".join(errors)
        )
    return HeaderReader(header, tu).read()


# -- output ------------------------------------------------------------------
PREAMBLE = '''\
# Generated by tools/gen_sdk.py from {header} of SDK {version}.
# Do not edit by hand: change tools/gen_sdk.py and run it again.
# SPDX-License-Identifier: GPL-3.0-or-later
"""ctypes declarations of the Orthanc plugin SDK ({header}, SDK {version}).

C enums are IntEnum classes, structs are ctypes.Structure classes and callback
typedefs are CFUNCTYPE types, all named as in C. FUNCTIONS says, for each inline
SDK function, which service it invokes, which params struct it fills and how,
and what it returns. FREE_FUNCTIONS names the function that releases each opaque
handle type; IRREGULAR lists the functions whose body FUNCTIONS cannot fully
describe (the comment above each name says why).
"""

import ctypes
import enum

from ._sdk_types import SdkFunction

SDK_VERSION: tuple[int, int, int] = {tuple!r}


'''
STRUCTS_COMMENT = """\
# Structs are declared first; their fields are assigned below, once every
# type they mention exists.


"""
TABLES = (  # the registries that close the module, in this order
    "ENUMS: tuple[type[enum.IntEnum], ...] = (",
    "STRUCTS: tuple[type[ctypes.Structure], ...] = (",
    "OPAQUE_TYPES: tuple[type[ctypes.Structure], ...] = (",
    "CALLBACKS: dict[str, type] = {",
    "FUNCTIONS: dict[str, SdkFunction] = {",
    "FREE_FUNCTIONS: dict[str, str] = {",
    "IRREGULAR: tuple[str, ...] = (",
)
# ruff's default. The output is laid out as `ruff format` would write it, so that
# formatting the repository never makes the committed module look stale.
LINE_LENGTH = 88


@dataclass
class Seq:
    """A bracketed, comma-separated piece of source, laid out like ruff format does."""

    open: str  # e.g. 'name = ctypes.CFUNCTYPE(' or '('
    items: list[Any]  # str atoms or nested Seq
    close: str  # e.g. ')'
    # One item per line with a trailing comma, even when it would fit.
    explode: bool = False
    # A tuple literal: ruff never puts all of its items on one indented line.
    literal: bool = False

    def inner(self) -> str:
        return ", ".join(i if isinstance(i, str) else i.flat() for i in self.items)

    def flat(self) -> str:
        one_tuple = self.literal and len(self.items) == 1  # (x,) needs its comma
        return f"{self.open}{self.inner()}{',' if one_tuple else ''}{self.close}"


def layout(node: Any, indent: int = 0, suffix: str = "") -> list[str]:
    """Lines for ``node`` at ``indent``: flat if it fits, else the items on one
    indented line if they fit, else one item per line with a trailing comma."""
    pad = " " * indent
    if isinstance(node, str):
        return [pad + node + suffix]
    flat = node.flat()
    if not node.explode and indent + len(flat) + len(suffix) <= LINE_LENGTH:
        return [pad + flat + suffix]
    body = node.inner()
    if not (node.explode or node.literal) and indent + 4 + len(body) <= LINE_LENGTH:
        return [pad + node.open, pad + "    " + body, pad + node.close + suffix]
    lines = [pad + node.open]
    for item in node.items:
        lines.extend(layout(item, indent + 4, ","))
    return [*lines, pad + node.close + suffix]


def docstring(text: str, indent: int) -> str:
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    return " " * indent + f'"""{body}"""'


def render_enum(e: Enum) -> list[str]:
    lines = [
        f"class {e.name}(enum.IntEnum):",
        docstring(e.doc or f"C enum {e.name}.", 4),
        "",
    ]
    for name, value, doc in e.members:
        # Docs go on their own line: ruff wraps code whose trailing comment is long.
        lines += [f"    # {doc}"] if doc else []
        lines.append(f"    {name} = {value}")
    return [*lines, "", ""]


def render_class(s: Struct, users: dict[str, list[str]]) -> list[str]:
    if s.opaque:
        doc = f"Opaque handle (struct {s.tag}): use it only through pointers."
    elif s.doc:
        doc = s.doc
    else:
        used_by = ", ".join(users.get(s.name, ["no SDK function"]))
        doc = f"Parameters given to InvokeService by {used_by}."
    return [f"class {s.name}(ctypes.Structure):", docstring(doc, 4), "", ""]


def render_callback(cb: Callback) -> list[str]:
    comment = [f"# {cb.doc}"] if cb.doc else []
    call = Seq(f"{cb.name} = ctypes.CFUNCTYPE(", [cb.restype, *cb.argtypes], ")")
    return [*comment, *layout(call)]


def render_fields(s: Struct) -> list[str]:
    lines = [f"{s.name}._fields_ = ["]
    for name, ctype, doc in s.fields:
        lines += [f"    # {doc}"] if doc else []
        pair = Seq("(", [py_string(name), ctype], ")", literal=True)
        lines.extend(layout(pair, 4, ","))
    return [*lines, "]"]


def render_function(f: Function) -> Seq:
    def strings(values: list[str], open: str = "(") -> Seq:
        return Seq(open, [py_string(v) for v in values], ")", literal=True)

    def pairs(open: str, values: list[tuple[str, str]]) -> Seq:
        return Seq(open, [strings(list(v)) for v in values], ")", literal=True)

    def optional(value: str | None) -> str:
        return "None" if value is None else py_string(value)

    service = f"_OrthancPluginService.{f.service}" if f.service else "None"
    body = f.body
    fields = [
        f"name={py_string(f.name)}",
        f"service={service}",
        f"params={f.params or 'None'}",
        pairs("arguments=(", f.arguments),
        f"result={py_string(f.result)}",
        f"since={f.since!r}",
        f"doc={py_string(f.doc)}",
        strings(f.calls, "calls=("),
        pairs("locals=(", body.locals),
        pairs("assignments=(", body.assignments),
        f"direct_params={optional(body.direct_params)}",
        f"returns={py_string(body.returns)}",
        f"failure_value={optional(body.failure_value)}",
        f"checks_status={body.checks_status}",
    ]
    return Seq(f"{py_string(f.name)}: SdkFunction(", fields, ")", explode=True)


def render_irregular(functions: list[Function]) -> list[str]:
    """The IRREGULAR tuple, each name under a comment that says why."""
    lines = [TABLES[-1]]
    for f in functions:
        if f.body.irregular:
            for reason in f.body.irregular:
                lines.append(f"    # {' '.join(reason.split())}")
            lines.append(f"    {py_string(f.name)},")
    return [*lines, ")"]


def render(sdk: Sdk, header_name: str) -> str:
    """The whole generated module as text."""
    version = ".".join(map(str, sdk.version))
    users: dict[str, list[str]] = {}
    for f in sdk.functions:
        if f.params:
            users.setdefault(f.params, []).append(f.name)
    out = PREAMBLE.format(header=header_name, version=version, tuple=sdk.version)
    out = out.splitlines()
    for e in sdk.enums:
        out += render_enum(e)
    out += STRUCTS_COMMENT.splitlines()
    for s in sdk.structs:
        out += render_class(s, users)
    out += [f"{s.tag} = {s.name}" for s in sdk.structs if s.tag] + [""]
    for cb in sdk.callbacks:
        out += render_callback(cb)
    out.append("")
    for s in sdk.structs:
        if not s.opaque:
            out += render_fields(s)
    out.append("")
    contents = (
        [e.name for e in sdk.enums],
        [s.name for s in sdk.structs if not s.opaque],
        [s.name for s in sdk.structs if s.opaque],
        [f"{py_string(c.name)}: {c.name}" for c in sdk.callbacks],
        [render_function(f) for f in sdk.functions],
        [f"{py_string(k)}: {py_string(v)}" for k, v in sdk.free_functions.items()],
    )
    for head, items in zip(TABLES, contents):
        close = ")" if head.endswith("(") else "}"
        out += layout(Seq(head, items, close, explode=True))
    out += render_irregular(sdk.functions)
    return "\n".join(out) + "\n"


ENUMS_PREAMBLE = '''\
# Generated by tools/gen_sdk.py from {header} of SDK {version}.
# Do not edit by hand: change tools/gen_sdk.py and run it again.
# SPDX-License-Identifier: GPL-3.0-or-later
"""The SDK's enumerations under Python names, for the Pythonic API.

``OrthancPluginChangeType_StableStudy`` is ``ChangeType.STABLE_STUDY`` here,
the spelling of the official Python plugin. Declared as classes (not built at
import time) so that type checkers and editors know every member.
"""

import enum


class _Named(enum.IntEnum):
    """An ``int`` that prints as its name: ``str(ChangeType.STABLE_STUDY)`` is ``"STABLE_STUDY"``.

    In JSON it stays its number: Python's encoder writes every ``int`` so,
    and Orthanc and the official plugin number these values too. For the
    name in JSON, give ``.name``.
    """

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        # A numeric format ("{{:d}}", "{{:x}}") gives the number; any other the name.
        if spec and spec[-1] in "bcdoxXn":
            return int.__format__(int(self), spec)
        return format(self.name, spec)
'''


def upper_snake(name: str) -> str:
    """``StableStudy`` -> ``STABLE_STUDY``; ``None_`` -> ``NONE``; ``RGB24`` stays."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.rstrip("_")).upper()


def render_python_enums(sdk: Sdk, header_name: str) -> str:
    """The module of Pythonic enumerations: public SDK enums, UPPER_SNAKE members."""
    version = ".".join(map(str, sdk.version))
    out = ENUMS_PREAMBLE.format(header=header_name, version=version).splitlines()
    for e in sdk.enums:
        if not e.name.startswith("OrthancPlugin"):
            continue  # the service and property numbers are the raw layer's business
        out += ["", "", f"class {e.name[len('OrthancPlugin'):]}(_Named):", docstring(e.doc or e.name, 4), ""]
        out += [f"    {upper_snake(name)} = {value}" for name, value, _ in e.members]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--header",
        type=Path,
        default=DEFAULT_HEADER,
        help="SDK header to read (default: %(default)s)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="module to write (default: orthanc_py/_sdk.py)",
    )
    parser.add_argument(
        "--enums-output",
        type=Path,
        default=DEFAULT_ENUMS_OUTPUT,
        help="module of Pythonic enumerations to write (default: orthanc_py/_enums.py)",
    )
    parser.add_argument(
        "--calls-output",
        type=Path,
        default=DEFAULT_CALLS_OUTPUT,
        help="module of generated SDK calls to write (default: orthanc_py/_sdk_calls.py)",
    )
    args = parser.parse_args(argv)
    try:
        sdk = parse_header(args.header)
        text = render(sdk, args.header.name)
        enums = render_python_enums(sdk, args.header.name)
    except GeneratorError as exc:
        print(f"gen_sdk: {exc}", file=sys.stderr)
        return 2
    args.output.write_text(text, encoding="utf-8")
    args.enums_output.write_text(enums, encoding="utf-8")
    args.calls_output.write_text(gen_calls.render(load_generated(args.output)), encoding="utf-8")
    return 0


def load_generated(path: Path) -> Any:
    """Imports a module this script wrote, as a sibling of ``orthanc_py._sdk`` (it imports ``._sdk_types``)."""
    import importlib.util

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    spec = importlib.util.spec_from_file_location("orthanc_py._sdk_just_written", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
