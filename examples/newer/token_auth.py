# SPDX-License-Identifier: GPL-3.0-or-later
"""Bearer tokens for the whole server, Orthanc Explorer included (Orthanc 1.12.9 and later).

The tokens come from Orthanc's configuration::

    "ApiTokens": {"s3cr3t-alice": {"user": "alice", "admin": false},
                  "s3cr3t-root": {"user": "root", "admin": true}}

A request without a known token gets 401, or, from a browser, is sent to
``/login``; ``/tools/...`` is for administrators (403 for others); ``/me``
says who the token belongs to. Orthanc's own ``RegisteredUsers`` no longer
apply once a plugin authenticates.
"""

import json

import orthanc
from orthanc_py import HTTPError, abort, http_auth, route

TOKENS = json.loads(orthanc.GetConfiguration()).get("ApiTokens", {})


@http_auth
def check_token(request):
    if request.path == "/login":
        return {"user": None}
    user = TOKENS.get(request.headers.get("Authorization", "").removeprefix("Bearer "))
    if user is None:
        if "text/html" in request.headers.get("Accept", ""):
            raise HTTPError(307, headers={"Location": "/login"})
        return None  # 401
    if request.path.startswith("/tools/") and not user.get("admin"):
        abort(403)
    return user


@route("/me")
def me(request):
    return request.auth


@route("/login")
def login(request):
    return "Send your token: Authorization: Bearer <token> (ask your administrator for one).\n"
