# SPDX-License-Identifier: GPL-3.0-or-later
"""An audit trail: who sent which study where (Orthanc 1.12.9 and later).

``POST /studies/{id}/send-to/{modality}`` sends a study with Orthanc's
C-STORE and emits an audit log; every audit log, this plugin's or another
plugin's, is appended to the file ``AuditTrail`` names in Orthanc's
configuration (one JSON object per line), which ``GET /audit-trail`` answers.
"""

import json
import threading

import orthanc
from orthanc_py import emit_audit_log, on_audit_log, rest, route

TRAIL = json.loads(orthanc.GetConfiguration()).get("AuditTrail", "audit-trail.jsonl")
_writing = threading.Lock()


@on_audit_log
def record(log):
    entry = {"plugin": log.source_plugin, "user": log.user_id, "level": str(log.resource_type),
             "resource": log.resource_id, "action": log.action, "details": log.json()}
    with _writing, open(TRAIL, "a", encoding="utf-8") as trail:
        trail.write(json.dumps(entry) + "\n")


@route("/studies/<study_id>/send-to/<modality>", methods=["POST"])
def send(request, study_id, modality):
    user = request.headers.get("X-User", "anonymous")
    job = rest.post_json(f"/modalities/{modality}/store", {"Resources": [study_id], "Synchronous": True})
    emit_audit_log("sent", study_id, user_id=user, data={"modality": modality, "instances": job.get("InstancesCount")})
    return job


@route("/audit-trail")
def trail(request):
    try:
        with open(TRAIL, encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]
    except FileNotFoundError:
        return []
