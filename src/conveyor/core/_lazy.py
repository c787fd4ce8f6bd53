"""Names of a package imported from their modules on first use (PEP 562)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    namespace: dict[str, Any], modules: Mapping[str, str], owner: str
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``modules[name]`` the first time
    it is asked for, and keeps it in ``namespace`` (the package's globals) from then on.

    >>> space: dict[str, Any] = {}
    >>> getter = lazy_attributes(space, {"sqrt": "math"}, "demo")
    >>> getter("sqrt")(9.0), "sqrt" in space
    (3.0, True)
    """

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError(f"module {owner!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__


def pyarrow_modules(needs: str, instead: str) -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, imported on first use; if absent, an
    ``ImportError`` saying that ``needs`` it, how to install it, and what to use ``instead``.

    >>> pa, pq = pyarrow_modules("this doctest", "nothing")
    >>> pq.__name__
    'pyarrow.parquet'
    """
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(
            f"{needs} needs pyarrow, which is not installed: pip install 'conveyor[parquet]' "
            f"(or use {instead})"
        ) from exc
    return pa, pq
