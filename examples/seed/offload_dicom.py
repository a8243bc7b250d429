# The "OffloadedDicomParsing" fragment of "Performance and concurrency",
# completed into a script that runs: the imports and the pool of the
# previous sample, and a route that names the instance to parse.
import io
import multiprocessing
import orthanc
import pydicom
import signal

def OffloadedDicomParsing(dicom):
    # No access to the "orthanc" library here, as we are in the slave process
    dataset = pydicom.dcmread(io.BytesIO(dicom))
    return str(dataset)

# Ignore CTRL+C in the slave processes
def Initializer():
    signal.signal(signal.SIGINT, signal.SIG_IGN)

# Create a pool of 4 slave Python interpreters
# (after the definition of OffloadedDicomParsing: the slaves are forked
# here, and only know the functions defined so far)
POOL = multiprocessing.Pool(4, initializer = Initializer)

def OnRest(output, uri, **request):
    # The call to "orthanc.RestApiGet()" is only possible in the master process
    dicom = orthanc.RestApiGet('/instances/%s/file' % request['groups'][0])
    answer = POOL.apply(OffloadedDicomParsing, args = (dicom, ))
    output.AnswerBuffer(answer, 'text/plain')

orthanc.RegisterRestCallback('/offload-parse/(.*)', OnRest)
