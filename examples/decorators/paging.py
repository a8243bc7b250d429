# SPDX-License-Identifier: GPL-3.0-or-later
"""Paging: GET /sort-studies?offset=&limit= answers the studies sorted by date, a page at a time.

Try it:
    orthanc-py run examples/decorators/paging.py
    curl 'http://localhost:8042/sort-studies?offset=10&limit=5'
"""

from orthanc_py import abort, rest, route


def whole_number(request, name):
    """The query argument ``name`` as an int (0 when absent); 400 for anything else."""
    value = request.args.get(name, "0")
    if not value.isdigit():
        abort(400, f"{name} must be a whole number, not {value!r}")
    return int(value)


@route("/sort-studies")
def sort_studies(request):
    offset = whole_number(request, "offset")
    limit = whole_number(request, "limit")  # 0: no limit

    studies = rest.get_json("/studies?expand")
    studies.sort(key=lambda study: study["MainDicomTags"].get("StudyDate", ""))
    return studies[offset : offset + limit] if limit else studies[offset:]
