# SPDX-License-Identifier: GPL-3.0-or-later
"""Hello world: a line in Orthanc's log, and a first route.

Try it:
    orthanc-py run examples/decorators/hello.py
    curl http://localhost:8042/hello
"""

from orthanc_py import route

print("Hello world!")  # a warning line in Orthanc's log


@route("/hello")
def hello(request):
    return "Hello world!\n"
