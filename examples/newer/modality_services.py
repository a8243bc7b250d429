# SPDX-License-Identifier: GPL-3.0-or-later
"""Query/retrieve and a modality worklist answered in Python, each request logged with who sent it.

- C-FIND at the PATIENT and STUDY levels (patient root and study root) is
  answered from Orthanc's own index through ``/tools/find``, which applies
  the modality's constraints as DICOM writes them (wildcards, date ranges);
  each answer holds the tags the modality asked for;
- the worklist is a folder of JSON files (the option ``WorklistsFolder``),
  one scheduled procedure each, as tags by name. A procedure scheduled on a
  station (its ScheduledStationAETitle) is offered to that station only;
  Orthanc's worklist matching picks those the request matches;
- C-MOVE sends the instances a request names to its destination, one
  C-STORE sub-operation each.

Every request is logged with the modality's AE title, the AE title it
called and, on Orthanc 1.12.10 and later, its IP address ("address
unknown" on an older Orthanc).
"""

import json
from pathlib import Path

import orthanc
from orthanc_py import find_scp, move_scp, rest, worklist_scp

FOLDER = Path(json.loads(orthanc.GetConfiguration()).get("WorklistsFolder", "worklists"))

LEVELS = {"PATIENT": "Patient", "STUDY": "Study"}
# Tags of a C-FIND request that say how to search, not what to answer.
NOT_ANSWERED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def who(connection):
    return f"{connection.remote_aet} ({connection.remote_ip or 'address unknown'}) calling {connection.called_aet}"


@find_scp
def find(query):
    level = LEVELS.get(query.level)
    if level is None:
        print(f"C-FIND at level {query.level or 'none'} from {who(query.connection)}: not served")
        return
    constraints = {name: value for name, value in query.tags.items() if value and name not in NOT_ANSWERED}
    found = rest.post_json("/tools/find", {"Level": level, "Expand": True, "Query": constraints})
    print(f"C-FIND ({query.level}) from {who(query.connection)}: {len(found)} match(es)")
    for resource in found:
        tags = {**resource.get("PatientMainDicomTags", {}), **resource["MainDicomTags"]}
        yield {name: tags.get(name, "") for name in query.tags if name not in NOT_ANSWERED}


def station_of(item):
    steps = item.get("ScheduledProcedureStepSequence") or [{}]
    return steps[0].get("ScheduledStationAETitle", "")


@worklist_scp
def worklist(query):
    station = query.connection.remote_aet
    items = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(FOLDER.glob("*.json"))]
    offered = [item for item in items if station_of(item) in ("", station)]
    matching = [item for item in offered if query.matches(item)]
    print(f"worklist C-FIND from {who(query.connection)}: {len(matching)} of {len(offered)} procedure(s)")
    return matching


@move_scp
def retrieve(request):
    if not request.identifiers:
        return []  # a request that names nothing would move everything
    found = rest.post_json("/tools/find", {"Level": "Instance", "Query": request.identifiers})
    print(f"C-MOVE of {len(found)} instance(s) to {request.target_aet} for {who(request.connection)}")
    return found
