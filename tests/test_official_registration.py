# SPDX-License-Identifier: GPL-3.0-or-later
"""What every family of the ``orthanc`` module shares: registrations check their arguments, name the fix, and do
nothing outside Orthanc (a worker process re-running the script)."""

from __future__ import annotations

import pytest

from orthanc_py import _compat
from orthanc_py._capi import NotInOrthancError


@pytest.mark.parametrize(
    "register, arguments",
    [
        (_compat.RegisterIncomingHttpRequestFilter, 1),
        (_compat.RegisterReceivedInstanceCallback, 1),
        (_compat.RegisterIncomingCStoreInstanceFilter, 1),
        (_compat.RegisterIncomingDicomInstanceFilter, 1),
        (_compat.RegisterFindCallback, 1),
        (_compat.RegisterFindCallback2, 1),
        (_compat.RegisterWorklistCallback, 1),
        (_compat.RegisterWorklistCallback2, 1),
        (_compat.RegisterMoveCallback, 1),
        (_compat.RegisterMoveCallback2, 4),
        (_compat.RegisterMoveCallback3, 4),
        (_compat.RegisterStorageCommitmentScpCallback, 2),
        (_compat.RegisterStorageCommitmentScpCallback2, 2),
        (_compat.RegisterStorageArea, 3),
        (_compat.RegisterStorageArea3, 3),
        (_compat.RegisterRefreshMetricsCallback, 1),
        (_compat.RegisterJobsUnserializer, 1),
        (_compat.RegisterDecodeImageCallback, 1),
        (_compat.RegisterTranscoderCallback, 1),
    ],
)
def test_registrations_check_types_and_are_no_ops_outside_orthanc(register, arguments):
    register(*([print] * arguments))  # a worker process re-running the script: nothing happens
    with pytest.raises(TypeError, match=rf"{register.__name__}\(\) argument '\w+' must be callable, not int"):
        register(*([print] * (arguments - 1) + [1]))
    assert register.__module__ == "orthanc"
    assert register.__name__ in _compat.__all__
    assert register.__doc__ and ":raises TypeError:" in register.__doc__


def test_functions_check_arguments_and_need_orthanc():
    with pytest.raises(TypeError, match="argument 'jobType' must be str"):
        _compat.CreateJob(1, print)
    with pytest.raises(TypeError, match="argument 'step' must be callable"):
        _compat.CreateJob("T", 1)
    with pytest.raises(TypeError, match="argument 'callback' must be callable"):
        _compat.EncodeDicomWebJson(b"", 1)
    with pytest.raises(NotInOrthancError):
        _compat.EncodeDicomWebJson(b"")
    for name in ("CreateJob", "EncodeDicomWebJson", "EncodeDicomWebXml", "EncodeDicomWebJson2", "EncodeDicomWebXml2"):
        function = getattr(_compat, name)
        assert function.__module__ == "orthanc"
        assert name in _compat.__all__
        assert function.__doc__ and ":raises" in function.__doc__
    for cls, name in ((_compat.Job, "SubmitJob"), (_compat.DicomInstance, "GetInstanceDicomWebJson"),
                      (_compat.DicomInstance, "GetInstanceDicomWebXml")):
        assert getattr(cls, name).__doc__
