"""Rendering that never raises: text for objects and exceptions, JSON for values.

Dead letters, logs and reports describe *failed* records and the exceptions that failed
them, so the description must not fail in turn: a record whose ``__repr__`` raises, a
``KeyError`` holding such a record, an exception whose ``__str__`` raises or whose causes
form a cycle. Every function here returns a string (or a JSON-able value) for any input,
with a placeholder naming the type where the object itself cannot be shown:

>>> class Hostile:
...     def __repr__(self) -> str:
...         raise RuntimeError("no repr")
...     __str__ = __repr__
>>> safe_repr(Hostile())
'<unrepresentable conveyor.core._render.Hostile>'
>>> safe_str(Hostile())
'<unprintable conveyor.core._render.Hostile: RuntimeError>'
>>> error_message(KeyError(Hostile()))
'<unprintable builtins.KeyError: RuntimeError>'

:func:`format_traceback` is ``"".join(traceback.format_exception(exc))``, protected the
same way and cached: a stage that fails the same way on many records pays for formatting
the frames once. :func:`render_value` turns a record into plain JSON values, keeping every
part that can be shown. :func:`printable` makes text from records and errors safe for a
terminal: control characters (escape sequences among them) are shown, not obeyed.

This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import linecache
import math
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Mapping
from types import CodeType
from typing import Any, Final, cast

__all__ = [
    "error_message",
    "format_traceback",
    "printable",
    "qualified_name",
    "render_value",
    "safe_repr",
    "safe_str",
]

#: How deep :func:`render_value` descends into containers and objects.
MAX_RENDER_DEPTH: Final = 32
#: How many traceback shapes :func:`format_traceback` remembers (least recently used go).
TRACEBACK_CACHE_SIZE: Final = 256

_CAUSE: Final = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT: Final = "\nDuring handling of the above exception, another exception occurred:\n\n"
_HEADER: Final = "Traceback (most recent call last):\n"
_MISSING: Final[Any] = object()


# -- text ------------------------------------------------------------------------------------


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class (``builtins.ValueError``); never raises.

    >>> qualified_name(KeyError), qualified_name(dict)
    ('builtins.KeyError', 'builtins.dict')
    """
    try:
        module = cls.__module__
        name = cls.__qualname__
        if isinstance(module, str) and isinstance(name, str):
            return f"{module}.{name}"
        return f"{module!s}.{name!s}"
    except Exception:  # pragma: no cover - a class always has both (a str __qualname__)
        return "<unknown type>"


def safe_str(obj: object) -> str:
    """``str(obj)``, or ``<unprintable module.QualName: ErrorType>`` if that raises.

    Any :class:`Exception` counts, :class:`RecursionError` included.

    >>> safe_str(3), safe_str("text")
    ('3', 'text')
    """
    try:
        text = str(obj)
    except Exception as exc:
        return f"<unprintable {qualified_name(type(obj))}: {_error_type(exc)}>"
    if type(text) is not str:  # a str subclass from __str__: make it plain
        return str.__str__(text)
    return text


def safe_repr(obj: object) -> str:
    """``repr(obj)``, or ``<unrepresentable module.QualName>`` if that raises.

    >>> safe_repr("a"), safe_repr([1, (2,)])
    ("'a'", '[1, (2,)]')
    """
    try:
        text = repr(obj)
    except Exception:
        return f"<unrepresentable {qualified_name(type(obj))}>"
    if type(text) is not str:
        return str.__str__(text)
    return text


def error_message(exc: BaseException) -> str:
    """``str(exc)``, protected like :func:`safe_str`.

    ``str(KeyError(x))`` calls ``repr(x)``, which may raise; then the message is the
    placeholder.

    >>> error_message(KeyError("email")), error_message(ValueError("bad"))
    ("'email'", 'bad')
    """
    return safe_str(exc)


def _escape_for(code: int) -> str:
    """How :func:`printable` shows the character ``code``."""
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    if code in named:
        return named[code]
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


# C0 controls, DEL, C1 controls (0x9b is a one-byte CSI, 0x9d an OSC), and the characters
# that reorder or break lines on a terminal: bidirectional overrides and isolates
# ("Trojan Source"), the Unicode line and paragraph separators.
_CONTROL_CODES: Final = (
    *range(0x20),  # C0
    0x7F,  # DEL
    *range(0x80, 0xA0),  # C1
    *range(0x202A, 0x202F),  # bidirectional embeddings and overrides
    *range(0x2066, 0x206A),  # bidirectional isolates
    0x200E,  # left-to-right mark
    0x200F,  # right-to-left mark
    0x2028,  # line separator
    0x2029,  # paragraph separator
)
_ESCAPES: Final[dict[int, str]] = {code: _escape_for(code) for code in _CONTROL_CODES}
_KEEP_NEWLINES: Final[dict[int, str]] = {k: v for k, v in _ESCAPES.items() if k != 0x0A}
_CONTROL: Final = frozenset(map(chr, _CONTROL_CODES))


def printable(text: object, *, newlines: bool = False) -> str:
    r"""``text`` (any object: its :func:`safe_str`) fit for a terminal: every control
    character shown as an escape (``\x1b``, ``\r``, ``\t``, ``\u202e``) instead of
    being obeyed, so a record or an error message cannot move the cursor, recolour or clear
    the screen, retitle the window or hide text. Line breaks are escaped too unless
    ``newlines`` (multi-line text such as a traceback keeps its lines). Backslashes are left
    as they are: the text stays readable, and a lookalike escape written by hand is
    harmless.

    >>> printable("bad \x1b[2J\x1b]0;owned\x07 value\r")
    'bad \\x1b[2J\\x1b]0;owned\\x07 value\\r'
    >>> printable("line 1\nline 2\u202e"), printable("a\nb", newlines=True)
    ('line 1\\nline 2\\u202e', 'a\nb')
    >>> printable("plain [bold]text[/bold]")  # markup is the printer's business
    'plain [bold]text[/bold]'
    """
    shown = text if type(text) is str else safe_str(text)
    if _CONTROL.isdisjoint(shown):
        return shown
    return shown.translate(_KEEP_NEWLINES if newlines else _ESCAPES)


def _error_type(exc: BaseException) -> str:
    try:
        return type(exc).__qualname__
    except Exception:  # pragma: no cover - a type always has a __qualname__
        return "Exception"


# -- tracebacks ------------------------------------------------------------------------------

# The frame part of a formatted exception chain, by the shape of the chain: for each link
# its type, how it is chained, and (code object id, last instruction) of each frame of its
# traceback. The value holds, per link in printing order, the text that comes before its
# "Type: message" lines (the chain message, the "Traceback" header and the frames), or
# ``None`` for a shape that this module does not model (formatted in full every time), and
# the code objects themselves, which keeps their ids from being reused while cached.
_Entry = tuple[tuple[str, ...] | None, tuple[CodeType, ...]]
_cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
_cache_lock = threading.Lock()

_Link = tuple[str | None, BaseException]


def format_traceback(exc: BaseException) -> str:
    """``"".join(traceback.format_exception(exc))``, but never raises, and fast when repeated.

    The text equals :func:`traceback.format_exception`'s, chained causes and contexts
    included. The frame part is remembered (for up to 256 shapes: the frames' code objects
    and positions, the exception types and how they are chained), so formatting the same
    failure again only rebuilds the ``Type: message`` lines. If formatting fails anyway (a
    module loader that raises while the source lines are looked up, say), a plainer
    traceback is returned instead: its frames, with the source lines read from the files
    themselves where that works, and the ``Type: message`` line.

    >>> def parse(text):
    ...     return int(text)
    >>> try:
    ...     parse("seven")
    ... except ValueError as exc:
    ...     text = format_traceback(exc)
    >>> print(text.splitlines()[-1])
    ValueError: invalid literal for int() with base 10: 'seven'
    >>> format_traceback(ValueError("never raised"))
    'ValueError: never raised\\n'
    """
    try:
        return _format_cached(exc)
    except Exception:
        pass
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        pass
    return _format_plain(exc)


def _format_cached(exc: BaseException) -> str:
    walked = _walk(exc)
    if walked is None:  # a shape this module does not model: the stdlib's text, not cached
        return "".join(traceback.format_exception(exc))
    links, key = walked
    entry = _cache.get(key)  # (single dict operations need no lock)
    if entry is not None:
        try:  # noqa: SIM105 - contextlib.suppress would cost more than the rest of a hit
            _cache.move_to_end(key)
        except KeyError:  # pragma: no cover - evicted by another thread meanwhile
            pass
    else:
        segments, text = _learn(exc, links)
        with _cache_lock:
            # The entry holds the code objects, so their ids in the key stay theirs.
            _cache[key] = (segments, _codes(links))
            while len(_cache) > TRACEBACK_CACHE_SIZE:
                _cache.popitem(last=False)
        return text
    segments = entry[0]
    if segments is None:
        return "".join(traceback.format_exception(exc))
    if len(segments) == 1:
        return segments[0] + _exception_only(exc)
    parts: list[str] = []
    for segment, (_, link) in zip(segments, reversed(links), strict=True):
        parts.append(segment)
        parts.append(_exception_only(link))
    return "".join(parts)


# Since 3.12 the traceback module adds "Did you mean" suggestions to these exceptions'
# messages, looked up in the frames: their last line is not just ``str(exc)``.
_UNMODELLED: Final[tuple[type[BaseException], ...]] = (
    (BaseExceptionGroup, NameError, AttributeError, ImportError)
    if sys.version_info >= (3, 12)
    else (BaseExceptionGroup,)
)


def _walk(exc: BaseException) -> tuple[list[_Link], tuple[Any, ...]] | None:
    """The chain and its cache key, or ``None`` for a chain this module does not model.

    The chain is walked as :class:`traceback.TracebackException` walks it (``compact``):
    outermost first, each link being (the chain message printed after the exception it
    leads to, the exception). The key holds ``sys.tracebacklimit`` and, per link, its type,
    its chain message and (code object id, last instruction) of each of its frames; the
    last instruction gives the line and the span its carets mark.
    """
    seen = {id(exc)}
    links: list[_Link] = []
    key: list[Any] = [sys.__dict__.get("tracebacklimit")]
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, _UNMODELLED):
            return None
        following: BaseException | None = current.__cause__
        message: str | None = _CAUSE
        if following is None or id(following) in seen:
            following = None if current.__suppress_context__ else current.__context__
            message = _CONTEXT
            if following is None or id(following) in seen:
                following = message = None
        links.append((message, current))
        key.append(type(current))
        key.append(message)
        tb = current.__traceback__
        while tb is not None:
            key.append(id(tb.tb_frame.f_code))
            key.append(tb.tb_lasti)
            tb = tb.tb_next
        if following is not None:
            seen.add(id(following))
        current = following
    return links, tuple(key)


def _codes(links: list[_Link]) -> tuple[CodeType, ...]:
    codes: list[CodeType] = []
    for _, link in links:
        tb = link.__traceback__
        while tb is not None:
            codes.append(tb.tb_frame.f_code)
            tb = tb.tb_next
    return tuple(codes)


def _learn(exc: BaseException, links: list[_Link]) -> tuple[tuple[str, ...] | None, str]:
    """Format ``exc`` with the stdlib; split the text into cacheable frame segments.

    Returns the segments (``None`` if the split does not reproduce the text exactly) and
    the text.
    """
    top = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
    text = "".join(top.format())
    chain: list[tuple[str | None, traceback.TracebackException]] = []
    node: traceback.TracebackException | None = top
    while node is not None:
        following: traceback.TracebackException | None
        if node.__cause__ is not None:
            message, following = _CAUSE, node.__cause__
        elif node.__context__ is not None and not node.__suppress_context__:
            message, following = _CONTEXT, node.__context__
        else:
            message, following = None, None
        chain.append((message, node))
        node = following
    if len(chain) != len(links) or any(
        message != link_message or te.exceptions is not None
        for (message, te), (link_message, _) in zip(chain, links, strict=True)
    ):
        return None, text
    segments: list[str] = []
    for message, te in reversed(chain):
        frames = (_HEADER + "".join(te.stack.format())) if te.stack else ""
        segments.append((message or "") + frames)
    rebuilt = "".join(
        segment + _exception_only(link)
        for segment, (_, link) in zip(segments, reversed(links), strict=True)
    )
    if rebuilt != text:
        return None, text
    return tuple(segments), text


def _exception_only(exc: BaseException) -> str:
    """``"".join(traceback.format_exception_only(exc))`` for this exception alone."""
    cls = type(exc)
    if issubclass(cls, SyntaxError) or getattr(exc, "__notes__", None) is not None:
        te = traceback.TracebackException(cls, exc, None, lookup_lines=False)
        return "".join(te.format_exception_only())
    name = cls.__qualname__
    module = cls.__module__
    if module not in ("__main__", "builtins"):
        if not isinstance(module, str):
            module = "<unknown>"
        name = module + "." + name
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    return f"{name}: {message}\n" if message else f"{name}\n"


def _format_plain(exc: BaseException) -> str:
    """A traceback for when the stdlib's formatting fails: frames, plain source lines."""
    lines: list[str] = []
    try:
        tb = exc.__traceback__
        if tb is not None:
            lines.append(_HEADER)
        while tb is not None:
            code = tb.tb_frame.f_code
            lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}\n')
            lines.append(_source_line(code.co_filename, tb.tb_lineno))
            tb = tb.tb_next
    except Exception:  # pragma: no cover - frames and code objects are plain data
        lines = []
    try:
        lines.append(_exception_only(exc))
    except Exception:
        lines.append(f"{qualified_name(type(exc))}: {error_message(exc)}\n")
    return "".join(lines)


def _source_line(filename: str, lineno: int | None) -> str:
    """The source line, read from the file itself (no import hooks), or ``""``."""
    try:
        line = linecache.getline(filename, lineno or 0).strip()
    except Exception:
        return ""
    return f"    {line}\n" if line else ""


def _clear_traceback_cache() -> None:
    """Forget every cached traceback shape (for tests)."""
    with _cache_lock:
        _cache.clear()


# -- JSON ------------------------------------------------------------------------------------


def render_value(value: object) -> Any:
    """``value`` as plain JSON values, keeping as much of it as can be shown; never raises.

    - ``None``, booleans, integers and strings stay as they are (subclasses such as
      :class:`enum.IntEnum` become the plain value, as :mod:`json` writes them); finite
      floats too, while NaN and the infinities become ``"nan"``, ``"inf"``, ``"-inf"``.
    - Dicts (and other mappings) stay dicts, with string keys: ``None``, booleans and numbers
      as :mod:`json` writes them as keys, any other key its ``repr()``. Lists and tuples
      become lists.
    - A Pydantic model becomes its ``model_dump(mode="json")``, if that works.
    - A dataclass, and an object of your own with a ``__dict__`` or ``__slots__``, becomes
      ``{"__type__": "module.QualName", field: value, ...}``, field by field, so a record
      whose ``__repr__`` raises still shows its fields. An attribute that cannot be read
      becomes ``"<unreadable: ErrorType>"``.
    - Anything else, including standard-library objects (dates, paths, UUIDs, sets), enum
      members, exceptions and objects without fields, becomes its ``repr()`` (or the
      :func:`safe_repr` placeholder); if that raises, its fields are shown instead, if any.

    Containers deeper than 32 levels become ``"<nested too deep: module.QualName>"``, and a
    container inside itself ``"<cycle: module.QualName>"``.

    >>> import datetime, math
    >>> render_value({"id": 1, "when": datetime.date(2024, 1, 2), "score": math.nan})
    {'id': 1, 'when': 'datetime.date(2024, 1, 2)', 'score': 'nan'}
    >>> render_value({(1, 2): {3, 4}, None: (5,)})
    {'(1, 2)': '{3, 4}', 'null': [5]}
    """
    return _render(value, MAX_RENDER_DEPTH, set())


def _render(value: object, depth: int, active: set[int]) -> Any:
    cls = type(value)
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if cls is float:
        number = cast(float, value)
        return number if math.isfinite(number) else repr(number)
    try:
        return _render_other(value, cls, depth, active)
    except Exception:
        return safe_repr(value)


def _render_other(value: object, cls: type, depth: int, active: set[int]) -> Any:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):  # (bool cannot be subclassed: True and False were done)
        return int.__index__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        return number if math.isfinite(number) else float.__repr__(number)
    container = isinstance(value, (dict, list, tuple, Mapping))
    if container or not _repr_first(cls):
        if id(value) in active:
            return f"<cycle: {qualified_name(cls)}>"
        if depth <= 0:
            return f"<nested too deep: {qualified_name(cls)}>"
        active.add(id(value))
        try:
            if container:
                return _render_container(value, depth, active)
            return _render_object(value, cls, depth, active)
        finally:
            active.discard(id(value))
    try:
        text = repr(value)
    except Exception:
        return _render_fields_instead(value, cls, depth, active)
    return text if type(text) is str else str.__str__(text)


def _render_container(value: object, depth: int, active: set[int]) -> Any:
    if isinstance(value, Mapping):
        return _render_mapping(value, depth, active)
    assert isinstance(value, (list, tuple))
    return [_render(item, depth - 1, active) for item in value]


def _render_mapping(value: Mapping[Any, Any], depth: int, active: set[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[_free_key(out, key)] = _render(item, depth - 1, active)
    return out


def _render_object(value: object, cls: type, depth: int, active: set[int]) -> Any:
    dumped = _pydantic_dump(value, cls)
    if dumped is not _MISSING:
        return _render(dumped, depth - 1, active)
    fields = _fields(value, cls, depth, active)
    if fields is not None:
        return fields
    return safe_repr(value)


def _render_fields_instead(value: object, cls: type, depth: int, active: set[int]) -> Any:
    if id(value) in active or depth <= 0:
        return f"<unrepresentable {qualified_name(cls)}>"
    active.add(id(value))
    try:
        fields = _fields(value, cls, depth, active)
    finally:
        active.discard(id(value))
    return f"<unrepresentable {qualified_name(cls)}>" if fields is None else fields


def _pydantic_dump(value: object, cls: type) -> Any:
    """``value.model_dump(mode="json")`` for a Pydantic model, else ``_MISSING``."""
    if not hasattr(cls, "__pydantic_fields__") or not callable(getattr(cls, "model_dump", None)):
        return _MISSING
    try:
        return value.model_dump(mode="json", warnings=False)  # type: ignore[attr-defined]
    except Exception:
        return _MISSING


def _fields(value: object, cls: type, depth: int, active: set[int]) -> dict[str, Any] | None:
    """``{"__type__": ..., field: rendered, ...}``, or ``None`` when there are no fields."""
    names: list[str]
    if dataclasses.is_dataclass(value):
        names = [f.name for f in dataclasses.fields(value)]
        from_dict: dict[str, Any] = {}
    else:
        names = _slot_names(cls)
        raw = getattr(value, "__dict__", None)
        from_dict = raw if isinstance(raw, dict) else {}
    if not names and not from_dict:
        return None
    out: dict[str, Any] = {"__type__": qualified_name(cls)}
    for name in names:
        try:
            item = getattr(value, name)
        except AttributeError:
            if not dataclasses.is_dataclass(value):
                continue  # an empty slot is no field
            out[name] = "<unreadable: AttributeError>"
            continue
        except Exception as exc:
            out[name] = f"<unreadable: {_error_type(exc)}>"
            continue
        out[_free_key(out, name)] = _render(item, depth - 1, active)
    for key, item in list(from_dict.items()):
        out[_free_key(out, key)] = _render(item, depth - 1, active)
    return out


@functools.lru_cache(maxsize=1024)
def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if not isinstance(slot, str) or slot in ("__dict__", "__weakref__"):
                continue
            if slot.startswith("__") and not slot.endswith("__"):
                slot = f"_{klass.__name__.lstrip('_')}{slot}"  # name mangling
            if slot not in names:
                names.append(slot)
    return names


@functools.lru_cache(maxsize=1024)
def _repr_first(cls: type) -> bool:
    """Whether objects of ``cls`` are shown by their ``repr()`` rather than field by field.

    Standard-library classes (dates, paths, UUIDs, locks), classes, enum members and
    exceptions have a ``repr()`` that says more than their private fields.
    """
    if issubclass(cls, (type, BaseException, enum.Enum)):
        return True
    if dataclasses.is_dataclass(cls):
        return False
    module = cls.__module__
    if not isinstance(module, str):
        return False
    return module.partition(".")[0] in sys.stdlib_module_names


def _free_key(out: dict[str, Any], key: object) -> str:
    """``key`` as a JSON object key that ``out`` does not hold yet."""
    text = _json_key(key)
    if text not in out:
        return text
    text = safe_repr(key)
    number = 2
    candidate = text
    while candidate in out:
        candidate = f"{text}#{number}"
        number += 1
    return candidate


def _json_key(key: object) -> str:
    if isinstance(key, str):
        return key if type(key) is str else str.__str__(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return int.__repr__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    return safe_repr(key)
