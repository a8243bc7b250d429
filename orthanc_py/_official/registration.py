# SPDX-License-Identifier: GPL-3.0-or-later
"""What the families of the ``orthanc`` module share: method descriptors and naming."""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Optional

from .. import _calls


class _SdkMethod:
    """A method built from an SDK function.

    A descriptor rather than a plain function, so that ``inspect`` reports it
    as a method descriptor, as it does for the official plugin's methods.
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.__doc__ = function.__doc__
        self.__name__ = function.__name__
        self.__signature__ = inspect.signature(function)

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self.function, instance)


def _call(c_name: str, *args: Any) -> Any:
    return _calls.sdk_function(c_name)(*args)


def _handler_name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))
