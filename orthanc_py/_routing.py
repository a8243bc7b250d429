# SPDX-License-Identifier: GPL-3.0-or-later
"""Flask-style route rules, compiled to the regular expressions Orthanc matches.

A pure module (no Orthanc needed): ``/studies/<study_id>/frames/<int:n>``
becomes ``/studies/([^/]+)/frames/([0-9]+)`` plus the names and converters that
turn the captured groups back into Python values. Orthanc does the matching
(each rule is one REST callback), so Python only converts the groups.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


class Converter:
    """Turns one path segment into a value; ``regex`` must hold no capturing group."""

    regex: ClassVar[str] = "[^/]+"

    def convert(self, value: str) -> Any:
        return value


class StringConverter(Converter):
    regex = "[^/]+"


class PathConverter(Converter):
    """Several segments, slashes included."""

    regex = ".+"


class IntConverter(Converter):
    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        return int(value)


class FloatConverter(Converter):
    regex = r"[0-9]+\.[0-9]+"

    def convert(self, value: str) -> float:
        return float(value)


class UUIDConverter(Converter):
    regex = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

    def convert(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)


CONVERTERS: dict[str, type[Converter]] = {
    "string": StringConverter,
    "path": PathConverter,
    "int": IntConverter,
    "float": FloatConverter,
    "uuid": UUIDConverter,
}

_PARAMETER = re.compile(r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*):)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")
_RAW_REGEX_MARKERS = set("()[]^$*+?{}|\\")


class RuleError(ValueError):
    """A route rule that cannot be compiled; the message says what to write instead."""


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready for Orthanc: the regular expression and how to read its groups."""

    rule: str
    regex: str
    names: tuple[str, ...]
    converters: tuple[Converter, ...]

    def parameters(self, groups: Sequence[str]) -> dict[str, Any]:
        """Converts the groups Orthanc captured into the handler's keyword arguments.

        :raises ValueError: when a converter refuses a value.
        """
        if not self.names:
            return {}
        return {name: conv.convert(value) for name, conv, value in zip(self.names, self.converters, groups)}


def compile_path(rule: str) -> CompiledRule:
    """Compiles a route rule.

    ``<name>``, ``<int:name>``, ``<float:name>``, ``<path:name>`` and
    ``<uuid:name>`` capture path parameters. A rule with none of them that
    holds regular-expression syntax is taken as a raw Orthanc regular
    expression, whose groups are handed to the handler as ``request.groups``.

    :raises RuleError: for a rule that does not start with ``/``, an unknown
        converter, or a parameter name used twice.
    """
    if not isinstance(rule, str) or not rule.startswith("/"):
        raise RuleError(f"route rule {rule!r} must be a string starting with '/', such as '/studies/<study_id>'")
    names: list[str] = []
    converters: list[Converter] = []
    parts: list[str] = []
    position = 0
    for match in _PARAMETER.finditer(rule):
        parts.append(re.escape(rule[position:match.start()]))
        kind = match.group("converter") or "string"
        name = match.group("name")
        if kind not in CONVERTERS:
            known = ", ".join(sorted(CONVERTERS))
            raise RuleError(f"route rule {rule!r}: unknown converter '{kind}' (known: {known})")
        if name in names:
            raise RuleError(f"route rule {rule!r}: the parameter '{name}' appears twice")
        converter = CONVERTERS[kind]()
        names.append(name)
        converters.append(converter)
        parts.append(f"({converter.regex})")
        position = match.end()
    if not names:
        if _RAW_REGEX_MARKERS & set(rule):
            return CompiledRule(rule, rule, (), ())
        return CompiledRule(rule, re.escape(rule), (), ())
    parts.append(re.escape(rule[position:]))
    return CompiledRule(rule, "".join(parts), tuple(names), tuple(converters))


def allow_header(methods: Sequence[str]) -> str:
    """The ``Allow`` header for a set of methods.

    Orthanc (up to 1.12 at least) hands plugins GET, POST, PUT and DELETE only;
    it answers HEAD itself, so HEAD is not listed.
    """
    return ",".join(sorted(set(methods)))

