# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module takes the official plugin's argument lists, types included.

``tests/data/official-plugin-X.Y-signatures.json`` is the official plugin X.Y
as measured inside Orthanc by ``tools/probe_official_signatures.py``: 4.0
(Debian 12), 5.0 (Debian 13) and 7.1 (Debian testing). Here the same probe
runs inside Orthanc under orthanc_py, for the names of the table of the
official plugin installed on this row, and each function and method must
take as many arguments, accept a value of each kind the official one accepts
at each position (``str`` where it takes a text, ``bytes`` where it takes a
buffer...) and return the same type.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .official import official_signatures_path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL_40 = json.loads(official_signatures_path("4.0").read_text())
# The official plugin of this row (4.0 where Debian's orthanc-python is not installed).
OFFICIAL = json.loads(official_signatures_path().read_text())
API = json.loads((ROOT / "tests" / "data" / "official-plugin-4.0-api.json").read_text())
# The official plugin 4.0 hands no Job or StorageArea to Python (no callback gives one, and an
# object made by their constructor is refused: "Invalid object"): no script calls their methods.
UNREACHABLE_IN_OFFICIAL = {"Job", "StorageArea"}
# What the official plugins 5.0 and 7.1 reach of the SDK of Orthanc 1.11 to 1.13, which the
# orthanc module does not reach yet (`orthanc-py sdk-coverage` on such an Orthanc).
NEWER_SDK: set[str] = set()


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same probe, under orthanc_py."""
    output = tmp_path_factory.mktemp("signatures") / "orthanc_py.json"
    subprocess.run([sys.executable, str(ROOT / "tools" / "probe_official_signatures.py"), "--orthanc-py",
                    "--output", str(output)], check=True, timeout=240)
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def entries(table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"Name": entry, "Class.Method": entry}`` of a probe table."""
    found = dict(table["functions"])
    for cls, methods in table["classes"].items():
        found.update({f"{cls}.{method}": entry for method, entry in methods.items()})
    return found


def test_the_table_covers_every_function_and_class_of_the_official_module() -> None:
    OFFICIAL = OFFICIAL_40  # the introspection listing is the 4.0 plugin's
    methods = {f"{cls}.{m[len('method:'):]}" for cls, members in API["classes"].items()
               for m in members if m.startswith("method:") and cls != "OrthancException"}
    measured = set(entries(OFFICIAL))
    assert set(API["functions"]) <= measured
    assert {m for m in methods if not m.startswith("__loader__.")} <= measured
    not_measured = {name for name, entry in entries(OFFICIAL).items() if entry["arity"] == "not reached"}
    assert not_measured == set()
    unreachable = {name.split(".")[0] for name, entry in entries(OFFICIAL).items()
                   if entry["arity"] == "ValueError: Invalid object"}
    assert unreachable == UNREACHABLE_IN_OFFICIAL
    assert all(name in OFFICIAL["reached"] for name in OFFICIAL["classes"])
    # Every position's accepted kinds were measured (a text here would say orthanc_py's guess was refused).
    assert all(isinstance(entry.get("accepts", []), list) for entry in entries(OFFICIAL).values())
    # The official SendHttpStatus keeps C's (text, size) as two arguments.
    assert OFFICIAL["classes"]["RestOutput"]["SendHttpStatus"] == {
        "arity": 3, "accepts": [["int"], ["str"], ["int"]], "returns": "NoneType"}


def test_orthanc_py_takes_the_official_argument_lists(ours: dict[str, Any]) -> None:
    theirs, mine = entries(OFFICIAL), entries(ours)
    differences = []
    for name, official in sorted(theirs.items()):
        if name.split(".")[0] in UNREACHABLE_IN_OFFICIAL:
            continue
        entry = mine.get(name)
        if entry is None:
            if name not in NEWER_SDK:
                differences.append(f"{name}: missing from orthanc_py")
            continue
        ours_arity = entry["arity"]
        fits = (official["arity"] == ours_arity if not isinstance(ours_arity, list)
                else ours_arity[0] <= official["arity"] <= ours_arity[1])
        if isinstance(official["arity"], int) and not fits:
            differences.append(f"{name}: takes {ours_arity} argument(s), the official {official['arity']}")
            continue
        for position, kinds in enumerate(official.get("accepts", [])):
            if {"str", "bytes", "int", "float"} <= set(kinds):
                continue  # parsed as any object (as 7.1 does in places), checked later if at all
            accepted = entry.get("accepts", [[]] * len(official["accepts"]))[position]
            for kind in kinds:
                if kind not in accepted:
                    differences.append(f"{name}: argument {position + 1} refuses {kind} (the official accepts it; "
                                       f"orthanc_py: {accepted})")
        if "returns" in official and entry.get("returns", official["returns"]) != official["returns"]:
            differences.append(f"{name}: returns {entry['returns']}, the official {official['returns']}")
    assert differences == [], "\n".join(differences)


def test_the_newer_sdk_list_names_only_what_orthanc_py_lacks() -> None:
    # As the orthanc module reaches more of the newer SDK, the list shrinks with it.
    import orthanc

    newer = set(entries(json.loads(official_signatures_path("7.1").read_text())))
    assert newer >= NEWER_SDK
    reached = {name for name in NEWER_SDK if hasattr(orthanc, name.split(".")[0]) and (
        "." not in name or hasattr(getattr(orthanc, name.split(".")[0]), name.split(".")[1]))}
    assert reached == set()
