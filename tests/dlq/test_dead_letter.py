"""DeadLetter: what it captures from a live exception, its invariants and its summary."""

from __future__ import annotations

import asyncio
import dataclasses
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from conveyor.dlq import DeadLetter
from conveyor.errors import ContractViolation


def explode_on_purpose(record: dict[str, int]) -> int:
    return record["missing"]


def caught(record: dict[str, int]) -> BaseException:
    try:
        explode_on_purpose(record)
    except KeyError as exc:
        return exc
    raise AssertionError("unreachable")


class Outer:
    class InnerError(Exception):
        pass


def letter(**overrides: object) -> DeadLetter:
    fields: dict[str, object] = {
        "id": "0123456789abcdef0123456789abcdef",
        "record": {"id": 7},
        "stage": "enrich",
        "attempts": 3,
        "error_type": "builtins.KeyError",
        "message": "'email'",
        "traceback": "Traceback ...",
        "run_id": "run-1",
        "created_at": datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC),
    }
    fields.update(overrides)
    return DeadLetter(**fields)  # type: ignore[arg-type]


class TestFromException:
    def test_captures_record_stage_and_run(self) -> None:
        record = {"id": 1}
        dead = DeadLetter.from_exception(
            record, caught(record), stage="parse", attempts=2, run_id="r9", source_offset=41
        )
        assert dead.record is record
        assert (dead.stage, dead.attempts, dead.run_id, dead.source_offset) == (
            "parse",
            2,
            "r9",
            41,
        )
        assert dead.replayed is False
        assert dead.record_exact is True

    def test_qualified_type_and_message(self) -> None:
        dead = DeadLetter.from_exception({}, caught({}), stage="s", attempts=1, run_id="r")
        assert dead.error_type == "builtins.KeyError"
        assert dead.message == "'missing'"

    def test_conveyor_error_is_qualified_by_its_module(self) -> None:
        exc = ContractViolation("User", "email", "not a string")
        dead = DeadLetter.from_exception({}, exc, stage="s", attempts=1, run_id="r")
        assert dead.error_type == "conveyor.errors.ContractViolation"
        assert dead.message == "field 'email' violates contract User: not a string"

    def test_nested_class_uses_its_qualname(self) -> None:
        dead = DeadLetter.from_exception(
            {}, Outer.InnerError("x"), stage="s", attempts=1, run_id="r"
        )
        assert dead.error_type == f"{Outer.__module__}.Outer.InnerError"

    def test_traceback_is_formatted_from_the_live_exception(self) -> None:
        dead = DeadLetter.from_exception({}, caught({}), stage="s", attempts=1, run_id="r")
        assert dead.traceback.startswith("Traceback (most recent call last):")
        assert "explode_on_purpose" in dead.traceback
        assert 'return record["missing"]' in dead.traceback
        assert dead.traceback.rstrip().endswith("KeyError: 'missing'")

    def test_traceback_includes_the_cause(self) -> None:
        try:
            try:
                explode_on_purpose({})
            except KeyError as inner:
                raise ValueError("could not enrich") from inner
        except ValueError as exc:
            dead = DeadLetter.from_exception({}, exc, stage="s", attempts=1, run_id="r")
        assert "explode_on_purpose" in dead.traceback
        assert "direct cause" in dead.traceback
        assert dead.message == "could not enrich"

    def test_never_raised_exception_has_a_short_traceback(self) -> None:
        dead = DeadLetter.from_exception(
            {}, ValueError("made, not raised"), stage="s", attempts=0, run_id="r"
        )
        assert dead.traceback == "ValueError: made, not raised\n"

    @pytest.mark.parametrize(
        "signal", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)]
    )
    def test_refuses_cancellation_and_exits(self, signal: BaseException) -> None:
        with pytest.raises(TypeError, match="re-raise it"):
            DeadLetter.from_exception({}, signal, stage="s", attempts=1, run_id="r")

    def test_ids_are_distinct_time_ordered_uuid7_hex(self) -> None:
        ids = {
            DeadLetter.from_exception({}, ValueError(), stage="s", attempts=1, run_id="r").id
            for _ in range(50)
        }
        assert len(ids) == 50
        for value in ids:
            assert len(value) == 32
            assert uuid.UUID(hex=value).version == 7
            assert uuid.UUID(hex=value).variant == uuid.RFC_4122
        ordered = [
            DeadLetter.from_exception({}, ValueError(), stage="s", attempts=1, run_id="r").id
            for _ in range(3)
        ]
        assert [i[:12] for i in ordered] == sorted(i[:12] for i in ordered)  # by time

    def test_created_at_is_utc_now(self) -> None:
        before = datetime.now(UTC)
        dead = DeadLetter.from_exception({}, ValueError(), stage="s", attempts=1, run_id="r")
        assert dead.created_at.tzinfo is UTC
        assert before <= dead.created_at <= datetime.now(UTC)


class TestInvariants:
    def test_naive_created_at_is_refused(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            letter(created_at=datetime(2024, 1, 1))

    def test_aware_created_at_is_converted_to_utc(self) -> None:
        plus_two = timezone(timedelta(hours=2))
        dead = letter(created_at=datetime(2024, 1, 1, 14, 0, tzinfo=plus_two))
        assert dead.created_at == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
        assert dead.created_at.utcoffset() == timedelta(0)

    def test_negative_attempts_are_refused(self) -> None:
        with pytest.raises(ValueError, match="attempts"):
            letter(attempts=-1)

    def test_frozen_and_slotted(self) -> None:
        dead = letter()
        with pytest.raises(dataclasses.FrozenInstanceError):
            dead.stage = "other"  # type: ignore[misc]
        assert not hasattr(dead, "__dict__")

    def test_equality_by_fields_and_hash_by_id(self) -> None:
        assert letter() == letter()
        assert letter() != letter(attempts=4)
        assert hash(letter()) == hash(letter(record={"unhashable": []}))
        assert len({letter(), letter(), letter(id="f" * 32)}) == 2

    def test_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            DeadLetter("id", {}, "s")  # type: ignore[call-arg]


class TestSummary:
    def test_one_line_with_the_essentials(self) -> None:
        assert letter().summary() == (
            "456789abcdef 2024-05-01 12:30:15Z enrich attempts=3 KeyError: 'email' record={'id': 7}"
        )

    def test_keeps_non_builtin_qualified_names(self) -> None:
        summary = letter(error_type="conveyor.errors.ContractViolation").summary()
        assert "conveyor.errors.ContractViolation: 'email'" in summary

    def test_multiline_message_shows_its_first_line(self) -> None:
        summary = letter(message="first line\nsecond line").summary()
        assert "KeyError: first line …" in summary
        assert "\n" not in summary

    def test_empty_message(self) -> None:
        assert "KeyError:  record=" in letter(message="").summary()

    def test_long_parts_are_shortened(self) -> None:
        summary = letter(message="m" * 500, record={"text": "x" * 500, "n": list(range(99))})
        line = summary.summary()
        assert len(line) < 260
        assert "…" in line

    def test_replayed_is_flagged(self) -> None:
        assert letter(replayed=True).summary().endswith(" [replayed]")

    def test_unrepresentable_record(self) -> None:
        class Opaque:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        assert "record=<Opaque instance at 0x" in letter(record=Opaque()).summary()


# -- records, output, and exceptions that resist formatting -----------------------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrRaisesError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


class TestRecordsAndOutput:
    def test_defaults(self) -> None:
        dead = DeadLetter.from_exception({}, ValueError(), stage="s", attempts=1, run_id="r")
        assert (dead.records, dead.output) == (1, None)
        assert (letter().records, letter().output) == (1, None)

    def test_from_exception_keeps_them(self) -> None:
        group = [{"id": 1}, {"id": 2}, {"id": 3}]
        dead = DeadLetter.from_exception(
            group,
            ValueError("bad total"),
            stage="batch",
            attempts=1,
            run_id="r",
            records=3,
            output={"total": -1},
        )
        assert dead.record is group
        assert (dead.records, dead.output) == (3, {"total": -1})

    @pytest.mark.parametrize("count", [0, -2])
    def test_fewer_than_one_record_is_refused(self, count: int) -> None:
        with pytest.raises(ValueError, match=r"records must be >= 1"):
            letter(records=count)
        with pytest.raises(ValueError, match=r"records must be >= 1"):
            DeadLetter.from_exception(
                {}, ValueError(), stage="s", attempts=1, run_id="r", records=count
            )

    def test_summary_shows_them_when_not_default(self) -> None:
        summary = letter(records=4, output={"id": 7, "email": None}).summary()
        assert summary == (
            "456789abcdef 2024-05-01 12:30:15Z enrich attempts=3 records=4 KeyError: 'email' "
            "record={'id': 7} output={'email': None, 'id': 7}"
        )

    def test_summary_hides_them_when_default(self) -> None:
        summary = letter().summary()
        assert "records=" not in summary
        assert "output=" not in summary

    def test_a_long_output_is_shortened(self) -> None:
        summary = letter(output={"text": "y" * 500, "n": list(range(99))}).summary()
        assert "output={'n': [0, 1, 2, 3, 4, 5, ...], 'text': 'yyyy" in summary
        assert summary.endswith("…")
        assert len(summary) < 200

    def test_an_unrepresentable_output_does_not_break_the_summary(self) -> None:
        assert "output=<Unprintable instance at 0x" in letter(output=Unprintable()).summary()


class TestHostileExceptions:
    def test_a_key_error_holding_an_unrepresentable_record(self) -> None:
        record = Unprintable()
        exc = caught_as(lambda: {}.__getitem__(record))
        dead = DeadLetter.from_exception(record, exc, stage="s", attempts=1, run_id="r")
        assert dead.message == "<unprintable builtins.KeyError: RuntimeError>"
        assert dead.traceback.endswith("KeyError: <exception str() failed>\n")
        assert dead.traceback == "".join(traceback.format_exception(exc))

    def test_an_exception_whose_str_raises(self) -> None:
        exc = caught_as(lambda: raise_(StrRaisesError()))
        dead = DeadLetter.from_exception({}, exc, stage="s", attempts=1, run_id="r")
        assert dead.message == f"<unprintable {__name__}.StrRaisesError: RuntimeError>"
        assert dead.error_type == f"{__name__}.StrRaisesError"
        assert "raise_" in dead.traceback

    def test_a_cyclic_cause(self) -> None:
        first, second = ValueError("first"), ValueError("second")
        first.__cause__, second.__cause__ = second, first
        dead = DeadLetter.from_exception({}, first, stage="s", attempts=1, run_id="r")
        assert dead.traceback == "".join(traceback.format_exception(first))
        assert dead.traceback.count("ValueError: second") == 1

    def test_the_traceback_equals_the_stdlib_one_also_when_repeated(self) -> None:
        texts = set()
        for n in range(3):
            exc = caught({"n": n})
            dead = DeadLetter.from_exception({}, exc, stage="s", attempts=1, run_id="r")
            assert dead.traceback == "".join(traceback.format_exception(exc))
            texts.add(dead.traceback)
        assert len(texts) == 1


def raise_(exc: BaseException) -> None:
    raise exc


def caught_as(action: Callable[[], object]) -> Exception:
    try:
        action()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")
