"""Dead letters and their stores: where records that a stage cannot process go.

Every record that enters a run leaves through a sink, a deliberate filter or this queue,
so nothing is lost silently. The design:

- A :class:`DeadLetter` is a frozen value: the *original* record (as it entered the
  failing stage), the stage, the attempt count, the qualified error type, the message, the
  traceback formatted from the live exception, the run id, the time (UTC), when known the
  source offset, how many records it holds (``records``: a failed group of ``n`` counts
  ``n``) and, for an output-contract violation, the violating ``output``.
  :meth:`DeadLetter.from_exception` builds one from the exception just caught, and never
  fails on an exception (or a record) that cannot be printed: placeholders stand in.
- A :class:`DeadLetterStore` keeps letters. Its API is synchronous and thread-safe; the
  asynchronous runner calls it through :func:`asyncio.to_thread`. A :meth:`~DeadLetterStore.write`
  stores a whole batch or nothing and raises :class:`~conveyor.errors.DeadLetterStoreError`
  (the store's own exception as ``__cause__``) on any failure, so the run stops loudly
  instead of losing records. Letters are identified by ``id``: writing an id that is already
  stored does nothing, so a retried write never duplicates. A file store whose file is
  deleted or replaced during the run refuses to write on (the letters would be lost).
- Records (and outputs) are stored twice: as JSON for people and tools (plain values kept,
  objects field by field or as their ``repr()``, placeholders for what cannot be shown),
  and as a pickle for replay, so a record comes back *exactly* (tuples, datetimes, your own
  dataclasses). A record that cannot be pickled is stored as JSON only, and one whose pickle
  cannot be loaded later (its class is not importable) is read back from the JSON; either
  way the letter says ``record_exact=False`` and a warning is logged on the
  ``conveyor.dlq`` logger. Loading a pickle runs code named in it: a store's file is
  trusted state of your project, like its checkpoints; do not open one from strangers.
- Stores: :class:`SqliteDeadLetterStore` (the embedded default, WAL mode, one table),
  :class:`JsonlDeadLetterStore` (append-only JSON lines, for small queues and interchange)
  and :class:`MemoryDeadLetterStore` (tests). :func:`open_dead_letter_store` picks one from
  ``"memory"`` or a file name.
- Replay: list letters (by stage and run), feed ``letter.record`` back into
  ``letter.stage``, then :meth:`~DeadLetterStore.mark_replayed` their ids; replayed letters
  are kept, and hidden from :meth:`~DeadLetterStore.list` unless asked for.
- Review: :meth:`~DeadLetterStore.groups` folds the letters of one failure (the same
  record, stage and error type; the record recognised by the SHA-256 of its canonical
  JSON: the stored JSON rendering with sorted keys) into a :class:`LetterGroup` with its
  occurrences and first/last seen; :meth:`~DeadLetterStore.purge` deletes letters by
  filter (a letter not yet replayed only when ``before``, ``stage`` or ``run_id`` names
  it); :meth:`~DeadLetterStore.list` with ``newest=True`` keeps the newest ``limit``.
  Reading many letters whose exact records cannot be loaded logs *one* warning.

>>> with open_dead_letter_store("memory") as store:
...     store.write([
...         DeadLetter.from_exception(
...             {"id": 1}, ValueError("no name"), stage="validate", attempts=1, run_id="r1"
...         )
...     ])
...     print([letter.summary().split(" ", 3)[3] for letter in store.list()])
["validate attempts=1 ValueError: no name record={'id': 1}"]
"""

from conveyor.dlq._codec import EncodedLetter
from conveyor.dlq._jsonl import JsonlDeadLetterStore
from conveyor.dlq._letter import DeadLetter
from conveyor.dlq._open import open_dead_letter_store
from conveyor.dlq._review import LetterGroup, record_digest
from conveyor.dlq._sqlite import SqliteDeadLetterStore
from conveyor.dlq._store import DeadLetterStore, LetterQuery, MemoryDeadLetterStore

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "EncodedLetter",
    "JsonlDeadLetterStore",
    "LetterGroup",
    "LetterQuery",
    "MemoryDeadLetterStore",
    "SqliteDeadLetterStore",
    "open_dead_letter_store",
    "record_digest",
]
