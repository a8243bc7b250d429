# Auto-forwarding: each study that has stopped receiving instances ("stable")
# is sent to a DICOM modality and to another Orthanc, then deleted here.
# Declare the modality "destination" in DicomModalities and the Orthanc
# "backup" in OrthancPeers.
import json

import orthanc


def OnChange(changeType, level, resourceId):
    if changeType == orthanc.ChangeType.STABLE_STUDY:
        print('Forwarding stable study %s' % resourceId)
        orthanc.RestApiPost('/modalities/destination/store', resourceId)
        orthanc.RestApiPost('/peers/backup/store', json.dumps({
            'Resources': [resourceId],
            'Synchronous': True,
        }))
        orthanc.RestApiDelete('/studies/%s' % resourceId)
        print('Study %s forwarded and deleted' % resourceId)


orthanc.RegisterOnChangeCallback(OnChange)
