# SPDX-License-Identifier: GPL-3.0-or-later
"""Calling pydicom: GET /pydicom/<instance_id> answers pydicom's dump of the instance.

Needs pydicom in orthanc_py's venv (pip install pydicom). Try it:
    orthanc-py run examples/decorators/pydicom_dump.py
    curl http://localhost:8042/pydicom/<instance-id>
"""

import io

import pydicom

from orthanc_py import RestError, abort, rest, route


@route("/pydicom/<instance_id>")
def dump(request, instance_id):
    try:
        dicom = rest.get(f"/instances/{instance_id}/file")
    except RestError as error:
        abort(error.status, f"no instance {instance_id}")
    return str(pydicom.dcmread(io.BytesIO(dicom)))
