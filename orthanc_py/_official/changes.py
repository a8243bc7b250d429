# SPDX-License-Identifier: GPL-3.0-or-later
"""Changes and stored instances: the events Orthanc reports, and the instances it stores."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from .. import _calls, _capi, _events, _sdk_calls
from .._calls import Handle
from .registration import (
    _call,
    _name,
)

__all__ = [
    "DicomInstance",
    "RegisterOnChangeCallback",
    "RegisterOnStoredInstanceCallback",
    "SetStableStatus",
]


def SetStableStatus(resourceId: str, stableStatus: int) -> tuple[int, int]:
    """Declares a patient, study or series stable (``StableStatus.STABLE``) or not (``UNSTABLE``).

    Returns ``(error code, changed)`` as the official plugin 7.1 does: the
    error code is 0 when Orthanc accepted the call, and ``changed`` is 1 when
    the resource's status changed (0 when it already had it, or is unknown).
    A stable resource gets its ``STABLE_*`` change. Needs Orthanc 1.12.9.
    """
    if type(resourceId) is not str or isinstance(stableStatus, bool) or not isinstance(stableStatus, int):
        raise TypeError("SetStableStatus() takes the resource's ID (str) and orthanc.StableStatus.STABLE (0) or "
                        f"UNSTABLE (1), not {type(resourceId).__name__} and {type(stableStatus).__name__}")
    try:
        changed = _sdk_calls.call("SetStableStatus", resourceId, stableStatus)
    except _capi.SdkVersionError:
        raise
    except _capi.OrthancError as error:
        return int(error.code), 0
    return 0, int(changed)


class DicomInstance(Handle):
    """A DICOM instance: received, stored, or created from a buffer."""

    c_type_name = "OrthancPluginDicomInstance"
    after_callback = ("copy what you need while the callback runs: GetInstanceData() (the DICOM file), "
                      "GetInstanceSimplifiedJson()...")

    def HasInstanceMetadata(self, metadata: str) -> int:
        """Returns 1 if the instance has the metadata ``metadata``, 0 otherwise."""
        return int(_sdk_calls.sdk_function("OrthancPluginHasInstanceMetadata", raw=True)(self, metadata) != 0)

    def HasInstancePixelData(self) -> int:
        """Returns 1 if the instance has pixel data, 0 otherwise."""
        return int(_sdk_calls.sdk_function("OrthancPluginHasInstancePixelData", raw=True)(self) != 0)

    def GetInstanceData(self) -> bytes:
        """Returns the DICOM file of the instance, as bytes."""
        lease = self._take_lease()  # the data stays Orthanc's: the instance must outlive the copy
        try:
            address = _sdk_calls.sdk_function("OrthancPluginGetInstanceData", raw=True)(self)
            return _capi.copy_memory(address, _call("GetInstanceSize", self))
        finally:
            if lease is not None:
                lease.release()


def RegisterOnChangeCallback(callback: Callable[[int, int, str | None], None]) -> None:
    """Registers ``callback(changeType, level, resourceId)`` for every change in Orthanc.

    Changes are delivered in order on a thread of orthanc_py's, never on
    Orthanc's own, so the callback may call the REST API. Several callbacks
    may be registered; each is called in registration order.
    """
    _events.changes.add(callback, "orthanc.RegisterOnChangeCallback()")


def RegisterOnStoredInstanceCallback(callback: Callable[[DicomInstance, str], None]) -> None:
    """Registers ``callback(dicom, instanceId)``, called each time Orthanc stores an instance.

    ``dicom`` (:class:`DicomInstance`) is valid during the call only. Several
    callbacks may be registered; each is called in registration order, and
    one that raises is logged without stopping the others.
    """
    if not callable(callback):
        raise TypeError(
            f"RegisterOnStoredInstanceCallback() argument 'callback' must be callable, not {type(callback).__name__}"
        )

    def deliver(address: int, instance_id: str) -> None:
        # Made of the class with plain-function methods (see _compat._make_fast_classes).
        instance = cast(DicomInstance, _calls.handle_class(DicomInstance.c_type_name).lent(address))
        try:
            callback(instance, instance_id)
        finally:
            _capi.expire(instance)  # lent by Orthanc for this call only

    _events.stored_instances.add(deliver, "orthanc.RegisterOnStoredInstanceCallback()", _name(callback))
