# SPDX-License-Identifier: GPL-3.0-or-later
"""The slow computation of computation.py, offloaded to worker processes: requests run in parallel.

offload=True runs the handler in orthanc_py's pool of worker processes (one
per core; "Python": {"OffloadWorkers": N} in Orthanc's configuration sets
another size), so it no longer holds Orthanc's GIL. No pool to create, no
signal handling: orthanc_py starts the pool on first use and stops it with
Orthanc. The handler must be a top-level function: the workers import it by
name (and do not reach Orthanc's REST API). Try it:
    orthanc-py run examples/decorators/computation_pool.py
    curl http://localhost:8042/computation & curl http://localhost:8042/computation
"""

import math
import time

from orthanc_py import route


def slow_computation():
    """CPU-bound work: about 0.3 seconds (the documentation's 1000 outer loops take about 4)."""
    start = time.time()
    for _ in range(150):
        for j in range(30000):
            math.sqrt(float(j))
    return f"computation done in {time.time() - start:.03f} seconds\n"


@route("/computation", offload=True)
def computation(request):
    return slow_computation()
