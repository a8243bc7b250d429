# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures that start real Orthanc servers with orthanc_py loaded."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from hypothesis import settings

from orthanc_py.server import OrthancServer

# In CI, the same examples every run: a failure there can be replayed here.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture
def make_orthanc(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """Factory: ``make_orthanc(script_text_or_path, config=..., start=True)``.

    A ``str`` holding a newline is taken as the script's source and written
    to a file; a :class:`~pathlib.Path` is used as is. Every server is
    stopped at the end of the test.
    """
    servers: list[OrthancServer] = []

    def make(script: Any = None, start: bool = True, name: Optional[str] = None, **kwargs: Any) -> OrthancServer:
        workdir = tmp_path / (name or f"orthanc{len(servers)}")
        workdir.mkdir()
        if isinstance(script, str):
            path = workdir / "script.py"
            path.write_text(textwrap.dedent(script))
            script = str(path)
        server = OrthancServer(str(workdir), script=None if script is None else str(script), **kwargs)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        try:
            server.stop(timeout=60)
        except Exception:
            pass


def pytest_report_header(config: pytest.Config) -> str:
    from orthanc_py import plugin_path

    return f"orthanc_py loader: {plugin_path()}; Orthanc: {os.environ.get('ORTHANC_BINARY', 'Orthanc')}"


from .fixtures_dicom import storescp  # noqa: E402,F401  (the DCMTK C-STORE receiver fixture)
