"""Calling user functions that may be sync or async."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from types import FunctionType
from typing import Any, TypeVar, cast

R = TypeVar("R")

_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect


def _is_coroutine_function(fn: object) -> bool:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is not None and code.co_flags & _CO_COROUTINE:
        return True
    return getattr(fn, "_is_coroutine_marker", None) is not None  # inspect.markcoroutinefunction


def is_async_callable(fn: object) -> bool:
    """True when calling ``fn`` returns a coroutine (async def, partials, async __call__)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if _is_coroutine_function(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - we want the bound __call__
    return call is not None and not isinstance(fn, FunctionType) and _is_coroutine_function(call)


async def call_maybe_async(fn: Callable[..., R | Awaitable[R]], /, *args: Any, **kwargs: Any) -> R:
    """Call ``fn`` and await the result when it is awaitable."""
    result = fn(*args, **kwargs)
    if hasattr(result, "__await__"):
        return cast(R, await result)
    return result


def callable_name(fn: object) -> str:
    """A short, human-readable name for a callable (used in default stage names)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        name = type(fn).__qualname__
    return str(name)
