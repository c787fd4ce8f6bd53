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
    ├── LateRecordError(ConveyorError, ValueError)          a record came after its window closed
    ├── BranchError(ConveyorError, RuntimeError)            a branch of a BranchStage failed
    ├── HookError(ConveyorError, RuntimeError)              a pipeline hook raised
    ├── ContractViolation(ConveyorError, ValueError)        a record broke a stage's contract
    ├── StageTimeoutError(ConveyorError, TimeoutError)      a record took longer than its timeout
    ├── DeadLetterStoreError(ConveyorError, OSError)        the dead-letter queue cannot be written
    ├── ProjectError(ConveyorError, ValueError)            a pipeline project is laid out wrong
    │   └── ConfigError(ProjectError)                       config.yaml or an override is wrong
    └── ConservationError(ConveyorError, AssertionError)    records were lost or duplicated (a bug)

Each class carries structured fields (``stage``, ``branch``, ``hook`` …) and composes its
message from them; the underlying exception, where there is one, is the ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BranchError",
    "CheckpointError",
    "ConfigError",
    "ConservationError",
    "ContractViolation",
    "ConveyorError",
    "DeadLetterStoreError",
    "HookError",
    "LateRecordError",
    "PipelineDefinitionError",
    "ProjectError",
    "RecordValidationError",
    "ResumeRequired",
    "SinkUnavailableError",
    "SourceRecordError",
    "SourceUnavailableError",
    "StageTimeoutError",
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


class LateRecordError(ConveyorError, ValueError):
    """A record reached a window stage after the window it belongs to had closed (its
    event time is behind the watermark by more than the allowed lateness): its dead letter
    says which window, where the watermark was, and the record's event time.

    Attributes:
        stage: the window stage.
        key: the record's key.
        window: ``(start, end)`` of the closed window it belongs to (for a session window,
            the session the record alone would open).
        watermark: the stage's watermark when the record came.
        event_time: the record's event time.
        allowed_lateness: the stage's allowed lateness.
    """

    def __init__(
        self,
        stage: str,
        key: object,
        window: tuple[object, object],
        watermark: object,
        event_time: object,
        allowed_lateness: float,
    ) -> None:
        self.stage = stage
        self.key = key
        self.window = window
        self.watermark = watermark
        self.event_time = event_time
        self.allowed_lateness = allowed_lateness
        start, end = window
        slack = f" + allowed lateness {allowed_lateness:g}" if allowed_lateness else ""
        super().__init__(
            f"{stage}: late record: event time {event_time} of key {key!r} belongs to window "
            f"[{start}, {end}), which closed when the watermark passed its end{slack} "
            f"(watermark {watermark}); raise max_out_of_orderness or allowed_lateness to "
            "keep records this late"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (
                self.stage,
                self.key,
                self.window,
                self.watermark,
                self.event_time,
                self.allowed_lateness,
            ),
        )


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


class ContractViolation(ConveyorError, ValueError):
    """A record does not satisfy a stage's input or output contract.

    Attributes:
        contract: name of the contract (a type name or a schema file).
        path: the failing field path, dotted (``"address.zip"``, ``"items.3.price"``), or
            ``""`` when the record as a whole is wrong.
        reason: what is wrong with that field.
        edge: ``"input"`` or ``"output"`` of ``stage`` when known, else ``""``.
        stage: the stage whose edge was checked, or ``""``.
    """

    def __init__(
        self, contract: str, path: str, reason: str, *, edge: str = "", stage: str = ""
    ) -> None:
        self.contract = contract
        self.path = path
        self.reason = reason
        self.edge = edge
        self.stage = stage
        where = f"{stage} {edge}: " if stage else ""
        field = f"field {path!r}" if path else "record"
        super().__init__(f"{where}{field} violates contract {contract}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_violation,
            (self.contract, self.path, self.reason, self.edge, self.stage),
        )


def _rebuild_violation(
    contract: str, path: str, reason: str, edge: str, stage: str
) -> ContractViolation:
    return ContractViolation(contract, path, reason, edge=edge, stage=stage)


class StageTimeoutError(ConveyorError, TimeoutError):
    """A stage took longer than its timeout (per record, or per call of a whole micro-batch).

    Attributes:
        stage: the stage.
        timeout: the limit in seconds.
        per: ``"record"`` or ``"call"``.
    """

    def __init__(self, stage: str, timeout: float, per: str = "record") -> None:
        self.stage = stage
        self.timeout = timeout
        self.per = per
        super().__init__(
            f"stage {stage!r} exceeded its timeout of {timeout:g}s per {per}; "
            "raise the stage's timeout option if this record is legitimately slow"
        )

    def __reduce__(self) -> tuple[type[StageTimeoutError], tuple[str, float, str]]:
        return (type(self), (self.stage, self.timeout, self.per))


class DeadLetterStoreError(ConveyorError, OSError):
    """The dead-letter store could not be written or read; the run stops rather than lose
    records. The store's own exception is the cause.

    Attributes:
        store: a description of the store (its path or kind).
    """

    def __init__(self, store: str, detail: str) -> None:
        self.store = store
        super().__init__(f"dead-letter store {store}: {detail}")


class ConservationError(ConveyorError, AssertionError):
    """Records were lost or counted twice: the run's counts do not add up. Always a bug.

    Attributes:
        stage: the stage whose counts do not add up, or ``""`` for the whole run.
        detail: which counts disagree.
    """

    def __init__(self, stage: str, detail: str) -> None:
        self.stage = stage
        self.detail = detail
        where = f"stage {stage!r}" if stage else "run"
        super().__init__(
            f"conservation violated in {where}: {detail}; this is a bug in Conveyor or in a "
            "stage that drops records without filtering them, please report it"
        )


class ProjectError(ConveyorError, ValueError):
    """A pipeline project cannot be loaded; the message names the file and the fix.

    Attributes:
        file: the file at fault (``None`` when it is the project as a whole).
        line: 1-based line in ``file``, when known.
    """

    def __init__(self, message: str, *, file: object = None, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}:{line}: " if file is not None and line else f"{file}: " if file else ""
        super().__init__(f"{where}{message}")


class ConfigError(ProjectError):
    """``config.yaml`` (or a command-line override) is invalid.

    Attributes:
        file, line, column: where (``column`` 1-based), when known.
        key: the dotted key path (``"stages.enrich.concurency"``).
        valid_keys: the keys allowed at that place, when the key is unknown.
    """

    def __init__(
        self,
        message: str,
        *,
        file: object = None,
        line: int | None = None,
        column: int | None = None,
        key: str = "",
        valid_keys: tuple[str, ...] = (),
    ) -> None:
        self.column = column
        self.key = key
        self.valid_keys = valid_keys
        ConveyorError.__init__(self, _located(file, line, column) + message)
        self.file = file
        self.line = line


def _located(file: object, line: int | None, column: int | None) -> str:
    if file is None:
        return ""
    if line is None:
        return f"{file}: "
    return f"{file}:{line}:{column or 1}: "


class CheckpointError(ConveyorError, RuntimeError):
    """A checkpoint cannot be used: damaged, from another pipeline or a changed stage list,
    from a newer format, or the store cannot be read or written. Conveyor never falls back
    to starting from zero on its own; the message names the store and the fix.

    Attributes:
        store: a description of the checkpoint store (its path or table).
    """

    def __init__(self, store: str, detail: str) -> None:
        self.store = store
        self.detail = detail
        super().__init__(f"checkpoint store {store}: {detail}")


class ResumeRequired(CheckpointError):
    """A run found an unfinished checkpoint of the same pipeline and was told neither to
    resume it nor to start afresh: it stops rather than write records a second time."""


class SinkUnavailableError(ConveyorError, ConnectionError):
    """A sink cannot reach where it writes (a database refusing connections, a locked
    file). It is retried with the sink's back-off like any transient error; once the
    retries are spent the run fails (its records are not dead-lettered: they are fine, the
    sink is not), leaving the last checkpoint consistent for a resume.

    Attributes:
        sink: the sink's name.
        retryable: ``False`` when waiting cannot help (the sink lost writes it cannot redo):
            the run fails at once.
    """

    def __init__(self, sink: str, detail: str, *, retryable: bool = True) -> None:
        self.sink = sink
        self.retryable = retryable
        super().__init__(f"sink {sink!r} is unavailable: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_unavailable, (self.sink, self.args[0], self.retryable))


class SourceRecordError(ConveyorError, ValueError):
    """What a source could not turn into a record: a line that does not decode, parse or
    fit the model, a message delivered too often. Its message reads ``WHERE: reason``
    (``FILE:LINE: reason`` for a file), as the dead letter shows it.

    Attributes:
        where: the place (``data/in.csv:17``, ``nats stream ORDERS seq 42``).
        reason: what was wrong there.
    """

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (SourceRecordError, (self.where, self.reason))


class SourceUnavailableError(ConveyorError, ConnectionError):
    """A source cannot reach what it reads (a database, a broker, a server) once its
    retries are spent: the run stops, its checkpoint consistent for a resume."""

    def __init__(self, source: str, detail: str) -> None:
        self.source = source
        super().__init__(f"source {source!r} is unavailable: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_source_unavailable, (self.source, self.args[0]))


def _rebuild_source_unavailable(source: str, message: str) -> SourceUnavailableError:
    error = SourceUnavailableError.__new__(SourceUnavailableError)
    Exception.__init__(error, message)
    error.source = source
    return error


def _rebuild_unavailable(sink: str, message: str, retryable: bool) -> SinkUnavailableError:
    error = SinkUnavailableError.__new__(SinkUnavailableError)
    Exception.__init__(error, message)
    error.sink, error.retryable = sink, retryable
    return error
