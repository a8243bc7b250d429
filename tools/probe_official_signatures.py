# SPDX-License-Identifier: GPL-3.0-or-later
"""Measures the argument lists of the official Orthanc Python plugin, inside a real Orthanc.

Starts Orthanc with Debian's ``orthanc-python`` (the official plugin) and a
probe script, then triggers each callback that hands out an object (a REST
call, a C-FIND, a worklist C-FIND, a stored instance...). In each, the probe
calls every function and method it can reach with arguments of a type no
SDK call takes, and reads the plugin's own ``TypeError``:

- with twelve such arguments, the message gives the number of arguments
  (``"function takes exactly 3 arguments (12 given)"``);
- with the right number, and valid values before position ``i``, the
  message names the type expected at position ``i`` (``"argument 2 must be
  str, not Foreign"``, ``"a bytes-like object is required"``...). The call
  never gets past the parsing of its arguments, so nothing is executed;
- methods that take no argument and only read (``Get...``, ``Has...``) are
  called, and the type of what they return is recorded.

The result, ``tests/data/official-plugin-X.Y-signatures.json`` for the
official plugin X.Y installed here (4.0 on Debian 12, 5.0 on Debian 13, 7.1
on Debian testing: ``make test-platforms`` runs it in each), is what
``tests/test_compat_signatures.py`` holds orthanc_py to on that row.

Usage: ``.venv/bin/python tools/probe_official_signatures.py [--output PATH]``
(needs ``orthanc-python`` and DCMTK's ``findscu``).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orthanc_py.server import OrthancServer, find_orthanc, orthanc_version  # noqa: E402
from tests.dicom import make_dicom  # noqa: E402
from tests.official import official_plugin_version, official_signatures_path  # noqa: E402

OFFICIAL_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
OUTPUT = official_signatures_path()

# Runs inside Orthanc, under the official plugin (Debian's Python 3, standard library only).
PROBE = r'''
import json, os, re, sys
import orthanc

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signatures.json")
RESULT = {"functions": {}, "classes": {}, "reached": {}}


class Foreign:
    """A type no SDK call takes."""


class Other:
    """Another one: an error naming it is about a later argument."""


# One value of each kind an argument may be parsed as. The text is a URL no one
# answers, so that HTTP clients fail at once; the integer 0 is a valid index.
VALUES = {"str": "http://127.0.0.1:1/", "bytes": b"\0" * 4096, "int": 0, "float": 0.5}
SETTINGS = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "settings.json")))
HYPOTHESES = SETTINGS["hypotheses"]
ONLY = SETTINGS["only"]  # names to probe ("Class.Method" for methods), or None for all
BAD_TYPES = "Bad types for the arguments"


def wanted(name):
    return ONLY is None or name in ONLY


def refused(error):
    """Whether a TypeError refuses the arguments: the official plugin says so in one message."""
    return BAD_TYPES in str(error) if SETTINGS["official"] else True


def arity(function):
    try:
        function(*[Foreign()] * 12)
    except TypeError as error:
        message = str(error)
    except Exception as error:
        return "%s: %s" % (type(error).__name__, error)
    else:
        return 0  # took twelve arguments without complaint: it ignores them
    match = re.search(r"\((\d+) arguments? expected\)", message)
    if match:
        return int(match.group(1))
    # Python's own words, and orthanc_py's: the counts include self for a method.
    match = re.search(r"takes (\d+) (?:positional )?arguments?(?:\(s\))?,? (?:but|got) (\d+)", message)
    if match:
        return int(match.group(1)) - (int(match.group(2)) - 12)
    # Optional arguments (orthanc_py takes both the 4.0 and the 5.0 forms of some calls): [fewest, most].
    match = re.search(r"takes from (\d+) to (\d+) positional arguments but (\d+)", message)
    if match:
        extra = int(match.group(3)) - 12
        return [int(match.group(1)) - extra, int(match.group(2)) - extra]
    return "TypeError: " + message


def value_of(kind, instances):
    return VALUES[kind] if kind in VALUES else instances.get(kind, Foreign())


def accepts(function, args):
    """Whether the plugin parses these arguments (then the call runs: any other outcome is an acceptance)."""
    try:
        result = function(*args)
    except TypeError as error:
        if refused(error):
            return False, None
        return True, None
    except Exception:
        return True, None
    return True, type(result).__name__


def types_of(function, count, hypothesis, instances):
    """For each position, the kinds of value the plugin accepts there, the others holding the hypothesis's."""
    if hypothesis is None or len(hypothesis) != count:
        return None, None
    base = [value_of(kind, instances) for kind in hypothesis]
    ok, returned = accepts(function, base)
    if not ok:
        return "the hypothesis %s is refused" % hypothesis, None
    kinds = list(VALUES) + sorted(set(instances))
    accepted = []
    for position in range(count):
        here = []
        for kind in kinds:
            args = list(base)
            args[position] = value_of(kind, instances)
            if accepts(function, args)[0]:
                here.append(kind)
        accepted.append(here)
    return accepted, returned


def probe_callable(function, instances, getter, hypothesis):
    entry = {"arity": arity(function)}
    count = entry["arity"][1] if isinstance(entry["arity"], list) else entry["arity"]
    if isinstance(count, int) and count > 0:
        accepted, returned = types_of(function, count, hypothesis, instances)
        if accepted is not None:
            entry["accepts"] = accepted
        if returned is not None:
            entry["returns"] = returned
    elif entry["arity"] == 0 and getter:
        ok, returned = accepts(function, [])
        if returned is not None:
            entry["returns"] = returned
    return entry


INSTANCES = {}


def probe_object(obj, where, instances):
    instances = dict(INSTANCES, **instances)
    name = type(obj).__name__
    methods = RESULT["classes"].setdefault(name, {})
    RESULT["reached"].setdefault(name, where)
    for method in sorted(dir(obj)):
        if method.startswith("_") or not callable(getattr(obj, method)) or not wanted(name + "." + method):
            continue
        if method in methods and methods[method]["arity"] != "not reached":
            continue
        getter = method.startswith(("Get", "Has")) and name != "RestOutput"
        hypothesis = HYPOTHESES.get(name + "." + method)
        methods[method] = probe_callable(getattr(obj, method), instances, getter, hypothesis)
    save()


def save():
    with open(OUT, "w") as f:
        json.dump(RESULT, f, indent=1, sort_keys=True)


def module_level():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "query.dcm"), "rb") as f:
        query = f.read()
    INSTANCES["Image"] = orthanc.CreateImage(orthanc.PixelFormat.GRAYSCALE8, 4, 4)
    INSTANCES["DicomInstance"] = orthanc.CreateDicomInstance(query)
    for name in sorted(dir(orthanc)):
        member = getattr(orthanc, name)
        if name.startswith("_") or isinstance(member, type) or not callable(member) or not wanted(name):
            continue
        if name in CALLBACK_REGISTRATIONS:
            RESULT["functions"][name] = {"arity": "callback registration"}
            continue
        hypothesis = None if name in NOT_RUN else HYPOTHESES.get(name)
        RESULT["functions"][name] = probe_callable(member, INSTANCES, False, hypothesis)
    probe_object(orthanc.CreateImage(orthanc.PixelFormat.GRAYSCALE8, 4, 4), "orthanc.CreateImage()", {})
    probe_object(orthanc.GetPeers(), "orthanc.GetPeers()", {})
    probe_object(orthanc.CreateFindMatcher(query), "orthanc.CreateFindMatcher()", {})
    probe_object(orthanc.CreateDicomInstance(query), "orthanc.CreateDicomInstance()", {})
    for name in sorted(dir(orthanc)):
        cls = getattr(orthanc, name)
        if (isinstance(cls, type) and not issubclass(cls, BaseException) and name not in RESULT["classes"]
                and not name.startswith("_")):
            methods = [m for m in dir(cls) if not m.startswith("_") and callable(getattr(cls, m))
                       and not m.isupper() and wanted(name + "." + m)]
            public = [m for m in vars(cls) if not m.startswith("_")]
            if any(not m.isupper() for m in methods) and not all(m.isupper() for m in public):
                RESULT["classes"].setdefault(name, {m: {"arity": "not reached"} for m in methods})
    save()


def rest(output, uri, **request):
    probe_object(output, "RegisterRestCallback", {})
    output.AnswerBuffer("probed", "text/plain")


def unreached(output, uri, **request):
    """Classes no callback hands out: an object made by their constructor, probed for arity only.

    Twelve arguments fail the parsing before the method's body runs, so the
    empty object is never used.
    """
    for name, methods in sorted(RESULT["classes"].items()):
        if any(entry["arity"] != "not reached" for entry in methods.values()):
            continue
        try:
            # The constructor takes (pointer, borrowed): NULL, borrowed, so nothing is ever freed.
            obj = getattr(orthanc, name)(0, True)
        except Exception as error:
            RESULT["reached"][name] = "no callback hands one out, and orthanc.%s(0, True) raises %s: %s" % (
                name, type(error).__name__, error)
            save()
            continue
        RESULT["reached"][name] = (
            f"no callback hands one out: orthanc.{name}(0, True), a NULL object, probed for arity only"
        )
        for method in methods:
            methods[method] = {"arity": arity(getattr(obj, method))}
            if methods[method]["arity"] == 0:
                methods[method]["arity"] = "0 or more (not called on an empty object)"
        save()
    output.AnswerBuffer("probed", "text/plain")


def find(answers, query, issuerAet, calledAet):
    probe_object(query, "RegisterFindCallback", {})
    probe_object(answers, "RegisterFindCallback", {})


def worklist(answers, query, issuerAet, calledAet):
    probe_object(query, "RegisterWorklistCallback", {})
    probe_object(answers, "RegisterWorklistCallback", {"WorklistQuery": query})


def cstore_filter(instance):
    probe_object(instance, "RegisterIncomingCStoreInstanceFilter", {})
    return True


def stored(instance, instance_id):
    probe_object(instance, "RegisterOnStoredInstanceCallback", {})


# Registrations of Python callbacks: their argument is a function, measured by the callbacks tests.
CALLBACK_REGISTRATIONS = {name for name in dir(orthanc) if name.startswith("Register") and name not in (
    "RegisterDictionaryTag", "RegisterErrorCode", "RegisterPrivateDictionaryTag")}
# Functions the type probe does not run: their arguments are checked by hand (the arity
# is then the plugin's message), or they register things for good.
NOT_RUN = {"CreateDicom", "CreateImageFromBuffer", "LookupDictionary", "RegisterDictionaryTag",
           "RegisterErrorCode", "RegisterPrivateDictionaryTag", "SetRootUri", "ExtendOrthancExplorer",
           "SetDescription"}
module_level()
orthanc.RegisterRestCallback("/probe", rest)
orthanc.RegisterRestCallback("/unreached", unreached)
orthanc.RegisterFindCallback(find)
orthanc.RegisterWorklistCallback(worklist)
orthanc.RegisterIncomingCStoreInstanceFilter(cstore_filter)
orthanc.RegisterOnStoredInstanceCallback(stored)
'''


STUB = ROOT / "orthanc" / "__init__.pyi"


def kind(annotation: str) -> str | None:
    """The kind of value an annotation of the stub asks for: ``"bytes | str"`` -> ``"bytes"``."""
    parts = {part.strip() for part in annotation.split("|")} - {"None"}
    if "bytes" in parts:
        return "bytes"
    if len(parts) == 1:
        (name,) = parts
        if name in ("str", "int", "float") or name.isidentifier():
            return name
    return None


def hypotheses() -> dict[str, list[str | None]]:
    """The argument kinds orthanc_py's stub gives each function and method, as ``{"Class.Method": kinds}``."""
    found: dict[str, list[str | None]] = {}

    def add(name: str, function: ast.FunctionDef) -> None:
        arguments = function.args.posonlyargs + function.args.args
        kinds = [kind(ast.unparse(a.annotation)) if a.annotation else None for a in arguments if a.arg != "self"]
        if None not in kinds:
            found[name] = kinds

    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            add(node.name, node)
        elif isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef):
                    add(f"{node.name}.{member.name}", member)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where to write the table (default: {OUTPUT})")
    parser.add_argument("--orthanc-py", action="store_true",
                        help="probe orthanc_py's orthanc module instead, for the names of the official table")
    args = parser.parse_args(argv)
    only = None
    if args.orthanc_py:
        table = json.loads(OUTPUT.read_text())
        only = sorted(table["functions"]) + [f"{cls}.{method}" for cls, methods in table["classes"].items()
                                               for method in methods]
    with tempfile.TemporaryDirectory(prefix="orthanc-probe-") as folder:
        work = Path(folder)
        (work / "probe.py").write_text(PROBE)
        (work / "settings.json").write_text(json.dumps(
            {"hypotheses": hypotheses(), "only": only, "official": not args.orthanc_py}))
        dicom = make_dicom()
        (work / "query.dcm").write_bytes(dicom)
        (work / "probe.dcm").write_bytes(dicom)
        server = OrthancServer(
            str(work / "orthanc"),
            script=str(work / "probe.py"),
            plugin=None if args.orthanc_py else OFFICIAL_PLUGIN,
            config={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowFindWorklist": True, "DicomAlwaysAllowStore": True},
        )
        server.start()
        try:
            server.get("/probe")  # the probe answers more than once: whatever the status
            common = ["-aet", "PROBE", "-aec", "ORTHANC", "-ta", "5", "-td", "5"]
            subprocess.run(["findscu", *common, "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=*",
                            "127.0.0.1", str(server.dicom_port)], capture_output=True, check=False)
            subprocess.run(["findscu", *common, "-W", "-k", "PatientName=*", "127.0.0.1", str(server.dicom_port)],
                           capture_output=True, check=False)
            subprocess.run(["storescu", *common, "127.0.0.1", str(server.dicom_port), str(work / "probe.dcm")],
                           capture_output=True, check=False)
            time.sleep(1)
            server.get("/unreached")  # last: the other callbacks have had their turn
            probed = json.loads((work / "signatures.json").read_text())
        finally:
            server.stop()
    reference = json.loads((ROOT / "tests" / "data" / "official-plugin-4.0-api.json").read_text())
    version = official_plugin_version()
    probed["about"] = (
        f"Argument lists of the official Orthanc Python plugin {version} (Debian orthanc-python {version}, "
        f"Orthanc {orthanc_version(find_orthanc())}), "
        "measured inside Orthanc by tools/probe_official_signatures.py: 'arity' is the number of positional "
        "arguments (self not counted; 0: takes none and ignores extra ones; a text: the plugin's own message), "
        "'types' the type each position is parsed as (from the plugin's TypeError; the call never runs), "
        "'returns' the type a no-argument getter returned, 'reached' the callback each class's object came from."
    )
    probed["classes_in_module"] = sorted(reference["classes"])
    args.output.write_text(json.dumps(probed, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.output}: {len(probed['functions'])} functions, "
          f"{sum(len(m) for m in probed['classes'].values())} methods of {len(probed['classes'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
