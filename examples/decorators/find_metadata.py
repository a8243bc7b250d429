# SPDX-License-Identifier: GPL-3.0-or-later
"""Filtering on metadata: POST /tools/find also takes "Metadata": {name: regular expression}.

Replaces Orthanc's /tools/find: the query goes to Orthanc's own /tools/find,
then only the resources whose metadata match every expression are answered.
Try it:
    orthanc-py run examples/decorators/find_metadata.py
    curl -X POST http://localhost:8042/tools/find \
         -d '{"Level": "Study", "Query": {}, "Metadata": {"LastUpdate": "^2024"}}'
"""

import re

from orthanc_py import RestError, abort, rest, route

FOLDERS = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}


def metadata_patterns(query):
    """The "Metadata" field of the query, compiled; 400 when it is not {name: regex}."""
    wanted = query.pop("Metadata", {})
    if not isinstance(wanted, dict):
        abort(400, '"Metadata" must be an object {"name": "regular expression"}')
    try:
        return {name: re.compile(pattern) for name, pattern in wanted.items()}
    except (re.error, TypeError) as error:
        abort(400, f'"Metadata" holds a bad regular expression: {error}')


@route("/tools/find", methods=["POST"])
def find_with_metadata(request):
    query = request.json()  # a body that is not JSON is answered 400
    if not isinstance(query, dict):
        abort(400, "the query must be a JSON object")
    patterns = metadata_patterns(query)
    expand = query.get("Expand", False)
    try:
        found = rest.post_json("/tools/find", {**query, "Expand": True})
    except RestError as error:
        abort(error.status, str(error))  # Orthanc refused the query itself

    answers = []
    for resource in found:
        path = f"/{FOLDERS[resource['Type']]}/{resource['ID']}"
        try:
            metadata = rest.get_json(f"{path}/metadata?expand")
        except RestError:
            continue  # deleted since the search
        if all(p.match(metadata.get(name, "")) for name, p in patterns.items()):
            answers.append({**resource, "Metadata": metadata} if expand else resource["ID"])
    return answers
