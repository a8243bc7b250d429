# SPDX-License-Identifier: GPL-3.0-or-later
"""Route rules compiled to Orthanc regular expressions (pure Python, no Orthanc)."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orthanc_py._routing import RuleError, allow_header, compile_path

segment = st.text(
    alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1, max_size=20
)


def match(rule: str, path: str):
    compiled = compile_path(rule)
    # Orthanc matches with Boost's Perl syntax, where "." also matches a newline.
    found = re.fullmatch(compiled.regex, path, re.DOTALL)
    return None if found is None else compiled.parameters(found.groups())


@given(study=segment, n=st.integers(min_value=0, max_value=10**12))
def test_string_and_int_parameters_round_trip(study, n):
    assert match("/studies/<study_id>/frames/<int:n>", f"/studies/{study}/frames/{n}") == {"study_id": study, "n": n}


@given(rest=st.lists(segment, min_size=1, max_size=4).map("/".join))
def test_path_parameters_take_slashes(rest):
    assert match("/files/<path:rest>", f"/files/{rest}") == {"rest": rest}


@given(value=st.uuids())
def test_uuid_parameters_become_uuids(value):
    assert match("/jobs/<uuid:job>", f"/jobs/{value}") == {"job": value}
    assert isinstance(match("/jobs/<uuid:job>", f"/jobs/{value}")["job"], uuid.UUID)


@given(x=st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda f: f"{f:.3f}"))
def test_float_parameters(x):
    assert match("/scale/<float:x>", f"/scale/{x}") == {"x": float(x)}


def test_values_a_converter_refuses_do_not_match():
    assert match("/frames/<int:n>", "/frames/abc") is None
    assert match("/studies/<study_id>", "/studies/a/b") is None


def test_literal_text_is_escaped():
    compiled = compile_path("/a.b+c/<x>")
    assert re.fullmatch(compiled.regex, "/a.b+c/1")
    assert not re.fullmatch(compiled.regex, "/aXbbc/1")


def test_a_raw_orthanc_regex_is_kept():
    compiled = compile_path("/(to)(t)o")
    assert compiled.regex == "/(to)(t)o" and compiled.names == ()


@pytest.mark.parametrize(
    "rule, message",
    [
        ("studies", "must be a string starting with '/'"),
        ("/a/<bogus:x>", "unknown converter 'bogus'"),
        ("/a/<x>/<x>", "the parameter 'x' appears twice"),
    ],
)
def test_bad_rules_say_what_to_write(rule, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        compile_path(rule)


def test_allow_header_lists_the_methods():
    assert allow_header(["POST", "GET"]) == "GET,POST"
