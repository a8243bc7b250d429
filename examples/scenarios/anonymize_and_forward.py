# Each instance the scanner "CT_SCANNER" sends is anonymized as soon as it
# is stored, and the anonymized copy goes to the research archive (the
# modality "research"); Orthanc keeps the original only.
import json

import orthanc


def OnStoredInstance(dicom, instanceId):
    if dicom.GetInstanceOrigin() != orthanc.InstanceOrigin.DICOM_PROTOCOL:
        return
    if dicom.GetInstanceRemoteAet() != 'CT_SCANNER':
        return
    anonymized = orthanc.RestApiPost('/instances/%s/anonymize' % instanceId, json.dumps({
        'Replace': {'PatientName': 'Research^Subject'},
        'Keep': ['StudyDescription'],
    }))
    orthanc.RestApiPost('/modalities/research/store-straight', anonymized)
    print('Sent an anonymized copy of %s' % instanceId)


orthanc.RegisterOnStoredInstanceCallback(OnStoredInstance)
