"""conveyor.core._render: text and JSON for any object and any exception, never raising."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import pathlib
import sys
import traceback
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pydantic
import pytest

from conveyor.core import _render
from conveyor.core._render import (
    error_message,
    format_traceback,
    qualified_name,
    render_value,
    safe_repr,
    safe_str,
)

HERE = __name__


class Hostile:
    """Neither str() nor repr() works."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


class SelfRecursive:
    """str() and repr() recurse until the stack runs out."""

    def __repr__(self) -> str:
        return repr(self)

    def __str__(self) -> str:
        return str(self)


class NotAString:
    def __str__(self) -> Any:
        return 42

    def __repr__(self) -> Any:
        return 42


class BadStrError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def stdlib(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def caught(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    _render._clear_traceback_cache()
    yield
    _render._clear_traceback_cache()


# -- text --------------------------------------------------------------------------------------


class TestSafeStrAndRepr:
    def test_plain_objects(self) -> None:
        assert safe_str(3) == "3"
        assert safe_str("text") == "text"
        assert safe_repr("text") == "'text'"
        assert safe_repr({"a": (1,)}) == "{'a': (1,)}"

    def test_raising_str_and_repr_become_placeholders(self) -> None:
        assert safe_str(Hostile()) == f"<unprintable {HERE}.Hostile: RuntimeError>"
        assert safe_repr(Hostile()) == f"<unrepresentable {HERE}.Hostile>"

    def test_recursion_error_is_caught(self) -> None:
        assert safe_str(SelfRecursive()) == f"<unprintable {HERE}.SelfRecursive: RecursionError>"
        assert safe_repr(SelfRecursive()) == f"<unrepresentable {HERE}.SelfRecursive>"

    def test_a_non_string_result_is_a_failure_too(self) -> None:
        assert safe_str(NotAString()) == f"<unprintable {HERE}.NotAString: TypeError>"
        assert safe_repr(NotAString()) == f"<unrepresentable {HERE}.NotAString>"

    def test_a_str_subclass_result_becomes_a_plain_str(self) -> None:
        class Text(str):
            pass

        class Speaks:
            def __str__(self) -> str:
                return Text("hello")

        result = safe_str(Speaks())
        assert result == "hello"
        assert type(result) is str

    def test_nested_class_is_named_by_its_qualname(self) -> None:
        class Inner(Hostile):
            pass

        assert safe_repr(Inner()) == (
            f"<unrepresentable {HERE}.TestSafeStrAndRepr."
            "test_nested_class_is_named_by_its_qualname.<locals>.Inner>"
        )

    def test_qualified_name(self) -> None:
        assert qualified_name(KeyError) == "builtins.KeyError"
        assert qualified_name(Hostile) == f"{HERE}.Hostile"

    def test_qualified_name_of_a_class_with_an_odd_module(self) -> None:
        odd = type("Odd", (), {})
        odd.__module__ = None  # type: ignore[assignment]
        assert qualified_name(odd) == "None.Odd"

    def test_a_str_subclass_repr_becomes_a_plain_str(self) -> None:
        class Text(str):
            pass

        class Shows:
            def __repr__(self) -> str:
                return Text("shown")

        result = safe_repr(Shows())
        assert (result, type(result)) == ("shown", str)


class TestErrorMessage:
    def test_plain_messages(self) -> None:
        assert error_message(ValueError("bad")) == "bad"
        assert error_message(KeyError("email")) == "'email'"
        assert error_message(ValueError()) == ""

    def test_key_error_holding_an_unrepresentable_key(self) -> None:
        # str(KeyError(x)) is repr(x), which raises here.
        assert error_message(KeyError(Hostile())) == (
            "<unprintable builtins.KeyError: RuntimeError>"
        )

    def test_exception_whose_str_raises(self) -> None:
        assert error_message(BadStrError()) == f"<unprintable {HERE}.BadStrError: RuntimeError>"


# -- tracebacks --------------------------------------------------------------------------------


def level_one(text: str) -> int:
    return level_two(text)


def level_two(text: str) -> int:
    return level_three(text)


def level_three(text: str) -> int:
    return int(text)  # a ValueError three frames down


def parse_failure(text: str) -> BaseException:
    """The ValueError of parsing ``text``, raised at the same place every time."""
    return caught(lambda: level_one(text))


def raise_it(exc: BaseException) -> None:
    raise exc


def chained_cause() -> None:
    try:
        level_one("x")
    except ValueError as exc:
        raise KeyError("wrapped") from exc


def chained_context() -> None:
    try:
        level_one("x")
    except ValueError:
        raise RuntimeError("while handling")  # noqa: B904 - the implicit context is the point


def context_suppressed() -> None:
    try:
        level_one("x")
    except ValueError:
        raise RuntimeError("no context shown") from None


def three_links() -> None:
    try:
        chained_cause()
    except KeyError:
        raise TypeError("outermost")  # noqa: B904


def one_of_two_calls(first: bool) -> int:
    return fails_if(first) + fails_if(not first)  # two calls on one line: other carets


def fails_if(condition: bool) -> int:
    if condition:
        raise ValueError("this one")
    return 1


def with_notes() -> None:
    exc = ValueError("noted")
    exc.add_note("first note\nsecond line")
    raise exc


def group() -> None:
    raise ExceptionGroup("many", [ValueError("a"), TypeError("b")])


def recurse(depth: int) -> int:
    return recurse(depth + 1)


def syntax() -> None:
    compile("a b", "<generated>", "exec")


def missing_key() -> object:
    empty: dict[str, int] = {}
    return empty["missing"]


SHAPES: dict[str, Callable[[], object]] = {
    "three frames deep": lambda: level_one("seven"),
    "empty message": lambda: (_ for _ in ()).throw(ValueError()),
    "key error": missing_key,
    "cause": chained_cause,
    "context": chained_context,
    "suppressed context": context_suppressed,
    "three links": three_links,
    "carets of the first call": lambda: one_of_two_calls(True),
    "carets of the second call": lambda: one_of_two_calls(False),
    "notes": with_notes,
    "exception group": group,
    "syntax error": syntax,
    "recursion": lambda: recurse(0),
    "str raises": lambda: (_ for _ in ()).throw(BadStrError()),
    "key error of an unrepresentable key": lambda: (_ for _ in ()).throw(KeyError(Hostile())),
}


class TestFormatTraceback:
    @pytest.mark.parametrize("shape", list(SHAPES))
    def test_equals_the_stdlib_fresh_and_cached(self, shape: str) -> None:
        for _ in range(3):  # the first call fills the cache; the others use it
            exc = caught(SHAPES[shape])
            assert format_traceback(exc) == stdlib(exc)

    def test_all_shapes_in_turn_with_a_warm_cache(self) -> None:
        for _ in range(2):
            for action in SHAPES.values():
                exc = caught(action)
                assert format_traceback(exc) == stdlib(exc)

    def test_two_calls_on_one_line_keep_their_own_carets(self) -> None:
        texts = []
        for first in (True, False, True, False):
            exc = caught(lambda first=first: one_of_two_calls(first))  # type: ignore[misc]
            texts.append(format_traceback(exc))
            assert texts[-1] == stdlib(exc)
        assert texts[0] != texts[1]  # the same lines, other carets under the failing call

    def test_never_raised_exception(self) -> None:
        assert format_traceback(ValueError("made, not raised")) == (
            "ValueError: made, not raised\n"
        )

    def test_the_message_is_rebuilt_per_call(self) -> None:
        first = format_traceback(parse_failure("seven"))
        second = format_traceback(parse_failure("eight"))
        assert first.endswith("ValueError: invalid literal for int() with base 10: 'seven'\n")
        assert second.endswith("ValueError: invalid literal for int() with base 10: 'eight'\n")
        assert first.rsplit("\n", 2)[0] == second.rsplit("\n", 2)[0]  # same frames

    def test_the_frames_are_cached_by_shape(self) -> None:
        format_traceback(parse_failure("a"))
        format_traceback(parse_failure("b"))
        assert len(_render._cache) == 1
        format_traceback(caught(chained_cause))
        assert len(_render._cache) == 2

    def test_the_same_frames_with_another_type_are_another_shape(self) -> None:
        def fail(kind: type[Exception]) -> None:
            raise kind("x")

        for kind in (ValueError, TypeError, ValueError):
            exc = caught(lambda kind=kind: fail(kind))  # type: ignore[misc]
            assert format_traceback(exc) == stdlib(exc)
        assert len(_render._cache) == 2

    def test_the_cache_is_bounded(self) -> None:
        for number in range(_render.TRACEBACK_CACHE_SIZE + 40):
            namespace: dict[str, Any] = {}
            exec(
                compile(
                    f"def f{number}():\n    raise ValueError({number})\n", "<generated>", "exec"
                ),
                namespace,
            )
            exc = caught(namespace[f"f{number}"])
            assert format_traceback(exc) == stdlib(exc)
        assert len(_render._cache) == _render.TRACEBACK_CACHE_SIZE

    def test_a_cause_cycle_terminates(self) -> None:
        inner = caught(lambda: level_one("x"))
        outer = caught(chained_cause)
        inner.__context__ = outer  # outer's cause's context is outer again
        assert format_traceback(outer) == stdlib(outer)
        itself = ValueError("self")
        itself.__cause__ = itself
        assert format_traceback(itself) == stdlib(itself)
        assert format_traceback(itself) == "ValueError: self\n"

    def test_an_exception_class_without_a_string_module(self) -> None:
        nowhere = type("NowhereError", (Exception,), {})
        nowhere.__module__ = None  # type: ignore[assignment]

        def fail() -> None:
            raise nowhere("lost")

        for _ in range(2):
            exc = caught(fail)
            assert format_traceback(exc) == stdlib(exc)
            assert format_traceback(exc).endswith("<unknown>.NowhereError: lost\n")

    def test_a_message_that_changes_between_calls_is_not_cached(self) -> None:
        class CountingError(Exception):
            calls = 0

            def __str__(self) -> str:
                CountingError.calls += 1
                return f"call {CountingError.calls}"

        def fail() -> None:
            raise CountingError()

        first = format_traceback(caught(fail))  # its split cannot reproduce the stdlib text
        assert [entry[0] for entry in _render._cache.values()] == [None]
        second = format_traceback(caught(fail))  # so it is formatted in full again
        assert first.startswith("Traceback (most recent call last):\n")
        assert second.rsplit("\n", 2)[0] == first.rsplit("\n", 2)[0]
        assert first.endswith("CountingError: call 1\n") or "call" in first
        assert second != first

    def test_notes_that_cannot_be_read_fall_back_to_the_plain_form(self) -> None:
        class NotesRaiseError(Exception):
            @property
            def __notes__(self) -> list[str]:
                raise RuntimeError("no notes")

        exc = caught(lambda: raise_it(NotesRaiseError("message")))
        with pytest.raises(RuntimeError, match="no notes"):
            traceback.format_exception(exc)
        text = format_traceback(exc)
        assert text.startswith("Traceback (most recent call last):\n")
        assert "    raise exc\n" in text  # source lines read from the file
        assert text.endswith(f"{HERE}.{NotesRaiseError.__qualname__}: message\n")

    def test_traceback_limit_is_honoured(self, monkeypatch: pytest.MonkeyPatch) -> None:
        exc = caught(lambda: level_one("x"))
        full = format_traceback(exc)
        monkeypatch.setattr(sys, "tracebacklimit", 1, raising=False)
        limited = format_traceback(exc)
        assert limited == stdlib(exc)
        assert limited != full

    def test_when_the_stdlib_itself_fails_a_plain_traceback_is_returned(self) -> None:
        class BrokenLoader:
            def get_source(self, name: str) -> str:
                raise ValueError("the loader is broken")

        namespace: dict[str, Any] = {"__name__": "hostile_module", "__loader__": BrokenLoader()}
        source = "def boom():\n    raise KeyError('k')\n"
        exec(compile(source, "/nonexistent/hostile_module.py", "exec"), namespace)
        exc = caught(namespace["boom"])
        with pytest.raises(ValueError, match="the loader is broken"):
            traceback.format_exception(exc)
        text = format_traceback(exc)
        assert text.startswith("Traceback (most recent call last):\n")
        assert '  File "/nonexistent/hostile_module.py", line 2, in boom\n' in text
        assert "in <lambda>" in text or "in caught" in text
        assert text.endswith("KeyError: 'k'\n")


# -- JSON --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: Any = None


class Plain:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class Slotted:
    __slots__ = ("__secret", "name", "unset")

    def __init__(self, name: str) -> None:
        self.name = name
        self.__secret = 42


class RecordWithoutRepr:
    """A user's record whose repr raises: its fields still show."""

    def __init__(self) -> None:
        self.id = 7
        self.email = "a@example.com"
        self.opaque = Hostile()

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Order(pydantic.BaseModel):
    id: int
    when: datetime.date
    score: float = 0.0


class Holder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    id: int
    thing: Any


class BrokenMapping(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("no items")

    def __repr__(self) -> str:
        return "BrokenMapping(...)"


class TestRenderValue:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, None),
            (True, True),
            (3, 3),
            (2.5, 2.5),
            ("text", "text"),
            (math.nan, "nan"),
            (math.inf, "inf"),
            (-math.inf, "-inf"),
            ((1, (2, 3)), [1, [2, 3]]),
            ([{"a": None}], [{"a": None}]),
            ({1: "a", 2.5: "b", None: "c"}, {"1": "a", "2.5": "b", "null": "c"}),
            ({False: "no"}, {"false": "no"}),
            ({(1, 2): "tuple key"}, {"(1, 2)": "tuple key"}),
            ({1, 2}, "{1, 2}"),
            (b"\x00", "b'\\x00'"),
            (datetime.date(2024, 1, 2), "datetime.date(2024, 1, 2)"),
            (pathlib.PurePosixPath("/a/b"), "PurePosixPath('/a/b')"),
            (Color.RED, "<Color.RED: 'red'>"),
            (Level.HIGH, 3),
            (ValueError("bad"), "ValueError('bad')"),
        ],
        ids=repr,
    )
    def test_values(self, value: Any, expected: Any) -> None:
        assert render_value(value) == expected

    def test_subclasses_of_plain_types_become_plain(self) -> None:
        class Name(str):
            pass

        class Big(int):
            pass

        rendered = render_value({Name("k"): [Name("v"), Big(5)]})
        assert rendered == {"k": ["v", 5]}
        (key,) = rendered
        assert type(key) is str
        assert [type(item) for item in rendered["k"]] == [str, int]

    def test_uuid_keeps_its_repr(self) -> None:
        value = uuid.UUID(int=1)
        assert render_value(value) == repr(value)

    def test_colliding_keys_are_all_kept(self) -> None:
        assert render_value({1: "int", "1": "str"}) == {"1": "int", "'1'": "str"}
        assert render_value({"'1'": "a", 1: "b", "1": "c"}) == {"'1'": "a", "1": "b", "'1'#2": "c"}

    def test_float_subclasses_and_other_mappings(self) -> None:
        class Score(float):
            pass

        mapping = types.MappingProxyType({"a": Score(1.5), "b": Score(math.nan)})
        rendered = render_value(mapping)
        assert rendered == {"a": 1.5, "b": "nan"}
        assert type(rendered["a"]) is float

    def test_an_attribute_that_raises_becomes_a_placeholder(self) -> None:
        class Guarded:
            __slots__ = ("open", "secret")

            def __init__(self) -> None:
                self.open = 1
                self.secret = 2

            def __getattribute__(self, name: str) -> Any:
                if name == "secret":
                    raise PermissionError("hidden")
                return object.__getattribute__(self, name)

        assert render_value(Guarded()) == {
            "__type__": f"{HERE}.{Guarded.__qualname__}",
            "open": 1,
            "secret": "<unreadable: PermissionError>",
        }

    def test_dataclass_field_by_field(self) -> None:
        assert render_value(Point(1, datetime.date(2024, 1, 2))) == {
            "__type__": f"{HERE}.Point",
            "x": 1,
            "y": "datetime.date(2024, 1, 2)",
        }

    def test_object_with_dict_field_by_field(self) -> None:
        assert render_value(Plain(id=1, tags=("a",))) == {
            "__type__": f"{HERE}.Plain",
            "id": 1,
            "tags": ["a"],
        }

    def test_object_with_slots_field_by_field(self) -> None:
        assert render_value(Slotted("ada")) == {
            "__type__": f"{HERE}.Slotted",
            "_Slotted__secret": 42,
            "name": "ada",
        }

    def test_an_object_without_fields_is_its_repr(self) -> None:
        assert render_value(Plain()).startswith(f"<{HERE}.Plain object at 0x")

    def test_a_record_whose_repr_raises_keeps_its_fields(self) -> None:
        assert render_value(RecordWithoutRepr()) == {
            "__type__": f"{HERE}.RecordWithoutRepr",
            "id": 7,
            "email": "a@example.com",
            "opaque": f"<unrepresentable {HERE}.Hostile>",
        }

    def test_an_unreadable_field_becomes_a_placeholder(self) -> None:
        @dataclasses.dataclass
        class Lazy:
            id: int
            late: int = dataclasses.field(init=False)

        assert render_value(Lazy(1)) == {
            "__type__": f"{HERE}.{Lazy.__qualname__}",
            "id": 1,
            "late": "<unreadable: AttributeError>",
        }

    def test_a_mapping_that_cannot_be_iterated_is_its_repr(self) -> None:
        assert render_value({"inner": BrokenMapping(a=1), "n": 1}) == {
            "inner": "BrokenMapping(...)",
            "n": 1,
        }

    def test_a_stdlib_object_whose_repr_raises_shows_its_fields(self) -> None:
        class Odd(ValueError):
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        error = Odd("x")
        error.code = 5  # type: ignore[attr-defined]
        assert render_value(error) == {"__type__": f"{HERE}.{Odd.__qualname__}", "code": 5}
        assert render_value(Odd("y")) == f"<unrepresentable {HERE}.{Odd.__qualname__}>"

    def test_pydantic_model_is_its_json_dump(self) -> None:
        order = Order(id=1, when=datetime.date(2024, 1, 2), score=math.nan)
        assert render_value(order) == {"id": 1, "when": "2024-01-02", "score": "nan"}

    def test_pydantic_model_that_cannot_dump_goes_field_by_field(self) -> None:
        holder = Holder(id=1, thing=RecordWithoutRepr())
        rendered = render_value(holder)
        assert rendered["__type__"] == f"{HERE}.Holder"
        assert rendered["id"] == 1
        assert rendered["thing"]["id"] == 7

    def test_cycles_are_cut(self) -> None:
        looping: list[Any] = [1]
        looping.append(looping)
        assert render_value(looping) == [1, "<cycle: builtins.list>"]
        node = Plain(id=1)
        node.me = {"again": node}  # type: ignore[attr-defined]
        assert render_value(node) == {
            "__type__": f"{HERE}.Plain",
            "id": 1,
            "me": {"again": f"<cycle: {HERE}.Plain>"},
        }

    def test_a_shared_value_is_not_a_cycle(self) -> None:
        shared = [1]
        assert render_value({"a": shared, "b": shared}) == {"a": [1], "b": [1]}

    def test_depth_is_bounded(self) -> None:
        deep: list[Any] = []
        current = deep
        for _ in range(1000):
            current.append([])
            current = current[0]
        rendered = render_value(deep)
        levels = 0
        while isinstance(rendered, list):
            rendered = rendered[0]
            levels += 1
        assert levels == _render.MAX_RENDER_DEPTH
        assert rendered == "<nested too deep: builtins.list>"

    @pytest.mark.parametrize(
        "value",
        [
            {"id": 1, "nested": {"x": [1.5, math.nan, {2, 3}, b"raw"]}},
            [RecordWithoutRepr(), Hostile(), SelfRecursive(), NotAString()],
            {Hostile(): Hostile()},
            Slotted("x"),
        ],
    )
    def test_the_result_is_always_strict_json(self, value: Any) -> None:
        text = json.dumps(render_value(value), allow_nan=False)
        assert json.loads(text) == render_value(value)
