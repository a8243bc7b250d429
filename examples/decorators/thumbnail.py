# SPDX-License-Identifier: GPL-3.0-or-later
"""Rendering a thumbnail with Pillow: GET /thumbnail/<instance_id> answers a JPEG of at most 64x64.

Needs Pillow in orthanc_py's venv (pip install Pillow). Try it:
    orthanc-py run examples/decorators/thumbnail.py
    curl -o thumbnail.jpg http://localhost:8042/thumbnail/<instance-id>
"""

import io

from PIL import Image

from orthanc_py import Response, RestError, abort, rest, route


@route("/thumbnail/<instance_id>")
def thumbnail(request, instance_id):
    try:
        png = rest.get(f"/instances/{instance_id}/rendered")
    except RestError as error:
        abort(error.status, f"no instance {instance_id}")
    image = Image.open(io.BytesIO(png))
    image.thumbnail((64, 64), Image.LANCZOS)
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", quality=80)
    return Response(jpeg.getvalue(), content_type="image/jpeg")
