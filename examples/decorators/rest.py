# SPDX-License-Identifier: GPL-3.0-or-later
"""Extending the REST API: plain routes, and routes with path parameters.

Try it:
    orthanc-py run examples/decorators/rest.py
    curl 'http://localhost:8042/toto?answer=42'
    curl http://localhost:8042/hello/world
    curl http://localhost:8042/add/2/40
    curl http://localhost:8042/patients-summary/<patient-id>
"""

from orthanc_py import RestError, abort, rest, route


@route("/toto")
@route("/tata")
def ok(request):
    print(f"Accessing uri: {request.path}")
    print(f"  method: {request.method}, query: {request.args}")
    return "ok\n"


@route("/hello/<name>")
def hello(request, name):
    return f"Hello {name}!\n"


@route("/add/<int:a>/<int:b>")
def add(request, a, b):
    return {"a": a, "b": b, "sum": a + b}  # a dict is answered as JSON


@route("/patients-summary/<patient_id>")
def patient_summary(request, patient_id):
    try:
        patient = rest.get_json(f"/patients/{patient_id}")
    except RestError as error:
        abort(error.status, f"no patient {patient_id}")
    return {
        "name": patient["MainDicomTags"].get("PatientName"),
        "studies": len(patient["Studies"]),
    }
