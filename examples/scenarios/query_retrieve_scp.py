# C-FIND and C-MOVE SCPs written in Python. Study-level C-FIND requests
# are answered from Orthanc's own index through /tools/find (PatientID and
# StudyDate are the supported keys); a C-MOVE sends the study it names to
# the modality whose AET is the move destination.
import json

import orthanc

ANSWERED_TAGS = ['PatientID', 'PatientName', 'StudyInstanceUID', 'StudyDate', 'StudyDescription']


def OnFind(answers, query, issuerAet, calledAet):
    keys = {}
    for i in range(query.GetFindQuerySize()):
        keys[query.GetFindQueryTagName(i)] = query.GetFindQueryValue(i)
    print('C-FIND from %s: %s' % (issuerAet, json.dumps(keys, sort_keys=True)))

    constraints = {}
    for name in ['PatientID', 'StudyDate']:
        if keys.get(name):
            constraints[name] = keys[name]
    studies = json.loads(orthanc.RestApiPost('/tools/find', json.dumps({
        'Level': 'Study', 'Query': constraints, 'Expand': True,
    })))
    for study in studies:
        tags = dict(study['PatientMainDicomTags'])
        tags.update(study['MainDicomTags'])
        answer = {'QueryRetrieveLevel': 'STUDY'}
        for name in ANSWERED_TAGS:
            answer[name] = tags.get(name, '')
        answers.FindAddAnswer(orthanc.CreateDicom(json.dumps(answer), None, orthanc.CreateDicomFlags.NONE))


def OnMove(**request):
    print('C-MOVE of study %s to %s' % (request['StudyInstanceUID'], request['TargetAET']))
    modalities = json.loads(orthanc.RestApiGet('/modalities?expand'))
    target = [name for name, modality in modalities.items() if modality['AET'] == request['TargetAET']]
    if not target:
        raise Exception('Unknown move destination: %s' % request['TargetAET'])
    found = json.loads(orthanc.RestApiPost('/tools/lookup', request['StudyInstanceUID']))
    studies = [match['ID'] for match in found if match['Type'] == 'Study']
    orthanc.RestApiPost('/modalities/%s/store' % target[0], json.dumps({
        'Resources': studies, 'Synchronous': True,
    }))


orthanc.RegisterFindCallback(OnFind)
orthanc.RegisterMoveCallback(OnMove)
