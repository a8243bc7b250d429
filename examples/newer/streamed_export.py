# SPDX-License-Identifier: GPL-3.0-or-later
"""GET /export/studies.csv: one line per study, streamed as it is read (Orthanc 1.12.6 and later).

The client gets the first lines at once, however many studies there are;
an older Orthanc sends the whole file at the end instead (and says so once
in its log).
"""

from orthanc_py import Response, rest, route


@route("/export/studies.csv")
def studies_csv(request):
    def lines():
        yield "StudyInstanceUID,PatientID,StudyDate,Instances\r\n"
        for study_id in rest.get_json("/studies"):
            study = rest.get_json(f"/studies/{study_id}")
            tags = study["MainDicomTags"]
            patient = study["PatientMainDicomTags"]
            instances = rest.get_json(f"/studies/{study_id}/statistics")["CountInstances"]
            yield (f"{tags.get('StudyInstanceUID', '')},{patient.get('PatientID', '')},"
                   f"{tags.get('StudyDate', '')},{instances}\r\n")

    return Response(lines(), content_type="text/csv")
