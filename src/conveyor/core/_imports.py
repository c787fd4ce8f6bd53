"""Importing what a connector option names (``package.module:Class``), relative to a project.

A ``model:`` option of a connector names a class of the project, e.g.
``pipeline.contracts.models:Penguin``. :func:`import_reference` imports it with the
project's import root on ``sys.path`` (``src/`` for the ``src/pipeline`` layout, as the
stage files are imported), and :func:`record_model` checks that it is a type Pydantic can
validate records with. What cannot be used raises an :class:`OptionError`, which names the
option's key (``source.model``) so that config.yaml's loader can point at its line.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "OptionError",
    "import_reference",
    "record_model",
    "record_validator",
    "short",
    "validation_reason",
]

_REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][\w.]*)?$")


class OptionError(ConveyorError, ValueError):
    """A connector option that cannot be used (a model that does not import, a path that
    matches no file); ``key`` is its config key (``source.model``)."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (OptionError, (self.key, self.args[0]))


def is_reference(text: str) -> bool:
    """Whether ``text`` reads like ``package.module:Name`` (or ``package.module.Name``).

    >>> is_reference("pipeline.contracts.models:Penguin"), is_reference("a b:c")
    (True, False)
    """
    return bool(_REFERENCE.match(text))


def _import_root(root: Path, package: str) -> Path | None:
    """The folder to import ``package`` from: ``root/src`` (the src layout), ``root``, or
    the folder above it (a bare pipeline folder is itself the package), whichever holds it."""
    for folder in (root / "src", root, root.parent):
        if (folder / package).is_dir() or (folder / f"{package}.py").is_file():
            return folder
    return None


def import_reference(ref: str, root: Path | None = None, *, key: str = "model") -> Any:
    """The object ``ref`` names: ``module:attr`` (or ``module.attr``), imported with the
    project's import root (see :func:`_import_root`) on ``sys.path`` when ``root`` is given.

    >>> import_reference("pathlib:PurePosixPath").__name__
    'PurePosixPath'
    >>> import_reference("no_such_module_x:Y", key="source.model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._imports.OptionError: source.model 'no_such_module_x:Y' cannot be imported: ...
    """
    hint = "name it as package.module:Class, e.g. pipeline.contracts.models:Penguin"
    if not is_reference(ref):
        raise OptionError(key, f"{key} {ref!r} is not a reference to a class; {hint}")
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name:
        raise OptionError(key, f"{key} {ref!r} names no module; {hint}")
    where = ""
    if root is not None:
        folder = _import_root(Path(root), module_name.split(".")[0])
        if folder is not None:
            where = f" (imported from {folder})"
            text = str(folder)
            if text not in sys.path:
                sys.path.insert(0, text)
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or an error raised by the module's code
        raise OptionError(
            key,
            f"{key} {ref!r} cannot be imported{where}: {type(exc).__name__}: {exc}; {hint}",
        ) from exc
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise OptionError(
                key, f"{key} {ref!r}: module {module_name!r} has no attribute {attr!r}; {hint}"
            ) from None
    return value


def record_model(model: Any, root: Path | None = None, *, key: str = "model") -> Any:
    """``model`` (a type, or a reference to import) checked to be a type Pydantic validates
    records with: a ``BaseModel`` subclass, a dataclass or a ``TypedDict``; ``None`` stays
    ``None``.

    >>> from pydantic import BaseModel
    >>> class Point(BaseModel):
    ...     x: int
    >>> record_model(Point) is Point, record_model(None)
    (True, None)
    >>> record_model(42, key="source.model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    conveyor.core._imports.OptionError: source.model must be a Pydantic model class ...
    """
    if model is None:
        return None
    found = import_reference(model, root, key=key) if isinstance(model, str) else model
    if not isinstance(found, type):
        raise OptionError(
            key,
            f"{key} must be a Pydantic model class (or a dataclass or TypedDict), got "
            f"{found!r:.80}",
        )
    return found


def short(value: Any, limit: int = 40) -> str:
    """A value for a message: its repr cut at ``limit`` characters."""
    try:
        text = repr(value[: limit + 1] if isinstance(value, str | bytes) else value)
    except ValueError:  # an int too long for repr (sys.get_int_max_str_digits())
        return "a very long number"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validation_reason(exc: ValidationError) -> str:
    """A model's refusal in one line: each field and its error (the first three)."""
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in error["loc"])
        message = " ".join(str(error["msg"]).split())
        got = "" if error["type"] == "missing" else f" (got {short(error.get('input'))})"
        parts.append(f"field {loc!r}: {message}{got}" if loc else f"{message}{got}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def record_validator(model: Any) -> Callable[[Any], Any] | None:
    """The function validating one record with ``model`` (a Pydantic model, a dataclass or
    a TypedDict; ``None``: no model)."""
    if model is None:
        return None
    from pydantic import BaseModel, TypeAdapter

    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate
    try:
        return TypeAdapter(model).validate_python
    except Exception as exc:  # pydantic cannot build a schema for it
        raise OptionError(
            "source.model",
            f"source.model {model!r:.80} cannot validate records ({type(exc).__name__}: "
            f"{exc}); use a Pydantic model, a dataclass or a TypedDict",
        ) from exc
