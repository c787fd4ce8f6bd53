"""DeadLetter: what it captures from a live exception, its invariants and its summary."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
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

    def test_ids_are_distinct_uuid4_hex(self) -> None:
        ids = {
            DeadLetter.from_exception({}, ValueError(), stage="s", attempts=1, run_id="r").id
            for _ in range(50)
        }
        assert len(ids) == 50
        for value in ids:
            assert len(value) == 32
            assert uuid.UUID(hex=value).version == 4

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
            "0123456789ab 2024-05-01 12:30:15Z enrich attempts=3 KeyError: 'email' record={'id': 7}"
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
