# SPDX-License-Identifier: GPL-3.0-or-later
"""Listening to changes: uploads sample.dcm when Orthanc starts, prints each new instance.

Try it (with a DICOM file named sample.dcm next to this script):
    orthanc-py run examples/decorators/changes.py
    curl http://localhost:8042/instances
"""

from pathlib import Path

from orthanc_py import ChangeType, on_change, on_shutdown, on_startup, rest

SAMPLE = Path(__file__).with_name("sample.dcm")


@on_startup
def started():
    print("Started")
    if SAMPLE.exists():
        rest.post("/instances", SAMPLE.read_bytes())
    else:
        print(f"No {SAMPLE}: nothing to upload")


@on_change(ChangeType.NEW_INSTANCE)
def new_instance(change):
    print(f"A new instance was uploaded: {change.resource_id}")


@on_shutdown
def stopped():
    print("Stopped")
