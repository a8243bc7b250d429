# SPDX-License-Identifier: GPL-3.0-or-later
"""A slow computation in a route: it holds the GIL, so it runs one request at a time.

computation_pool.py runs the same route in worker processes. Try it:
    orthanc-py run examples/decorators/computation.py
    curl http://localhost:8042/computation
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


@route("/computation")
def computation(request):
    return slow_computation()
