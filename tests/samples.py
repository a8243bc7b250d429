# SPDX-License-Identifier: GPL-3.0-or-later
"""What the tests of the documentation samples share: where they are, and the decorator rewrites' servers.

``examples/seed`` holds the official plugin's samples as documented;
``examples/decorators`` the same samples rewritten with orthanc_py's
decorators. ``tests/test_seed_samples.py`` runs what they have in common,
``tests/test_examples_decorators.py`` what only the rewrites do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest

from orthanc_py.server import OrthancServer

from .conftest import EXAMPLES
from .official import OFFICIAL

SEED = EXAMPLES / "seed"
DECORATORS = EXAMPLES / "decorators"
UNKNOWN_ID = "00000000-00000000-00000000-00000000-00000000"


def official_plugin() -> str:
    """The official plugin's library; skips the test when it is not installed."""
    if not os.path.exists(OFFICIAL):
        pytest.skip(f"the official Python plugin is not installed ({OFFICIAL}; Debian: apt-get install orthanc-python)")
    return OFFICIAL


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrthancServer]]:
    """Factory: ``example("paging", config={...})`` starts Orthanc with ``examples/decorators/paging.py``.

    Tests of a module asking for the same example (or ``script``) with the
    same configuration share its server. Every server is stopped at the end
    of the module (all at once: stopping one takes seconds) and must exit
    with code 0; a test about stopping stops its server itself.
    """
    servers: dict[tuple[str, str], OrthancServer] = {}

    def start(name: str, config: dict[str, Any] | None = None, script: Path | None = None) -> OrthancServer:
        script = script or DECORATORS / f"{name}.py"
        key = (str(script), json.dumps(config, sort_keys=True))
        if key not in servers:
            server = OrthancServer(str(tmp_path_factory.mktemp(name)), script=str(script), config=config)
            servers[key] = server.start()
        return servers[key]

    yield start
    with ThreadPoolExecutor(max(len(servers), 1)) as pool:
        codes = list(pool.map(lambda server: server.stop(timeout=60), servers.values()))
    failed = [(script, code) for (script, _), code in zip(servers, codes) if code != 0]
    assert not failed, f"examples that did not stop cleanly: {failed}"
