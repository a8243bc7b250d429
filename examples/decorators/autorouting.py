# SPDX-License-Identifier: GPL-3.0-or-later
"""Auto-routing: sends each study, once stable, to the DICOM modality "sample".

durable=True: a study is sent even when Orthanc crashes before or while
sending it (the handler resumes from its checkpoint in Orthanc's database);
a study may then be sent twice, never zero times.

Declare the modality in Orthanc's configuration, for instance in my.json:
    {"DicomModalities": {"sample": ["STORESCP", "127.0.0.1", 4242]}}
Try it:
    orthanc-py run examples/decorators/autorouting.py --config my.json
    curl -X POST http://localhost:8042/instances --data-binary @some.dcm
"""

from orthanc_py import ChangeType, on_change, rest


@on_change(ChangeType.STABLE_STUDY, durable=True)
def forward(change):
    print(f"Stable study: {change.resource_id}")
    rest.post("/modalities/sample/store", change.resource_id)
