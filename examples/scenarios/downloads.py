# Routes that answer files to download:
#   GET /studies/{id}/instances.csv  a spreadsheet of the study's instances
#   GET /studies/{id}/files.zip      the study's DICOM files in a zip archive
#   GET /instances/{id}/preview.jpg  the instance's first frame as a JPEG
import csv
import io
import json
import zipfile

from PIL import Image

import orthanc


def Download(output, data, mimeType, filename):
    output.SetHttpHeader('Content-Disposition', 'attachment; filename="%s"' % filename)
    output.AnswerBuffer(data, mimeType)


def Instances(study):
    instances = json.loads(orthanc.RestApiGet('/studies/%s/instances' % study))
    return sorted(instances, key=lambda instance: instance['IndexInSeries'] or 0)


def Spreadsheet(output, uri, **request):
    study = request['groups'][0]
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(['SOPInstanceUID', 'InstanceNumber', 'FileSize'])
    for instance in Instances(study):
        writer.writerow([instance['MainDicomTags']['SOPInstanceUID'],
                         instance['MainDicomTags'].get('InstanceNumber', ''),
                         instance['FileSize']])
    Download(output, rows.getvalue().encode('utf-8'), 'text/csv', '%s.csv' % study)


def Archive(output, uri, **request):
    study = request['groups'][0]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as z:
        for instance in Instances(study):
            dicom = orthanc.GetDicomForInstance(instance['ID'])
            z.writestr('%s.dcm' % instance['MainDicomTags']['SOPInstanceUID'], dicom)
    Download(output, archive.getvalue(), 'application/zip', '%s.zip' % study)


def Preview(output, uri, **request):
    instance = request['groups'][0]
    image = orthanc.DecodeDicomImage(orthanc.GetDicomForInstance(instance), 0)
    image = image.ConvertPixelFormat(orthanc.PixelFormat.GRAYSCALE8)
    picture = Image.frombuffer('L', (image.GetImageWidth(), image.GetImageHeight()),
                               image.GetImageBuffer(), 'raw', 'L', image.GetImagePitch(), 1)
    jpeg = io.BytesIO()
    picture.save(jpeg, format='JPEG')
    Download(output, jpeg.getvalue(), 'image/jpeg', '%s.jpg' % instance)


orthanc.RegisterRestCallback('/studies/(.*)/instances.csv', Spreadsheet)
orthanc.RegisterRestCallback('/studies/(.*)/files.zip', Archive)
orthanc.RegisterRestCallback('/instances/(.*)/preview.jpg', Preview)
