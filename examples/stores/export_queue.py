# SPDX-License-Identifier: GPL-3.0-or-later
"""Stable studies sent to a DICOM modality through a queue in Orthanc's database, at least once.

Each study, once stable, is queued; a job every 2 seconds sends what is queued to the
modality "export" and records each study sent in a key-value store. Both live in Orthanc's
database (Orthanc 1.12.8 and later; reservations 1.12.10): a restart loses nothing, a send
that fails is tried again once its reservation's lease has run out, and the nodes of a
cluster whose database has queues share the work.

Declare the modality in Orthanc's configuration, for instance in my.json:
    {"DicomModalities": {"export": ["STORESCP", "127.0.0.1", 4242]}}
Try it:
    orthanc-py run examples/stores/export_queue.py --config my.json
    curl -X POST http://localhost:8042/instances --data-binary @some.dcm
    curl http://localhost:8042/exports          (once the study is stable, a few seconds later)
"""

import time

from orthanc_py import ChangeType, every, kv, on_change, queue, rest, route

# Seconds a study stays reserved by the node sending it: longer than a send takes.
# A send that fails is tried again when they have run out.
LEASE = 60

pending = queue.Queue("export-example.pending")
sent = kv.Store("export-example.sent")  # study ID -> when it was sent


# durable=True: a study stable when Orthanc crashed is queued after the restart all the same.
@on_change(ChangeType.STABLE_STUDY, durable=True)
def enqueue(change):
    pending.put(change.resource_id.encode())


@every(2)
def export():
    while (item := pending.reserve(lease=LEASE)) is not None:
        with item:  # acknowledged when the block ends; after an exception, the study comes back later
            study = item.value.decode()
            if study in sent:
                continue  # delivered again after it was sent (at least once): nothing to redo
            rest.post("/modalities/export/store", study)
            sent[study] = time.strftime("%Y-%m-%dT%H:%M:%S").encode()


@route("/exports")
def exports(request):
    return {"pending": len(pending), "sent": {study: when.decode() for study, when in sent.items()}}
