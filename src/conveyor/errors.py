"""Conveyor's exception tree.

Every exception Conveyor raises on its own account derives from :class:`ConveyorError`
and from the built-in exception that matches its meaning, so ``except ValueError`` keeps
working for code that does not know Conveyor. Exceptions raised by *your* stage code are
never wrapped: a failed :class:`~conveyor.StageResult` carries the original exception object.

::

    ConveyorError(Exception)
    ├── PipelineDefinitionError(ConveyorError, TypeError)   a pipeline or stage is built wrong
    ├── UsageError(ConveyorError, RuntimeError)             an API is called in the wrong place
    ├── RecordValidationError(ConveyorError, ValueError)    a record failed a ValidateStage
    ├── BranchError(ConveyorError, RuntimeError)            a branch of a BranchStage failed
    └── HookError(ConveyorError, RuntimeError)              a pipeline hook raised

Each class carries structured fields (``stage``, ``branch``, ``hook`` …) and composes its
message from them; the underlying exception, where there is one, is the ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BranchError",
    "ConveyorError",
    "HookError",
    "PipelineDefinitionError",
    "RecordValidationError",
    "UsageError",
]


class ConveyorError(Exception):
    """Base class of every exception Conveyor raises itself."""


class PipelineDefinitionError(ConveyorError, TypeError):
    """A pipeline or stage was defined in a way that can never run.

    Raised when the pipeline is *built*, not when it runs, and the message names the fix.
    """


class UsageError(ConveyorError, RuntimeError):
    """A Conveyor API was called where it cannot work (e.g. a sync helper inside a loop)."""


class RecordValidationError(ConveyorError, ValueError):
    """A record was rejected by a :class:`~conveyor.ValidateStage`.

    Attributes:
        stage: name of the validating stage.
        reason: the validator's message (or ``"validation failed"`` when it returned False).
    """

    def __init__(self, stage: str, reason: str) -> None:
        self.stage = stage
        self.reason = reason
        super().__init__(f"{stage}: {reason}")

    def __reduce__(self) -> tuple[type[RecordValidationError], tuple[str, str]]:
        return (type(self), (self.stage, self.reason))


class BranchError(ConveyorError, RuntimeError):
    """A branch of a :class:`~conveyor.BranchStage` failed; the branch's error is the cause.

    Attributes:
        stage: name of the branch stage.
        branch: name of the branch that failed.
    """

    def __init__(self, stage: str, branch: str, error: BaseException) -> None:
        self.stage = stage
        self.branch = branch
        super().__init__(f"{stage}: branch {branch!r} failed: {type(error).__name__}: {error}")
        self.__cause__ = error


class HookError(ConveyorError, RuntimeError):
    """A pipeline hook raised; the hook's exception is the cause.

    Attributes:
        hook: which hook point (``before_stage``, ``after_stage``, ``on_error``, ``on_complete``).
        stage: the stage the hook ran for, or ``None`` for ``on_complete``.
        function: qualified name of the hook function.
    """

    def __init__(self, hook: str, stage: str | None, function: str, error: BaseException) -> None:
        self.hook = hook
        self.stage = stage
        self.function = function
        where = f" for stage {stage!r}" if stage is not None else ""
        super().__init__(
            f"{hook} hook {function}{where} raised {type(error).__name__}: {error}; "
            "fix the hook or catch the exception inside it"
        )
        self.__cause__ = error
