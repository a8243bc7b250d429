# SPDX-License-Identifier: GPL-3.0-or-later
"""The generated SDK bindings ``orthanc_py/_sdk.py`` against the installed header.

Checks that the committed module is what ``tools/gen_sdk.py`` writes today, that
every struct layout matches what a C compiler makes of ``OrthancCPlugin.h``, and
that a few facts read by hand from the header are in the module.
"""

from __future__ import annotations

import ast
import ctypes
import keyword
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "orthanc_py"
SDK_FILE = PACKAGE_DIR / "_sdk.py"
GENERATOR = ROOT / "tools" / "gen_sdk.py"
HEADER = Path("/usr/include/orthanc/OrthancCPlugin.h")

# Loaded under a stand-in package so that orthanc_py/__init__.py (which may need a
# running Orthanc) never runs; the relative import of ._sdk_types still works.
STAND_IN_PACKAGE = "_orthanc_py_sdk_under_test"
LOAD_SNIPPET = f"""
import importlib.util, sys, types
package = types.ModuleType({STAND_IN_PACKAGE!r})
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules[{STAND_IN_PACKAGE!r}] = package
spec = importlib.util.spec_from_file_location({STAND_IN_PACKAGE!r} + "._sdk", {str(SDK_FILE)!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
"""

needs_header = pytest.mark.skipif(
    not HEADER.exists(), reason=f"{HEADER} is absent (Debian orthanc-dev)"
)


def load_sdk(path: Path = SDK_FILE) -> types.ModuleType:
    """Import ``orthanc_py/_sdk.py`` (or a module generated at ``path``) from its file (see LOAD_SNIPPET)."""
    namespace: dict[str, object] = {}
    snippet = LOAD_SNIPPET.replace(repr(str(SDK_FILE)), repr(str(path)))
    if path != SDK_FILE:  # another module under the stand-in package
        snippet = snippet.replace('+ "._sdk"', '+ "._sdk_of_this_header"')
    exec(snippet, namespace)  # our own fixed snippet
    return namespace["module"]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def sdk() -> types.ModuleType:
    return load_sdk()


@pytest.fixture(scope="module")
def header_text() -> str:
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is absent (Debian orthanc-dev)")
    return HEADER.read_text(encoding="utf-8")


def require_libclang() -> None:
    pytest.importorskip(
        "clang.cindex", reason="libclang (PyPI libclang==18.1.1) is not installed"
    )


# -- the committed module is up to date -----------------------------------------


@needs_header
def test_committed_module_is_what_the_generator_writes(tmp_path: Path) -> None:
    require_libclang()
    output = tmp_path / "_sdk.py"
    enums = tmp_path / "_enums.py"
    calls = tmp_path / "_sdk_calls.py"
    subprocess.run(
        [
            sys.executable,
            str(GENERATOR),
            "--header",
            str(HEADER),
            "--output",
            str(output),
            "--enums-output",
            str(enums),
            "--calls-output",
            str(calls),
        ],
        check=True,
    )
    committed = load_sdk()
    this_header = header_version(HEADER.read_text(encoding="utf-8"))
    if this_header < committed.SDK_VERSION:
        # An older row's Orthanc: the committed bindings call every function
        # this header has exactly as it does (the newer ones besides).
        assert_same_interface(load_sdk(output), committed)
        return
    if this_header > committed.SDK_VERSION:
        # A newer Orthanc than the bindings know: they call what they have as it does.
        assert_same_interface(committed, load_sdk(output))
        return
    assert output.read_bytes() == SDK_FILE.read_bytes(), (
        "orthanc_py/_sdk.py is stale: run `python tools/gen_sdk.py` and commit the result"
    )
    assert enums.read_bytes() == (PACKAGE_DIR / "_enums.py").read_bytes(), (
        "orthanc_py/_enums.py is stale: run `python tools/gen_sdk.py` and commit the result"
    )
    assert calls.read_bytes() == (PACKAGE_DIR / "_sdk_calls.py").read_bytes(), (
        "orthanc_py/_sdk_calls.py is stale: run `python tools/gen_sdk.py` and commit the result"
    )


# Structures Orthanc fills and hands to the plugin, which newer SDKs made longer at their end.
GROWN_IN_NEWER_SDKS = {"OrthancPluginHttpRequest"}


def header_version(text: str) -> tuple[int, int, int]:
    """The SDK version a header declares (its ORTHANC_PLUGINS_MINIMAL_*_NUMBER)."""
    numbers = [re.search(rf"#define ORTHANC_PLUGINS_MINIMAL_{part}_NUMBER\s+(\d+)", text) for part in
               ("MAJOR", "MINOR", "REVISION")]
    major, minor, revision = (int(match.group(1)) for match in numbers if match)
    return major, minor, revision


def interface(fn: Any) -> tuple[object, ...]:
    """What calling ``fn`` through InvokeService takes, as the machine sees it.

    Its service number, its arguments (``int`` and ``int32_t`` alike, any
    pointer alike: newer headers changed ``const char*`` bodies to ``const
    void*``), its params struct's field sizes and offsets, what it assigns
    to them and what it returns.
    """
    fields = [(name, ctypes.sizeof(kind), getattr(fn.params, name).offset)
              for name, kind, *_ in getattr(fn.params, "_fields_", [])]
    arguments = tuple((name, "pointer" if "*" in c_type else {"int32_t": "int"}.get(c_type, c_type))
                      for name, c_type in fn.arguments)
    return int(fn.service), arguments, fields, fn.assignments, fn.returns


def assert_same_interface(older: types.ModuleType, newer: types.ModuleType) -> None:
    """Every function of the ``older`` SDK's bindings is called the same way in the ``newer`` one's."""
    # Functions that invoke no service are C code of the header itself (CheckVersionAdvanced...).
    differences = [
        name for name, fn in older.FUNCTIONS.items() if fn.service is not None and (
            name not in newer.FUNCTIONS or interface(fn) != interface(newer.FUNCTIONS[name]))
    ]
    assert differences == [], "functions this header declares otherwise than the committed bindings"
    for enum_class in older.ENUMS:
        newer_enum = getattr(newer, enum_class.__name__)
        assert {m: int(v) for m, v in enum_class.__members__.items()}.items() <= {
            m: int(v) for m, v in newer_enum.__members__.items()}.items(), enum_class.__name__


def test_generated_module_header_comment(sdk: types.ModuleType) -> None:
    first_lines = SDK_FILE.read_text(encoding="utf-8").splitlines()[:3]
    version = ".".join(map(str, sdk.SDK_VERSION))
    assert (
        first_lines[0]
        == f"# Generated by tools/gen_sdk.py from OrthancCPlugin.h of SDK {version}."
    )
    assert "Do not edit by hand" in first_lines[1]
    assert first_lines[2] == "# SPDX-License-Identifier: GPL-3.0-or-later"


def test_module_imports_only_ctypes_enum_and_sdk_types() -> None:
    tree = ast.parse(SDK_FILE.read_text(encoding="utf-8"))
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add("." * node.level + (node.module or ""))
    assert imports == {"ctypes", "enum", "._sdk_types"}


def test_module_imports_quickly() -> None:
    code = (
        "import time\nstart = time.perf_counter()\n"
        + LOAD_SNIPPET
        + "print(time.perf_counter() - start)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    assert float(out.stdout) < 0.2


# -- struct layouts and enum values, checked by a C compiler ----------------------


def c_enumerator(enum_name: str, member: str, header_text: str) -> str:
    """The C enumerator behind a Python member (undoes the generator's renaming)."""
    stem = member
    if stem.endswith("_") and keyword.iskeyword(stem[:-1]):  # None_ <- None
        stem = stem[:-1]
    if re.fullmatch(r"_\d\w*", stem):  # _16bit <- 16bit
        stem = stem[1:]
    for candidate in (f"{enum_name}_{stem}", member):
        if re.search(rf"\b{re.escape(candidate)}\b", header_text):
            return candidate
    raise AssertionError(f"{enum_name}.{member} matches no enumerator of the header")


def probe_source(sdk: types.ModuleType, header_text: str) -> tuple[str, dict[str, int]]:
    """C source printing sizes, alignments, offsets and enum values, and the
    numbers the Python module gives for the same keys."""
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        '#include "OrthancCPlugin.h"',
        "int main(void) {",
    ]
    expected: dict[str, int] = {}

    def emit(key: str, c_expr: str, value: int) -> None:
        lines.append(f'  printf("{key} %lld\\n", (long long) ({c_expr}));')
        expected[key] = value

    for struct in sdk.STRUCTS:
        name = struct.__name__
        emit(f"sizeof:{name}", f"sizeof({name})", ctypes.sizeof(struct))
        emit(f"alignof:{name}", f"_Alignof({name})", ctypes.alignment(struct))
        for field_name, *_ in struct._fields_:
            offset = getattr(struct, field_name).offset
            emit(
                f"offsetof:{name}.{field_name}",
                f"offsetof({name}, {field_name})",
                offset,
            )
            emit(
                f"sizeof:{name}.{field_name}",
                f"sizeof((({name}*)0)->{field_name})",
                getattr(struct, field_name).size,
            )
    for enum_class in sdk.ENUMS:
        emit(f"sizeof:{enum_class.__name__}", f"sizeof({enum_class.__name__})", 4)
        for member, value in enum_class.__members__.items():
            c_name = c_enumerator(enum_class.__name__, member, header_text)
            emit(f"enum:{enum_class.__name__}.{member}", c_name, int(value))
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines), expected


@pytest.fixture(scope="module")
def header_sdk(sdk: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> types.ModuleType:
    """The bindings of the installed header: the committed ones, or generated now for another SDK."""
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is absent (Debian orthanc-dev)")
    if header_version(HEADER.read_text(encoding="utf-8")) == sdk.SDK_VERSION:
        return sdk
    require_libclang()
    output = tmp_path_factory.mktemp("header_sdk") / "_sdk.py"
    scratch = output.parent
    subprocess.run([sys.executable, str(GENERATOR), "--header", str(HEADER), "--output", str(output),
                    "--enums-output", str(scratch / "_enums.py"), "--calls-output", str(scratch / "_sdk_calls.py")],
                   check=True)
    return load_sdk(output)


@needs_header
def test_struct_layouts_and_enum_values_match_the_c_compiler(
    sdk: types.ModuleType, header_sdk: types.ModuleType, header_text: str, tmp_path: Path
) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) on PATH")
    source, expected = probe_source(header_sdk, header_text)
    (tmp_path / "probe.c").write_text(source, encoding="utf-8")
    binary = tmp_path / "probe"
    subprocess.run(
        [
            compiler,
            "-std=c11",
            "-I",
            str(HEADER.parent),
            "-o",
            str(binary),
            str(tmp_path / "probe.c"),
        ],
        check=True,
    )
    output = subprocess.run(
        [str(binary)], check=True, capture_output=True, text=True
    ).stdout
    measured = {
        key: int(value) for key, value in (line.split() for line in output.splitlines())
    }
    mismatches = {
        key: (expected[key], measured.get(key))
        for key in expected
        if expected[key] != measured.get(key)
    }
    assert not mismatches, f"(python, C) differ: {mismatches}"
    if header_sdk is not sdk:  # this row's header is older or newer than the bindings'
        older, newer = sorted((sdk, header_sdk), key=lambda module: module.SDK_VERSION)
        assert_older_layouts_kept(newer, older)
    assert len(header_sdk.STRUCTS) > 90  # every public and params struct of SDK 1.10 is there


def assert_older_layouts_kept(sdk: types.ModuleType, header_sdk: types.ModuleType) -> None:
    """On an older Orthanc, every struct it knows is laid out as the committed bindings say.

    Only a struct Orthanc fills and hands out may have grown at its end
    (the bindings read the new fields only from an Orthanc that has them).
    """
    committed = {struct.__name__: struct for struct in sdk.STRUCTS}
    for struct in header_sdk.STRUCTS:
        newer = committed[struct.__name__]
        for field_name, *_ in struct._fields_:
            old_field, new_field = getattr(struct, field_name), getattr(newer, field_name)
            assert (old_field.offset, old_field.size) == (new_field.offset, new_field.size), (
                f"{struct.__name__}.{field_name}")
        if struct.__name__ in GROWN_IN_NEWER_SDKS:
            assert ctypes.sizeof(newer) >= ctypes.sizeof(struct), struct.__name__
        else:
            assert ctypes.sizeof(newer) == ctypes.sizeof(struct), struct.__name__


# -- completeness against the header ------------------------------------------------


def inline_function_names(header_text: str) -> list[str]:
    """Names of the ORTHANC_PLUGIN_INLINE function definitions, read from the text."""
    pattern = re.compile(
        r"^\s*(?:ORTHANC_PLUGIN_DEPRECATED\s+)?ORTHANC_PLUGIN_INLINE\s+[\w\s\*]*?\b(\w+)\s*\(", re.MULTILINE
    )
    return pattern.findall(header_text)


def test_one_function_entry_per_inline_function(
    sdk: types.ModuleType, header_text: str
) -> None:
    names = inline_function_names(header_text)
    assert len(names) > 150
    this_header = header_version(header_text)
    if this_header == sdk.SDK_VERSION:
        assert list(sdk.FUNCTIONS) == names
    elif this_header < sdk.SDK_VERSION:  # an older SDK's header: the bindings have its functions and newer ones
        assert set(names) < set(sdk.FUNCTIONS)
    else:  # a newer SDK's header: it declares every function of the bindings' (new ones besides)
        assert set(sdk.FUNCTIONS) < set(names)


@needs_header
def test_libclang_finds_as_many_inline_definitions_as_there_are_entries(
    sdk: types.ModuleType,
) -> None:
    require_libclang()
    from clang import cindex

    include = subprocess.run(
        ["gcc", "-print-file-name=include"], check=True, capture_output=True, text=True
    ).stdout.strip()
    tu = cindex.Index.create().parse(
        str(HEADER), args=["-x", "c", "-std=c99", f"-I{include}"]
    )
    in_header = [
        c
        for c in tu.cursor.get_children()
        if c.location.file and Path(c.location.file.name) == HEADER
    ]
    definitions = [
        c.spelling
        for c in in_header
        if c.kind == cindex.CursorKind.FUNCTION_DECL and c.is_definition()
    ]
    this_header = header_version(HEADER.read_text(encoding="utf-8"))
    same = this_header == sdk.SDK_VERSION
    if this_header < sdk.SDK_VERSION:  # an older SDK's header: part of what the bindings hold
        assert set(definitions) < set(sdk.FUNCTIONS)
    elif this_header > sdk.SDK_VERSION:  # a newer SDK's header: what the bindings hold, and more
        assert set(sdk.FUNCTIONS) < set(definitions)
    else:
        assert len(definitions) == len(sdk.FUNCTIONS)
    typedefs = {
        c.spelling: c.underlying_typedef_type
        for c in in_header
        if c.kind == cindex.CursorKind.TYPEDEF_DECL
    }
    callbacks = {n for n, t in typedefs.items() if t.kind == cindex.TypeKind.POINTER}
    enums = {
        n
        for n, t in typedefs.items()
        if t.get_declaration().kind == cindex.CursorKind.ENUM_DECL
    }
    structs = set(typedefs) - callbacks - enums
    if same:
        assert callbacks <= set(sdk.CALLBACKS)
        assert enums == {e.__name__ for e in sdk.ENUMS}
        assert structs == {s.__name__ for s in sdk.STRUCTS + sdk.OPAQUE_TYPES}
    elif this_header < sdk.SDK_VERSION:
        assert callbacks <= set(sdk.CALLBACKS)
        assert enums <= {e.__name__ for e in sdk.ENUMS}
        assert structs <= {s.__name__ for s in sdk.STRUCTS + sdk.OPAQUE_TYPES}
    else:
        assert {e.__name__ for e in sdk.ENUMS} <= enums
        assert {s.__name__ for s in sdk.STRUCTS + sdk.OPAQUE_TYPES} <= structs


# -- facts read by hand from the header ----------------------------------------------


def test_spot_checks(sdk: types.ModuleType) -> None:
    service = sdk._OrthancPluginService
    assert sdk.SDK_VERSION == (1, 13, 0)
    assert service.LogInfo == 1
    assert service.LogWarning == 2
    assert service.LogError == 3
    assert service.GetConfiguration == 13
    assert sdk.OrthancPluginErrorCode.Success == 0
    assert sdk.OrthancPluginErrorCode.InternalError == -1
    assert sdk.OrthancPluginChangeType.StableStudy == 9
    assert sdk.OrthancPluginResourceType.None_ == 4
    assert not hasattr(service, "INTERNAL")

    log_info = sdk.FUNCTIONS["OrthancPluginLogInfo"]
    assert log_info.service is service.LogInfo
    assert log_info.params is None
    assert log_info.arguments == (("message", "const char *"),)
    assert log_info.result == "void"
    assert log_info.doc == "Log an information."

    get_configuration = sdk.FUNCTIONS["OrthancPluginGetConfiguration"]
    assert get_configuration.params is sdk._OrthancPluginRetrieveDynamicString
    assert get_configuration.service is service.GetConfiguration
    assert get_configuration.result == "char *"

    rest = sdk.FUNCTIONS["OrthancPluginRegisterRestCallback"]
    assert rest.params is sdk._OrthancPluginRestCallback
    assert rest.arguments == (
        ("pathRegularExpression", "const char *"),
        ("callback", "OrthancPluginRestCallback"),
    )

    check_version = sdk.FUNCTIONS["OrthancPluginCheckVersion"]
    assert (check_version.service, check_version.params) == (None, None)
    assert check_version.calls == ("OrthancPluginCheckVersionAdvanced",)
    assert sdk.FUNCTIONS["OrthancPluginFreeString"].calls == ("context->Free",)
    assert sdk.FUNCTIONS["OrthancPluginSetRootUri"].calls == ("OrthancPluginGetName",)


def test_since_comes_from_the_header_comments(sdk: types.ModuleType) -> None:
    # "_OrthancPluginService_RegisterWebDavCollection = 1019, /* New in Orthanc 1.10.1 */"
    assert sdk.FUNCTIONS["OrthancPluginRegisterWebDavCollection"].since == (1, 10, 1)
    # "/* Primitives for accessing Orthanc Peers (new in 1.4.2) */" heads a group.
    assert sdk.FUNCTIONS["OrthancPluginGetPeers"].since == (1, 4, 2)
    # "New in SDK 1.11.3" on the enumerator's line.
    assert sdk.FUNCTIONS["OrthancPluginCreateJob2"].since == (1, 11, 3)
    # ORTHANC_PLUGIN_SINCE_SDK("1.12.4") on the function, though its service is an old one.
    assert sdk.FUNCTIONS["OrthancPluginSetRootUri2"].since == (1, 12, 4)
    assert sdk.FUNCTIONS["OrthancPluginSetRootUri2"].service is sdk._OrthancPluginService.SetPluginProperty
    assert sdk.FUNCTIONS["OrthancPluginStoreKeyValue"].since == (1, 12, 8)
    # Nothing documented: no guess.
    assert sdk.FUNCTIONS["OrthancPluginLogInfo"].since is None


def test_field_types(sdk: types.ModuleType) -> None:
    fields = dict(sdk._OrthancPluginRetrieveDynamicString._fields_)
    assert fields["result"] is ctypes.POINTER(ctypes.c_char_p)  # char** out-parameter
    request = dict(sdk.OrthancPluginHttpRequest._fields_)
    assert request["method"] is ctypes.c_int32
    assert request["groups"] is ctypes.POINTER(ctypes.c_char_p)
    answer = dict(sdk._OrthancPluginAnswerBuffer._fields_)
    assert answer["output"] is ctypes.POINTER(sdk.OrthancPluginRestOutput)
    assert (
        dict(sdk._OrthancPluginRestCallback._fields_)["callback"]
        is sdk.OrthancPluginRestCallback
    )
    assert ctypes.POINTER(sdk.OrthancPluginRestOutput) is not ctypes.POINTER(
        sdk.OrthancPluginDicomInstance
    )
    assert sdk._OrthancPluginContext_t is sdk.OrthancPluginContext


def test_invoke_service_through_a_fake_context(sdk: types.ModuleType) -> None:
    """``ctx.contents.InvokeService(ctx, service, byref(params))`` works as declared."""
    calls: list[tuple[bytes, int, object]] = []
    answer = ctypes.create_string_buffer(b"{}")  # outlives the call, like Orthanc's

    @sdk.OrthancPluginContext_InvokeService
    def invoke(context, service, params):
        if service == sdk._OrthancPluginService.GetConfiguration:
            params = sdk._OrthancPluginRetrieveDynamicString.from_address(params)
            out = ctypes.cast(params.result, ctypes.POINTER(ctypes.c_void_p))
            out[0] = ctypes.addressof(answer)
        else:
            params = ctypes.string_at(params)
        calls.append((context.contents.orthancVersion, service, params))
        return sdk.OrthancPluginErrorCode.Success

    context = sdk.OrthancPluginContext(None, b"1.10.1", sdk.OrthancPluginFree(), invoke)
    pointer = ctypes.pointer(context)
    assert (
        pointer.contents.InvokeService(
            pointer, sdk._OrthancPluginService.LogInfo, b"hello"
        )
        == 0
    )
    result = ctypes.c_char_p()
    params = sdk._OrthancPluginRetrieveDynamicString(result=ctypes.pointer(result))
    status = pointer.contents.InvokeService(
        pointer, sdk._OrthancPluginService.GetConfiguration, ctypes.byref(params)
    )
    assert status == 0
    assert result.value == b"{}"
    assert calls[0] == (b"1.10.1", 1, b"hello")
    assert calls[1][:2] == (b"1.10.1", 13)


# -- what the inline bodies do (locals, assignments, returns) -------------------------


def test_body_of_a_function_returning_the_status(sdk: types.ModuleType) -> None:
    rest_api_get = sdk.FUNCTIONS["OrthancPluginRestApiGet"]
    assert rest_api_get.locals == ()
    assert rest_api_get.assignments == (("target", "arg:target"), ("uri", "arg:uri"))
    assert rest_api_get.direct_params is None
    assert rest_api_get.returns == "status"
    assert rest_api_get.failure_value is None
    assert rest_api_get.checks_status is False


def test_body_of_a_void_function(sdk: types.ModuleType) -> None:
    answer = sdk.FUNCTIONS["OrthancPluginAnswerBuffer"]
    assert answer.assignments == (
        ("output", "arg:output"),
        ("answer", "arg:answer"),
        ("answerSize", "arg:answerSize"),
        ("mimeType", "arg:mimeType"),
    )
    assert answer.returns == "void"
    assert answer.checks_status is False


def test_body_returning_a_local(sdk: types.ModuleType) -> None:
    simplified = sdk.FUNCTIONS["OrthancPluginGetInstanceSimplifiedJson"]
    assert simplified.locals == (("result", "char *"),)
    assert ("resultStringToFree", "ref:result") in simplified.assignments
    assert ("instance", "arg:instance") in simplified.assignments
    assert simplified.returns == "local:result"
    assert simplified.failure_value == "NULL"
    assert simplified.checks_status is True

    description = sdk.FUNCTIONS["OrthancPluginGetErrorDescription"]
    assert description.returns == "local:result"
    assert description.failure_value == '"Unknown error code"'

    # "return (OrthancPluginPixelFormat) target;": the cast is dropped.
    pixel_format = sdk.FUNCTIONS["OrthancPluginGetImagePixelFormat"]
    assert pixel_format.returns == "local:target"
    assert pixel_format.failure_value == "OrthancPluginPixelFormat_Unknown"


def test_body_constants(sdk: types.ModuleType) -> None:
    http_get = sdk.FUNCTIONS["OrthancPluginHttpGet"]
    assert ("method", "enum:OrthancPluginHttpMethod.Get") in http_get.assignments
    # "params.target = NULL;" and "params.size = 0;"
    mark_incomplete = dict(
        sdk.FUNCTIONS["OrthancPluginWorklistMarkIncomplete"].assignments
    )
    assert mark_incomplete["query"] == "null"
    assert mark_incomplete["size"] == "int:0"
    # "params.plugin = OrthancPluginGetName();"
    set_root_uri = dict(sdk.FUNCTIONS["OrthancPluginSetRootUri"].assignments)
    assert set_root_uri["plugin"] == "expr:OrthancPluginGetName ( )"


def test_body_passing_an_argument_directly(sdk: types.ModuleType) -> None:
    log_info = sdk.FUNCTIONS["OrthancPluginLogInfo"]
    assert log_info.params is None
    assert log_info.direct_params == "arg:message"
    assert log_info.assignments == ()
    assert log_info.returns == "void"
    delete = sdk.FUNCTIONS["OrthancPluginRestApiDelete"]
    assert (delete.direct_params, delete.returns) == ("arg:uri", "status")


def test_body_returning_an_expression(sdk: types.ModuleType) -> None:
    has_metadata = sdk.FUNCTIONS["OrthancPluginHasInstanceMetadata"]
    assert has_metadata.returns == "expr:( result != 0 )"
    assert has_metadata.failure_value == "-1"
    check_version = sdk.FUNCTIONS["OrthancPluginCheckVersion"]
    assert check_version.returns.startswith(
        "expr:OrthancPluginCheckVersionAdvanced ( context ,"
    )


SOURCE = re.compile(r"arg:\w+|ref:\w+|enum:\w+\.\w+|int:-?\d+|null|expr:.+")


def test_every_params_struct_gets_fields(sdk: types.ModuleType) -> None:
    for name, function in sdk.FUNCTIONS.items():
        if function.params is not None:
            assert function.assignments, f"{name} fills no field of its params"
        else:
            assert not function.assignments, name


def test_every_assignment_source_names_something_real(sdk: types.ModuleType) -> None:
    for name, function in sdk.FUNCTIONS.items():
        arguments = {arg for arg, _ in function.arguments}
        local_names = {local for local, _ in function.locals}
        params = function.params
        fields = {f for f, *_ in params._fields_} if params is not None else set()
        sources = [source for _, source in function.assignments]
        if function.direct_params is not None:
            assert function.params is None, name
            sources.append(function.direct_params)
        for field, _source in function.assignments:
            assert field.split(".")[0] in fields, f"{name}: no field {field}"
        for source in sources:
            assert SOURCE.fullmatch(source), f"{name}: {source!r}"
            kind, _, value = source.partition(":")
            if kind == "arg":
                assert value in arguments, f"{name}: {source} is no argument"
            elif kind == "ref":
                assert value in local_names, f"{name}: {source} is no local"
            elif kind == "enum":
                enum_name, member = value.split(".")
                assert member in getattr(sdk, enum_name).__members__, source


def test_returns_notation(sdk: types.ModuleType) -> None:
    kinds: dict[str, int] = {}
    for name, function in sdk.FUNCTIONS.items():
        kind, _, value = function.returns.partition(":")
        kinds[kind] = kinds.get(kind, 0) + 1
        assert kind in ("void", "status", "local", "expr"), name
        assert (kind == "void") == (function.result == "void"), name
        if kind == "status":
            assert function.result == "OrthancPluginErrorCode", name
        if kind == "local":
            assert value in dict(function.locals), name
            assert function.failure_value is not None, name
        if function.failure_value is not None:
            assert function.checks_status, name
        if kind in ("void", "status"):
            assert function.failure_value is None, name
    assert kinds["local"] > 50 and kinds["status"] > 50 and kinds["void"] > 30


def test_irregular_lists_the_bodies_the_metadata_cannot_describe(
    sdk: types.ModuleType,
) -> None:
    assert set(sdk.IRREGULAR) <= set(sdk.FUNCTIONS)
    assert len(set(sdk.IRREGULAR)) == len(sdk.IRREGULAR)
    # Every function that invokes no service has a hand-written body.
    no_service = {n for n, f in sdk.FUNCTIONS.items() if f.service is None}
    assert no_service <= set(sdk.IRREGULAR)
    assert "OrthancPluginCheckVersionAdvanced" in sdk.IRREGULAR
    # "... != OrthancPluginErrorCode_Success || result == NULL"
    assert "OrthancPluginGetErrorDescription" in sdk.IRREGULAR
    assert "OrthancPluginRestApiGet" not in sdk.IRREGULAR


def header_bodies(header_text: str) -> dict[str, str]:
    """Text of each inline function, up to the next one (read without libclang)."""
    names = inline_function_names(header_text)
    starts = [
        re.search(rf"ORTHANC_PLUGIN_INLINE[\w\s\*]*?\b{name}\s*\(", header_text).start()
        for name in names
    ]
    ends = [*starts[1:], len(header_text)]
    return {n: header_text[s:e] for n, s, e in zip(names, starts, ends)}


def test_assigned_fields_match_the_header_text(
    sdk: types.ModuleType, header_text: str
) -> None:
    """An independent, textual reading of the ``params.x = ...;`` lines (``m.x`` where the local is ``m``)."""
    invoked = re.compile(r"InvokeService\(\s*context\s*,\s*\w+\s*,\s*&(\w+)\s*\)")
    # The C branch only: RegisterStorageArea has "#ifdef __cplusplus ::free #else".
    cplusplus = re.compile(r"#ifdef\s+__cplusplus\b.*?#else", re.DOTALL)
    for name, text in header_bodies(header_text).items():
        if name not in sdk.FUNCTIONS:
            continue  # a newer SDK's function (test_one_function_entry_per_inline_function says which)
        text = cplusplus.sub("", text)
        local = invoked.search(text)
        assignment = re.compile(rf"^\s*{local.group(1) if local else 'params'}\.([\w.]+)\s*=[^=]", re.MULTILINE)
        fields = tuple(f for f, _ in sdk.FUNCTIONS[name].assignments)
        assert fields == tuple(assignment.findall(text)), name


def test_free_functions(sdk: types.ModuleType) -> None:
    free = sdk.FREE_FUNCTIONS
    assert free["OrthancPluginImage"] == "OrthancPluginFreeImage"
    assert free["OrthancPluginDicomInstance"] == "OrthancPluginFreeDicomInstance"
    assert free["OrthancPluginFindMatcher"] == "OrthancPluginFreeFindMatcher"
    assert free["OrthancPluginPeers"] == "OrthancPluginFreePeers"
    assert free["OrthancPluginJob"] == "OrthancPluginFreeJob"
    opaque = {t.__name__ for t in sdk.OPAQUE_TYPES}
    for handle, function_name in free.items():
        assert handle in opaque
        function = sdk.FUNCTIONS[function_name]
        assert function.arguments[0][1].endswith(f"{handle} *"), function_name
        assert len(function.arguments) == 1
    # Every OrthancPluginFree* function taking one opaque handle is listed.
    for name, function in sdk.FUNCTIONS.items():
        if name.startswith("OrthancPluginFree") and len(function.arguments) == 1:
            pointee = function.arguments[0][1].removeprefix("const ").rstrip(" *")
            assert (pointee in opaque) == (free.get(pointee) == name), name


# -- the loader's own SDK declarations (loader/orthanc_sdk_subset.h) -------------------

SUBSET_HEADER = ROOT / "loader" / "orthanc_sdk_subset.h"

# One program, compiled once against the real header and once against the
# loader's declarations: both must print the same lines. It reads the layout
# and the numbers, then calls the inline functions through a recording
# InvokeService and a few version strings, as Orthanc would.
SUBSET_PROBE = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#ifdef USE_SDK_HEADER
#include <orthanc/OrthancCPlugin.h>
#else
#include "orthanc_sdk_subset.h"
#endif

static int last_service = -1;
static const void *last_params = NULL;

static const char *description = "probe description";
static OrthancPluginErrorCode answer = OrthancPluginErrorCode_Success;

static OrthancPluginErrorCode record(OrthancPluginContext *context, _OrthancPluginService service,
                                     const void *params)
{
  (void)context;
  last_service = (int)service;
  last_params = params;
  if (service == _OrthancPluginService_GetErrorDescription)
  {
    const _OrthancPluginGetErrorDescription *p = params;
    printf("GetErrorDescription of %d\n", (int)p->error);
    *p->target = description;
  }
  return answer;
}

static OrthancPluginErrorCode route(OrthancPluginRestOutput *output, const char *url,
                                    const OrthancPluginHttpRequest *request)
{
  (void)output, (void)url, (void)request;
  return OrthancPluginErrorCode_Success;
}

ORTHANC_PLUGINS_API const char exported_marker[] = "x";

int main(void)
{
  static const char *versions[] = {"1.10.1", "1.10.0", "1.9.7", "1.11.0", "1.10.2", "2.0.0", "0.99.99",
                                   "mainline", "garbage", "1.10", "", "10.1.1"};
  static const int expected[][3] = {{1, 10, 1}, {1, 9, 0}, {1, 10, 2}, {2, 0, 0}, {0, 0, 0}};
  OrthancPluginContext context = {NULL, "1.10.1", NULL, record};
  const char *message = "probe message";

  printf("sizeof context %zu\n", sizeof(OrthancPluginContext));
  printf("offset pluginsManager %zu\n", offsetof(OrthancPluginContext, pluginsManager));
  printf("offset orthancVersion %zu\n", offsetof(OrthancPluginContext, orthancVersion));
  printf("offset Free %zu\n", offsetof(OrthancPluginContext, Free));
  printf("offset InvokeService %zu\n", offsetof(OrthancPluginContext, InvokeService));
  printf("sizeof error code %zu\n", sizeof(OrthancPluginErrorCode));
  printf("sizeof service %zu\n", sizeof(_OrthancPluginService));
  printf("error Success %d Plugin %d NetworkProtocol %d\n", (int)OrthancPluginErrorCode_Success,
         (int)OrthancPluginErrorCode_Plugin, (int)OrthancPluginErrorCode_NetworkProtocol);
  printf("service LogInfo %d LogWarning %d LogError %d\n", (int)_OrthancPluginService_LogInfo,
         (int)_OrthancPluginService_LogWarning, (int)_OrthancPluginService_LogError);
  printf("minimal %d.%d.%d\n", ORTHANC_PLUGINS_MINIMAL_MAJOR_NUMBER, ORTHANC_PLUGINS_MINIMAL_MINOR_NUMBER,
         ORTHANC_PLUGINS_MINIMAL_REVISION_NUMBER);

  OrthancPluginLogInfo(&context, message);
  printf("LogInfo -> service %d, message passed %d\n", last_service, last_params == message);
  OrthancPluginLogWarning(&context, message);
  printf("LogWarning -> service %d, message passed %d\n", last_service, last_params == message);
  OrthancPluginLogError(&context, message);
  printf("LogError -> service %d, message passed %d\n", last_service, last_params == message);

  printf("service GetErrorDescription %d RegisterRestCallbackNoLock %d AnswerBuffer %d\n",
         (int)_OrthancPluginService_GetErrorDescription, (int)_OrthancPluginService_RegisterRestCallbackNoLock,
         (int)_OrthancPluginService_AnswerBuffer);
  printf("AnswerBuffer size %zu offsets %zu %zu %zu %zu\n", sizeof(_OrthancPluginAnswerBuffer),
         offsetof(_OrthancPluginAnswerBuffer, output), offsetof(_OrthancPluginAnswerBuffer, answer),
         offsetof(_OrthancPluginAnswerBuffer, answerSize), offsetof(_OrthancPluginAnswerBuffer, mimeType));
  printf("RestCallback size %zu offsets %zu %zu\n", sizeof(_OrthancPluginRestCallback),
         offsetof(_OrthancPluginRestCallback, pathRegularExpression),
         offsetof(_OrthancPluginRestCallback, callback));
  printf("GetErrorDescription size %zu offsets %zu %zu\n", sizeof(_OrthancPluginGetErrorDescription),
         offsetof(_OrthancPluginGetErrorDescription, target), offsetof(_OrthancPluginGetErrorDescription, error));
  OrthancPluginRegisterRestCallbackNoLock(&context, "/probe", route);
  const _OrthancPluginRestCallback *rest = last_params;
  printf("RegisterRestCallbackNoLock -> service %d, regex %s, callback passed %d\n", last_service,
         rest->pathRegularExpression, rest->callback == route);
  printf("GetErrorDescription -> %s\n", OrthancPluginGetErrorDescription(&context, OrthancPluginErrorCode_Plugin));
  description = NULL;
  printf("GetErrorDescription, none -> %s\n",
         OrthancPluginGetErrorDescription(&context, OrthancPluginErrorCode_Plugin));
  description = "probe description";
  answer = OrthancPluginErrorCode_Plugin;
  printf("GetErrorDescription, refused -> %s\n",
         OrthancPluginGetErrorDescription(&context, OrthancPluginErrorCode_Success));
  answer = OrthancPluginErrorCode_Success;

  for (size_t v = 0; v < sizeof(versions) / sizeof(versions[0]); v++)
  {
    context.orthancVersion = versions[v];
    for (size_t e = 0; e < sizeof(expected) / sizeof(expected[0]); e++)
      printf("Orthanc %s, needs %d.%d.%d -> %d\n", versions[v], expected[e][0], expected[e][1], expected[e][2],
             OrthancPluginCheckVersionAdvanced(&context, expected[e][0], expected[e][1], expected[e][2]));
  }
  return exported_marker[0] == 'x' ? 0 : 1;
}
"""


def run_subset_probe(tmp_path: Path, *flags: str) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "no C compiler (cc) on PATH: install one (Debian: apt-get install gcc)"
    source = tmp_path / "subset_probe.c"
    source.write_text(SUBSET_PROBE, encoding="utf-8")
    binary = tmp_path / ("probe" + "".join(f.replace("-", "_").replace("/", "_") for f in flags))
    subprocess.run([compiler, "-std=c11", "-Wall", "-Wextra", "-Werror", *flags, "-o", str(binary), str(source)],
                   check=True)
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout


@needs_header
def test_the_loaders_sdk_declarations_agree_with_the_header(tmp_path: Path) -> None:
    ours = run_subset_probe(tmp_path, f"-I{SUBSET_HEADER.parent}")
    theirs = run_subset_probe(tmp_path, "-DUSE_SDK_HEADER", f"-I{HEADER.parent.parent}")
    if header_version(HEADER.read_text(encoding="utf-8")) != (1, 10, 1):
        # A newer SDK's header says it needs that newer Orthanc; the loader needs 1.10.1.
        assert "minimal 1.10.1" in ours.splitlines()
        ours, theirs = (
            "\n".join(line for line in text.splitlines() if not line.startswith("minimal ")) for text in (ours, theirs)
        )
    assert ours.splitlines() == theirs.splitlines()
    # The probe did exercise something: the interesting lines are there.
    assert "service LogInfo 1 LogWarning 2 LogError 3" in ours
    assert "Orthanc mainline, needs 2.0.0 -> 1" in ours
    assert "Orthanc 1.10.0, needs 1.10.1 -> 0" in ours
    assert "Orthanc garbage, needs 0.0.0 -> 0" in ours
    assert "service GetErrorDescription 17 RegisterRestCallbackNoLock 1004 AnswerBuffer 2000" in ours
    assert "RegisterRestCallbackNoLock -> service 1004, regex /probe, callback passed 1" in ours
    assert "GetErrorDescription -> probe description" in ours
    assert "GetErrorDescription, refused -> Unknown error code" in ours


def test_the_pythonic_enums_print_their_names() -> None:
    from orthanc_py._enums import ChangeType, ResourceType

    change = ChangeType.STABLE_STUDY
    assert (str(change), f"{change}", f"{change:>14}", "{}".format(change)) == (  # noqa: UP032 (str.format is what is checked)
        "STABLE_STUDY", "STABLE_STUDY", "  STABLE_STUDY", "STABLE_STUDY")
    # They stay ints: numeric formats, comparisons and the SDK's calls take the number.
    assert (f"{change:d}", f"{change:#x}", int(change)) == ("9", "0x9", 9)
    assert change == 9 and ResourceType(1) is ResourceType.STUDY
