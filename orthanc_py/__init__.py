# SPDX-License-Identifier: GPL-3.0-or-later
"""orthanc_py: write Orthanc plugins in Python, in your own virtual environment.

>>> from orthanc_py import route, on_change, on_stored_instance, ChangeType, rest
>>> @route("/hello/<name>")
... def hello(request, name):
...     return f"Hello {name}!"
"""

from __future__ import annotations

from . import kv, queue, rest
from ._paths import plugin_path
from ._routing import RuleError
from ._runtime import SetupError
from ._version import __version__ as __version__
from .events import (
    AuditLog,
    Change,
    ChangeType,
    IncomingInstance,
    InstanceOrigin,
    ReceivedInstance,
    ResourceType,
    StoredInstance,
    cstore_filter,
    emit_audit_log,
    every,
    instance_filter,
    mark_stable,
    mark_unstable,
    on_audit_log,
    on_change,
    on_received_instance,
    on_shutdown,
    on_startup,
    on_stored_instance,
)
from .rest import RestError
from .scp import Connection, FindQuery, MoveRequest, WorklistQuery, find_scp, move_scp, worklist_scp
from .web import (
    AuthRequest,
    FilterRequest,
    HTTPError,
    Request,
    Response,
    WorkerCrashed,
    abort,
    add_route,
    http_auth,
    http_filter,
    route,
    run_in_worker,
)

__all__ = [
    "AuditLog",
    "AuthRequest",
    "Change",
    "ChangeType",
    "Connection",
    "FilterRequest",
    "FindQuery",
    "HTTPError",
    "IncomingInstance",
    "InstanceOrigin",
    "MoveRequest",
    "ReceivedInstance",
    "Request",
    "ResourceType",
    "Response",
    "RestError",
    "RuleError",
    "SetupError",
    "StoredInstance",
    "WorkerCrashed",
    "WorklistQuery",
    "abort",
    "add_route",
    "cstore_filter",
    "emit_audit_log",
    "every",
    "find_scp",
    "http_auth",
    "http_filter",
    "instance_filter",
    "kv",
    "mark_stable",
    "mark_unstable",
    "move_scp",
    "on_audit_log",
    "on_change",
    "on_received_instance",
    "on_shutdown",
    "on_startup",
    "on_stored_instance",
    "plugin_path",
    "queue",
    "rest",
    "route",
    "run_in_worker",
    "worklist_scp",
]
