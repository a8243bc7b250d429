# A modality worklist served from a folder of DICOM files: each "*.wl" file
# of the folder named by the option "WorklistsFolder" is one scheduled
# procedure; a worklist C-FIND (findscu -W) gets those that match its query.
import glob
import json
import os

import orthanc

FOLDER = json.loads(orthanc.GetConfiguration())['WorklistsFolder']


def OnWorklist(answers, query, issuerAet, calledAet):
    print('Worklist C-FIND from %s' % issuerAet)
    for path in sorted(glob.glob(os.path.join(FOLDER, '*.wl'))):
        with open(path, 'rb') as f:
            content = f.read()
        if query.WorklistIsMatch(content):
            answers.WorklistAddAnswer(query, content)


orthanc.RegisterWorklistCallback(OnWorklist)
