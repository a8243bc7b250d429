# pynetdicom inside Orthanc: routes that talk DICOM to the modalities of
# DicomModalities with pynetdicom's SCU instead of Orthanc's own.
#   GET  /pynetdicom/echo/{modality}   a C-ECHO; answers {"Status": ...}
#   POST /pynetdicom/store/{modality}  the instance whose ID is the body, by C-STORE
import io
import json

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification

import orthanc


def Modality(name):
    modalities = json.loads(orthanc.RestApiGet('/modalities?expand'))
    modality = modalities[name]
    return modality['AET'], modality['Host'], modality['Port']


def Associate(ae, name):
    aet, host, port = Modality(name)
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        raise Exception('No association with %s' % name)
    return assoc


def Answer(output, status):
    output.AnswerBuffer(json.dumps({'Status': status.Status}), 'application/json')


def Echo(output, uri, **request):
    ae = AE(ae_title='ORTHANC')
    ae.add_requested_context(Verification)
    assoc = Associate(ae, request['groups'][0])
    try:
        Answer(output, assoc.send_c_echo())
    finally:
        assoc.release()


def Store(output, uri, **request):
    if request['method'] != 'POST':
        output.SendMethodNotAllowed('POST')
        return
    instance = request['body'].decode('ascii').strip()
    dataset = pydicom.dcmread(io.BytesIO(orthanc.GetDicomForInstance(instance)))
    ae = AE(ae_title='ORTHANC')
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = Associate(ae, request['groups'][0])
    try:
        Answer(output, assoc.send_c_store(dataset))
    finally:
        assoc.release()


orthanc.RegisterRestCallback('/pynetdicom/echo/(.*)', Echo)
orthanc.RegisterRestCallback('/pynetdicom/store/(.*)', Store)
