# SPDX-License-Identifier: GPL-3.0-or-later
"""Studies declared stable as soon as every announced instance is stored (Orthanc 1.12.9 and later).

Modalities often send NumberOfStudyRelatedInstances (0020,1208). Once that
many instances of a study are stored, nothing more is coming: the study is
declared stable at once instead of after ``StableAge`` seconds, so that what
waits for STABLE_STUDY (here a line in the log; in a real script, the
forwarding) starts without waiting.
"""

from orthanc_py import ChangeType, mark_stable, on_change, rest


@on_change(ChangeType.NEW_INSTANCE)
def count(change):
    tags = rest.get_json(f"/instances/{change.resource_id}/simplified-tags")
    announced = tags.get("NumberOfStudyRelatedInstances")
    if not announced:
        return
    study_id = rest.get_json(f"/instances/{change.resource_id}/study")["ID"]
    if rest.get_json(f"/studies/{study_id}/statistics")["CountInstances"] >= int(announced):
        mark_stable(study_id)


@on_change(ChangeType.STABLE_STUDY)
def forward(change):
    print(f"study {change.resource_id} is complete")
