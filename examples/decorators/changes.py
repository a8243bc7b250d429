# SPDX-License-Identifier: GPL-3.0-or-later
"""Listening to changes: uploads sample.dcm when Orthanc starts, prints each new instance.

Try it with a DICOM file named sample.dcm next to this script; pydicom's CT_small.dcm will do:
    cp "$(python -c 'from pydicom.data import get_testdata_file; print(get_testdata_file("CT_small.dcm"))')" \
        examples/decorators/sample.dcm
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
        print(f"No {SAMPLE}: nothing to upload (copy a DICOM file there, such as pydicom's: "
              "pydicom.data.get_testdata_file('CT_small.dcm') gives its path)")


@on_change(ChangeType.NEW_INSTANCE)
def new_instance(change):
    print(f"A new instance was uploaded: {change.resource_id}")


@on_shutdown
def stopped():
    print("Stopped")
