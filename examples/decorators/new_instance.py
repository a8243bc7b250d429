# SPDX-License-Identifier: GPL-3.0-or-later
"""Accessing the content of a new instance: prints its size, origin and tags as Orthanc stores it.

Try it, then watch Orthanc's log:
    orthanc-py run examples/decorators/new_instance.py
    curl -X POST http://localhost:8042/instances --data-binary @some.dcm
"""

import pprint

from orthanc_py import InstanceOrigin, on_stored_instance


@on_stored_instance
def show(instance):
    print(
        f"Received instance {instance.id} of size {instance.size} "
        f"(transfer syntax {instance.transfer_syntax}, "
        f"SOP class UID {instance.metadata('SopClassUid')})"
    )
    if instance.origin == InstanceOrigin.DICOM_PROTOCOL:
        print(f"This instance was received through the DICOM protocol from {instance.remote_aet}")
    elif instance.origin == InstanceOrigin.REST_API:
        print("This instance was received through the REST API")
    pprint.pprint(instance.simplified_json)
