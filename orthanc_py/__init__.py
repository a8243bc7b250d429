# SPDX-License-Identifier: GPL-3.0-or-later
"""orthanc_py: write Orthanc plugins in Python, in your own virtual environment.

>>> from orthanc_py import route, on_change, on_stored_instance, ChangeType, rest
>>> @route("/hello/<name>")
... def hello(request, name):
...     return f"Hello {name}!"
"""

from __future__ import annotations

from . import rest
from ._paths import plugin_path
from ._routing import RuleError
from ._runtime import SetupError
from ._version import __version__ as __version__
from .events import (
    Change,
    ChangeType,
    IncomingInstance,
    InstanceOrigin,
    ReceivedInstance,
    ResourceType,
    StoredInstance,
    cstore_filter,
    every,
    instance_filter,
    on_change,
    on_received_instance,
    on_shutdown,
    on_startup,
    on_stored_instance,
)
from .rest import RestError
from .web import (
    FilterRequest,
    HTTPError,
    Request,
    Response,
    WorkerCrashed,
    abort,
    add_route,
    http_filter,
    route,
    run_in_worker,
)

__all__ = [
    "Change",
    "ChangeType",
    "FilterRequest",
    "HTTPError",
    "IncomingInstance",
    "InstanceOrigin",
    "ReceivedInstance",
    "Request",
    "ResourceType",
    "Response",
    "RestError",
    "RuleError",
    "SetupError",
    "StoredInstance",
    "WorkerCrashed",
    "abort",
    "add_route",
    "cstore_filter",
    "every",
    "http_filter",
    "instance_filter",
    "on_change",
    "on_received_instance",
    "on_shutdown",
    "on_startup",
    "on_stored_instance",
    "plugin_path",
    "rest",
    "route",
    "run_in_worker",
]
