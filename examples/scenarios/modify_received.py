# Modifying received instances before Orthanc stores them: instances that
# come over DICOM get their institution replaced and the patient's birth
# date removed; test patients ("TEST-...") are dropped; uploads through the
# REST API are stored as they are.
import io

import pydicom

import orthanc


def OnReceived(receivedDicom, origin):
    if origin == orthanc.InstanceOrigin.REST_API:
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None

    dataset = pydicom.dcmread(io.BytesIO(receivedDicom))
    if str(dataset.PatientID).startswith('TEST-'):
        return orthanc.ReceivedInstanceAction.DISCARD, None

    dataset.InstitutionName = 'Central Hospital'
    if 'PatientBirthDate' in dataset:
        del dataset.PatientBirthDate
    modified = io.BytesIO()
    dataset.save_as(modified)
    return orthanc.ReceivedInstanceAction.MODIFY, modified.getvalue()


orthanc.RegisterReceivedInstanceCallback(OnReceived)
