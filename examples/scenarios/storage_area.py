# A storage area written in Python: Orthanc keeps its files (DICOM
# instances, JSON summaries...) where these three functions say, here one
# file per attachment in the folder named by the option "PythonStorageFolder".
import json
import os

import orthanc

FOLDER = json.loads(orthanc.GetConfiguration())['PythonStorageFolder']


def GetPath(uuid, contentType):
    return os.path.join(FOLDER, '%s.%d' % (uuid, contentType))


def OnCreate(uuid, contentType, data):
    with open(GetPath(uuid, contentType), 'wb') as f:
        f.write(data)


def OnRead(uuid, contentType):
    with open(GetPath(uuid, contentType), 'rb') as f:
        return f.read()


def OnRemove(uuid, contentType):
    os.remove(GetPath(uuid, contentType))


orthanc.RegisterStorageArea(OnCreate, OnRead, OnRemove)
