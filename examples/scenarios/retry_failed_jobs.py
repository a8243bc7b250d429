# Job events with retries: a transfer to a modality that fails (the
# modality is down, say) is resubmitted after a delay, at most MAX_RETRIES
# times; the outcome of each job is printed.
import json
import threading

import orthanc

MAX_RETRIES = 5
DELAY = 1.0  # seconds
RETRIES = {}
LOCK = threading.Lock()


def Resubmit(job):
    orthanc.RestApiPost('/jobs/%s/resubmit' % job, '')


def OnChange(changeType, level, resourceId):
    if changeType == orthanc.ChangeType.JOB_SUCCESS:
        print('Job %s succeeded' % resourceId)
    elif changeType == orthanc.ChangeType.JOB_FAILURE:
        job = json.loads(orthanc.RestApiGet('/jobs/%s' % resourceId))
        if job['Type'] != 'DicomModalityStore':
            return
        with LOCK:
            attempt = RETRIES.get(resourceId, 0) + 1
            RETRIES[resourceId] = attempt
        if attempt > MAX_RETRIES:
            print('Job %s failed, giving up' % resourceId)
            return
        print('Job %s failed, retry %d in %g s' % (resourceId, attempt, DELAY))
        timer = threading.Timer(DELAY, Resubmit, [resourceId])
        timer.daemon = True
        timer.start()


orthanc.RegisterOnChangeCallback(OnChange)
