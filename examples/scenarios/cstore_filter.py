# A C-STORE filter: only the modalities listed here may store instances,
# and structured reports are refused whoever sends them. A refused
# instance is not stored; the sender gets the DIMSE status returned.
import json

import orthanc

ALLOWED_AETS = {'CT_SCANNER', 'MR_SCANNER'}
REFUSED = 0xA700  # "Refused: out of resources", a status every modality understands


def FilterIncomingCStore(receivedDicom):
    aet = receivedDicom.GetInstanceRemoteAet()
    tags = json.loads(receivedDicom.GetInstanceSimplifiedJson())
    if aet not in ALLOWED_AETS:
        print('Refusing an instance from %s' % aet)
        return REFUSED
    if tags.get('Modality') == 'SR':
        print('Refusing a structured report from %s' % aet)
        return REFUSED
    return 0


orthanc.RegisterIncomingCStoreInstanceFilter(FilterIncomingCStore)
