# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``orthanc`` module of the official plugin, one module per family of the SDK.

Each family holds its callback trampolines and its Python classes, and its
``__all__`` is its part of the ``orthanc`` module, which ``orthanc_py._compat``
assembles with what it builds from the SDK facts. ``registration`` is what
the families share; ``rest`` is the REST answers, which the chunked transfers
use too. Nothing here imports ``_compat`` or another layer above the families
(the import-linter contracts of ``pyproject.toml``).

Each ``Register...`` function has the Python-side signature, argument types
and return conventions of the official Python plugin 4.0, as observed by
running it (the tests run both plugins against the same scripts). Every C
trampoline is built with ``_capi.trampoline``, so no exception ever reaches
Orthanc.
"""
