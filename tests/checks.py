# SPDX-License-Identifier: GPL-3.0-or-later
"""What the sample tests check over and over: uploads, answers, printed log lines."""

from __future__ import annotations

import re
from typing import Any

from orthanc_py.server import HttpAnswer, OrthancServer


def printed(text: str) -> str:
    """A regular expression for the log line that ``print(text)`` (one line) writes.

    orthanc_py logs it as an Orthanc warning line (``W... file:line] text``);
    the official plugin writes it bare on Orthanc's standard output.
    """
    return rf"^(?:[WIE]\d{{4}} [^\]]*\] (?:\(plugins\) )?)?{re.escape(text)}$"


def upload(server: OrthancServer, dicom: bytes) -> dict[str, Any]:
    """POSTs one DICOM file to ``/instances``; returns Orthanc's answer (``ID``, ``ParentStudy``...)."""
    answer = server.post("/instances", dicom)
    assert answer.status == 200, f"upload refused: {answer.status} {answer.text}"
    return answer.json()


def assert_answer(answer: HttpAnswer, status: int, content_type: str) -> None:
    assert answer.status == status, f"expected {status}, got {answer.status}: {answer.text[:500]}"
    assert answer.headers.get("content-type", "").split(";")[0] == content_type, answer.headers


def assert_error(answer: HttpAnswer, status: int, message: str) -> None:
    """``abort(status, message)``: the status, and a JSON body whose message holds ``message``."""
    assert_answer(answer, status, "application/json")
    body = answer.json()
    assert body["status"] == status and message in body["message"], body


def assert_method_not_allowed(answer: HttpAnswer, allowed: str) -> None:
    assert answer.status == 405, f"expected 405, got {answer.status}: {answer.text[:500]}"
    assert answer.headers.get("allow") == allowed, answer.headers
