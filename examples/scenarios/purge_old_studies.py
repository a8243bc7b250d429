# Purging old studies: POST /tools/purge-old-studies with {"Days": N}
# deletes the studies whose StudyDate is more than N days ago and answers
# the list of deleted studies. A daily timer does the same with the
# option "PurgeAfterDays", when it is set.
import datetime
import json
import threading

import orthanc

PURGE_AFTER_DAYS = json.loads(orthanc.GetConfiguration()).get('PurgeAfterDays')
TIMER = None


def Purge(days):
    cutoff = datetime.date.today() - datetime.timedelta(days=days)
    old = json.loads(orthanc.RestApiPost('/tools/find', json.dumps({
        'Level': 'Study',
        'Query': {'StudyDate': '-%s' % (cutoff - datetime.timedelta(days=1)).strftime('%Y%m%d')},
    })))
    for study in old:
        orthanc.RestApiDelete('/studies/%s' % study)
    print('Purged %d studies older than %s' % (len(old), cutoff.isoformat()))
    return old


def PurgeRoute(output, uri, **request):
    if request['method'] != 'POST':
        output.SendMethodNotAllowed('POST')
        return
    days = json.loads(request['body']).get('Days')
    if not isinstance(days, int) or days < 0:
        output.SendHttpStatusCode(400)
        return
    output.AnswerBuffer(json.dumps(sorted(Purge(days))), 'application/json')


def PurgeDaily():
    global TIMER
    Purge(PURGE_AFTER_DAYS)
    TIMER = threading.Timer(24 * 3600, PurgeDaily)
    TIMER.daemon = True
    TIMER.start()


def OnChange(changeType, level, resourceId):
    if changeType == orthanc.ChangeType.ORTHANC_STARTED and PURGE_AFTER_DAYS is not None:
        PurgeDaily()
    elif changeType == orthanc.ChangeType.ORTHANC_STOPPED and TIMER is not None:
        TIMER.cancel()


orthanc.RegisterRestCallback('/tools/purge-old-studies', PurgeRoute)
orthanc.RegisterOnChangeCallback(OnChange)
