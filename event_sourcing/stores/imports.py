"""Bulk import of existing history (`store.import_events`, `mlevents import`; docs/import.md).

This module owns the records (read from files by event_sourcing.stores.import_readers),
the deterministic ids of records that carry none, and the batches. Each record is checked
and encoded exactly as an append would be (the store's validation, catalog typing, size
limits and personal-data encryption); records whose id is recorded already are skipped;
the rest go to the backend's `import_rows`, which writes one batch in one transaction,
versions assigned in file order per stream. `content_hashes` and `place_rows` are where both
backends compute the hashes, versions and chain links of a batch, so an imported event is
stored exactly like an appended one.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby, islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from event_sourcing.errors import DuplicateEventError, EventStoreError, EventValidationError
from event_sourcing.events import NewEvent
from event_sourcing.integrity.hashing import GENESIS, append_hashes, fold_chain
from event_sourcing.stores.arguments import MAX_BATCH_EVENTS, check_int, check_name, optional_id
from event_sourcing.stores.batches import encode_batch, new_row
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.times import utc_time

if TYPE_CHECKING:
    from event_sourcing.catalog import DomainEvent
    from event_sourcing.stores.store import EventStore

DEFAULT_BATCH_SIZE = 5000
# Ids of records that carry none: uuid5 in this namespace (docs/import.md, "Idempotency").
IMPORT_NAMESPACE = uuid.UUID("5d1c3b0e-6f0a-4e57-9a55-6d6c6576696d")
_NAMESPACE_BYTES = IMPORT_NAMESPACE.bytes
# a hex digit -> the RFC 4122 variant digit 10xx holding its low 2 bits
_VARIANT = {digit: "89ab"[int(digit, 16) % 4] for digit in "0123456789abcdef"}
_sha1 = hashlib.sha1


class ImportRecord(NamedTuple):
    """One input record, as read (checked when imported). `where` names it in errors."""

    where: str  # "line 12" of a JSON lines file, "row 12" of a CSV or Parquet file
    ordinal: int  # its line or row number (part of its deterministic id)
    stream_id: Any
    event_type: Any
    payload: Any
    id: Any = None
    metadata: Any = None
    stream_type: Any = None
    correlation_id: Any = None
    causation_id: Any = None
    occurred_at: datetime | None = None
    """Business time: when it happened. Parsed and checked here; stores that record it
    take it from ImportRow.occurred_at."""
    source: bytes | None = None
    """The record as the input holds it (a line's text, a row's cells and the mapping), from
    which its id is derived when it has none; None: derived from its fields."""


class ImportRow(NamedTuple):
    """One checked, encoded record, ready for a backend's `import_rows`."""

    stream_id: str
    stream_type: str | None  # used if the stream is new
    correlation_id: str | None
    causation_id: str | None
    row: EventRow
    occurred_at: datetime | None
    where: str


@dataclass
class ImportReport:
    """What an import did so far (given to the progress callback after every batch)."""

    read: int = 0  # records read from the input
    written: int = 0  # events written
    skipped: int = 0  # records whose id was recorded already (a re-run, or a resume)
    batches: int = 0  # batches committed
    streams: set[str] = field(default_factory=set, repr=False)


def runs(rows: Sequence[ImportRow]) -> Iterator[Sequence[ImportRow]]:
    """The batch as runs of consecutive rows sharing stream, correlation and causation (what
    one append could write)."""
    start = 0
    for _, run in groupby(rows, _RUN_KEY):
        end = start + len(list(run))
        yield rows[start:end]
        start = end


_RUN_KEY = itemgetter(0, 1, 2, 3)  # an ImportRow's stream, stream type, correlation, causation


def content_hashes(rows: Sequence[ImportRow], created_at: str, canonical: bool) -> list[bytes]:
    """Each row's content hash (`created_at` as hashed; `canonical` as append_hashes)."""
    contents: list[bytes] = []
    for run in runs(rows):
        first = run[0]
        contents += append_hashes(
            [row.row for row in run], first.stream_id, created_at, first.correlation_id,
            first.causation_id, canonical=canonical,
        )[0]
    return contents


def place_rows(
    rows: Sequence[ImportRow],
    contents: Sequence[bytes],
    heads: dict[str, tuple[str, int, bytes]],
) -> list[tuple[str, int, bytes]]:
    """Each row's (stream type, version, chain hash), in order: versions follow each
    stream's head in `heads` (stream -> its type, version, chain hash; absent: a new
    stream), which is moved along."""
    placed: list[tuple[str, int, bytes]] = []
    start = 0
    for run in runs(rows):
        first = run[0]
        kind, version, chain = heads.get(
            first.stream_id, (first.stream_type or "default", 0, GENESIS)
        )
        chains = fold_chain(chain, version, kind, contents[start:start + len(run)])
        placed += [(kind, version + n, link) for n, link in enumerate(chains, start=1)]
        heads[first.stream_id] = (kind, version + len(run), chains[-1])
        start += len(run)
    return placed


# -- importing ----------------------------------------------------------------------------
def record_id(record: ImportRecord) -> str:
    """The record's own id, or one derived from its line/row number and content (uuid5):
    the same record at the same place always gets the same id."""
    if record.id is not None:
        try:
            return str(uuid.UUID(str(record.id)))
        except ValueError:
            raise EventValidationError(
                f"{record.where}: id {record.id!r} is not a UUID (leave it out and the "
                "import derives one)"
            ) from None
    source = record.source
    if source is None:
        source = canonical_bytes(
            [record.stream_id, record.event_type, record.payload, record.metadata,
             record.stream_type, record.correlation_id, record.causation_id]
        )
    # uuid.uuid5(IMPORT_NAMESPACE, name), written out (this runs once per record)
    h = _sha1(_NAMESPACE_BYTES + b"%d\x1f" % record.ordinal + source).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def canonical_bytes(value: Any) -> bytes:
    """Sorted-key JSON of a value, for deriving ids (anything JSON cannot hold as text)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    except TypeError:  # e.g. an integer beyond 64 bits
        return json.dumps(value, sort_keys=True, default=str).encode("utf-8", "surrogatepass")


def _at(where: str, exc: EventStoreError) -> EventStoreError:
    """`exc` (same class when it can be) with its message prefixed by the record's place."""
    try:
        return type(exc)(f"{where}: {exc}")
    except TypeError:  # an error class with other arguments
        return EventValidationError(f"{where}: {exc}")


def import_events(
    store: EventStore,
    records: Iterable[ImportRecord],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """See EventStore.import_events. On PostgreSQL, while one batch is written (on a thread
    of its own: the server works while Python encodes) the next is read and encoded."""
    if check_int(batch_size, "batch_size", 1) > MAX_BATCH_EVENTS:
        raise EventValidationError(
            f"batch_size is at most {MAX_BATCH_EVENTS:,} (as for an append), got {batch_size:,}"
        )
    report = ImportReport()
    recorder = store.recorder
    records = iter(records)
    pending: tuple[Future[None] | None, _Batch] | None = None
    # Ids are looked up before a batch is written until a batch finds none recorded (a
    # first import, or a resumed one past what was written): from then on the database's
    # unique index finds them, and a batch it refuses is looked up and written again.
    look_up = True

    def finish() -> None:
        """Wait for the batch in flight, count it, report progress."""
        nonlocal pending, look_up
        if pending is None:
            return
        (written, batch), pending = pending, None
        if written is not None:
            try:
                written.result()
            except DuplicateEventError:
                if batch.looked_up:
                    raise
                look_up = True
                batch = _without_recorded(store, batch)
                if batch.rows:
                    recorder.import_rows(batch.rows, batch.created_at)
        report.read += batch.read
        report.written += len(batch.rows)
        report.skipped += batch.skipped
        report.streams.update(row.stream_id for row in batch.rows)
        report.batches += 1
        if progress is not None:
            progress(report)

    with ExitStack() as stack:
        writer: ThreadPoolExecutor | _Inline = _Inline()
        if store.dialect in _WRITES_ON_A_THREAD:
            writer = stack.enter_context(ThreadPoolExecutor(1, "mlevents-import"))
        try:
            in_flight: dict[str, ImportRow] = {}
            while True:
                with _collector_paused():
                    chunk = list(islice(records, batch_size))
                    if not chunk:
                        break
                    batch = _prepare(store, chunk, in_flight, look_up)
                    look_up = look_up and batch.skipped > 0
                    finish()
                    future = None
                    if batch.rows:
                        future = writer.submit(
                            recorder.import_rows,
                            batch.rows, batch.created_at,
                        )
                    pending = (future, batch)
                    in_flight = {row.row.id: row for row in batch.rows}
            finish()
        except BaseException:
            finish()  # the batch in flight commits (or fails first) before the error is raised
            raise
    return report


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused for one batch: reading, encoding and writing it
    allocate containers by the thousand (records, payload trees, rows), none in a cycle,
    and the collections they would trigger, each walking the batch held in memory, could
    free nothing (they took a fifth of an import's time). It runs between batches."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Where the database works outside this process. SQLite works inside it and takes Python's
# lock back for every row it inserts, which a thread encoding the next batch holds for up to
# 5 ms at a time: there writing on a thread measured slower than writing inline.
_WRITES_ON_A_THREAD = frozenset({"postgresql"})


class _Inline:
    """An executor that runs what is submitted right away."""

    def submit(self, write: Callable[..., None], *args: Any) -> Future[None]:
        done: Future[None] = Future()
        try:
            write(*args)
        except BaseException as exc:  # raised where the result is asked for, as on a thread
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done


class _Batch(NamedTuple):
    read: int
    skipped: int
    rows: list[ImportRow]
    looked_up: bool  # whether recorded ids were looked up before writing
    created_at: datetime


def _prepare(
    store: EventStore, chunk: list[ImportRecord], in_flight: dict[str, ImportRow],
    look_up: bool,
) -> _Batch:
    """A batch's records checked and encoded, without those recorded already: in the batch
    being written, and if `look_up`, in the store."""
    ids: dict[str, ImportRecord] = {}
    for record in chunk:
        event_id = record_id(record)
        if event_id in ids:
            raise DuplicateEventError(
                f"{record.where}: event id {event_id} is also the id of {ids[event_id].where}"
            )
        ids[event_id] = record
    recorded = [
        (event_id, row.stream_id, row.row.event_type)
        for event_id, row in in_flight.items() if event_id in ids
    ]
    if look_up:
        recorded += [
            (old.id, old.stream_id, old.event_type) for old in store.recorder.read_ids(list(ids))
        ]
    for event_id, stream_id, event_type in recorded:
        _same_record(ids.pop(event_id), event_id, stream_id, event_type)
    created_at = utc_time(store.clock(), "the time the store's clock returned")
    return _Batch(len(chunk), len(recorded), _encode(store, ids) if ids else [], look_up,
                  created_at)


def _same_record(record: ImportRecord | ImportRow, event_id: str, stream_id: str,
                 event_type: str) -> None:
    """Refuse a record whose id is recorded for another stream or type."""
    given_type = record.event_type if isinstance(record, ImportRecord) else record.row.event_type
    if stream_id != record.stream_id or event_type != given_type:
        raise DuplicateEventError(
            f"{record.where}: event id {event_id} is already recorded with different "
            f"content (stream {stream_id!r}, type {event_type!r})"
        )


def _without_recorded(store: EventStore, batch: _Batch) -> _Batch:
    """`batch` without the rows whose id the store has recorded (looked up)."""
    rows = {row.row.id: row for row in batch.rows}
    for old in store.recorder.read_ids(list(rows)):
        _same_record(rows.pop(old.id), old.id, old.stream_id, old.event_type)
    skipped = batch.skipped + len(batch.rows) - len(rows)
    return batch._replace(skipped=skipped, rows=list(rows.values()), looked_up=True)


# The setters of NewEvent's slots, one per field in order (unpacking fails, on import, if
# its fields change: _new_event must fill them all).
_set_type, _set_payload, _set_id, _set_metadata, _set_occurred_at = (
    NewEvent.__dict__[field.name].__set__ for field in dataclasses.fields(NewEvent)
)
_new_object = object.__new__


def _new_event(
    event_type: Any, payload: Any, event_id: str, metadata: Any, occurred_at: Any
) -> NewEvent:
    """NewEvent(event_type, payload, event_id, metadata, occurred_at), its slots filled
    directly: the frozen dataclass's __init__ (a setattr call per field) cost as much as a
    third of reading a record. The values are checked when the event is encoded, as
    NewEvent's own are."""
    event = _new_object(NewEvent)
    _set_type(event, event_type)
    _set_payload(event, payload)
    _set_id(event, event_id)
    _set_metadata(event, metadata)
    _set_occurred_at(event, occurred_at)
    return event


def _encode(store: EventStore, records: dict[str, ImportRecord]) -> list[ImportRow]:
    """The batch checked and encoded as an append would (one encoding call for the batch;
    a failure is found again record by record, to name its line)."""
    events: list[NewEvent | DomainEvent] = [
        _new_event(record.event_type, record.payload, event_id, record.metadata,
                   record.occurred_at)
        for event_id, record in records.items()
    ]
    try:
        rows = encode_batch(store, events, None)[0]
    except EventStoreError:
        rows = []
        for event, record in zip(events, records.values(), strict=True):
            try:
                rows += encode_batch(store, [event], None)[0]
            except EventStoreError as exc:
                raise _at(record.where, exc) from None
    out = []
    checked: set[str] = set()  # stream ids (and types) checked already: a batch repeats them
    for row, record in zip(rows, records.values(), strict=True):
        stream_id, stream_type = record.stream_id, record.stream_type
        correlation, causation = record.correlation_id, record.causation_id
        try:
            if type(stream_id) is not str or stream_id not in checked:
                checked.add(check_name(stream_id, "stream_id"))
            if stream_type is not None and (
                type(stream_type) is not str or stream_type not in checked
            ):
                checked.add(check_name(stream_type, "stream_type"))
            if correlation is not None:
                correlation = optional_id(correlation, "correlation_id")
            if causation is not None:
                causation = optional_id(causation, "causation_id")
        except EventStoreError as exc:
            raise _at(record.where, exc) from None
        out.append(new_row(ImportRow, (stream_id, stream_type, correlation, causation, row,
                                       record.occurred_at, record.where)))
    return out
