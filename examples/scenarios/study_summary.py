# Error handling as scripts do it: GET /studies/{id}/summary answers a
# short JSON summary, 404 when the study does not exist. The Orthanc error
# is told apart by its code, the first argument of orthanc.OrthancException.
import json

import orthanc


def Summary(output, uri, **request):
    study = request['groups'][0]
    try:
        tags = json.loads(orthanc.RestApiGet('/studies/%s' % study))
    except orthanc.OrthancException as e:
        if e.args[0] != orthanc.ErrorCode.UNKNOWN_RESOURCE:
            raise
        print('No summary for study %s: %s' % (study, e))
        output.SendHttpStatusCode(404)
        return
    output.AnswerBuffer(json.dumps({
        'PatientID': tags['PatientMainDicomTags'].get('PatientID'),
        'StudyDate': tags['MainDicomTags'].get('StudyDate'),
        'Series': len(tags['Series']),
    }), 'application/json')


orthanc.RegisterRestCallback('/studies/(.*)/summary', Summary)
