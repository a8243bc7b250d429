# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module of the official plugin, one module per family of the SDK.

``orthanc_py._compat`` assembles them into the ``orthanc`` module.
"""
