"""EventStore: the backend-independent front of the log (appends, upcasting reads, and
the entry points to imports, erasure and integrity).

It checks every argument before any I/O (event_sourcing.stores.arguments), so bad input
never half-writes, encodes a batch (event_sourcing.stores.batches), then delegates to a
Recorder (SQLite or PostgreSQL) that owns the SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from event_sourcing.catalog import DomainEvent, EventRegistry, default_registry
from event_sourcing.errors import EventValidationError
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.privacy.crypto import KeyProvider
from event_sourcing.privacy.vault import Vault
from event_sourcing.stores.arguments import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_BATCH_EVENTS,
    MAX_INT64,
    check_event_id,
    check_event_types,
    check_int,
    check_max_payload_bytes,
    check_name,
    check_until,
    optional_id,
    optional_int,
)
from event_sourcing.stores.batches import encode_batch, idempotent_result, new_row
from event_sourcing.stores.recorder import AlreadyRecorded, Recorder, SqlTransaction, iter_pages
from event_sourcing.stores.times import occurred_text, parse_time, utc_time

READ_PAGE_SIZE = 2000
_TYPE_AND_VERSION = itemgetter(5, 6)  # a RecordedEvent's event_type and schema_version

if TYPE_CHECKING:
    from event_sourcing.integrity.audit import Seal, VerifyReport
    from event_sourcing.stores.imports import ImportRecord, ImportReport

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class EventStore:
    """An append-only event log. Use `event_sourcing.connect(url)` to open one.

    Thread-safe: one store may be shared by the threads of a process.
    """

    def __init__(
        self,
        recorder: Recorder,
        *,
        registry: EventRegistry | None = None,
        validate: bool = True,
        clock: Clock = utc_now,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        key_provider: KeyProvider | None = None,
    ) -> None:
        check_max_payload_bytes(max_payload_bytes)
        self.recorder = recorder
        # Personal data (docs/privacy.md): key_provider, else $MLEVENTS_KEK when needed.
        self.privacy = Vault(self, key_provider)
        self.registry = registry if registry is not None else default_registry
        self.validate = validate
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return self.recorder.dialect

    def close(self) -> None:
        self.recorder.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventStore({self.recorder.description})"

    # -- writing ------------------------------------------------------------------------
    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent | DomainEvent],
        expected_version: int | None = None,
        stream_type: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_duplicate: Literal["compare", "return_existing"] = "compare",
        occurred_at: datetime | None = None,
    ) -> list[RecordedEvent]:
        """Append `events` to `stream_id`, all or nothing; return them as recorded.

        `expected_version`: None skips the check; n requires the stream to be at version n
        (0: the stream must not exist yet). A batch whose event ids are all recorded
        already, with the same content, returns the recorded events and writes nothing.
        `on_duplicate="return_existing"` (keyed emission: the first record wins) returns
        them even when the content differs; either way a batch only partly recorded, or
        recorded on another stream, raises DuplicateEventError.

        `occurred_at`: when the facts happened (business time) for the events that do not
        give their own; by default the time of recording. The time of recording is the
        store's clock, clamped so that it never goes backwards (docs/temporal.md).
        """
        if on_duplicate not in ("compare", "return_existing"):
            raise EventValidationError(
                f"on_duplicate must be 'compare' or 'return_existing', got {on_duplicate!r}"
            )
        check_name(stream_id, "stream_id")
        optional_int(expected_version, "expected_version", 0)
        if stream_type is not None:
            check_name(stream_type, "stream_type")
        correlation = optional_id(correlation_id, "correlation_id")
        causation = optional_id(causation_id, "causation_id")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise EventValidationError(
                f"metadata must be a mapping, got {type(metadata).__name__}"
            )
        if type(events) is not list:  # a list is the usual case: no copy, no ABC checks
            if isinstance(events, (NewEvent, DomainEvent, str, Mapping)) or not isinstance(
                events, Iterable
            ):
                raise EventValidationError(
                    "events must be a sequence of events (wrap one in [...])"
                )
            events = list(events)
        if len(events) > MAX_BATCH_EVENTS:
            raise EventValidationError(
                f"a batch of {len(events):,} events is over the limit of {MAX_BATCH_EVENTS:,} "
                "events per append; append it in several batches"
            )
        batch_occurred = None if occurred_at is None else occurred_text(occurred_at, "occurred_at")
        rows, payloads, metadatas = encode_batch(self, events, metadata, batch_occurred)
        created_at = utc_time(self.clock(), "the time the store's clock returned")
        try:
            kind, version, positions, created_at = self.recorder.append(
                stream_id, stream_type, expected_version, rows, created_at, correlation,
                causation,
            )
        except AlreadyRecorded as recorded:
            return idempotent_result(
                stream_id, rows, payloads, self.privacy.open(recorded.events),
                on_duplicate == "compare",
            )
        return [
            new_row(RecordedEvent, (
                row.id, stream_id, kind, version + n, position, row.event_type,
                row.schema_version, payload, metadata_, created_at, correlation, causation,
                row.schema_version,
                created_at if row.occurred_at is None else parse_time(row.occurred_at),
            ))
            for n, (row, position, payload, metadata_) in enumerate(
                zip(rows, positions, payloads, metadatas, strict=True)
            )
        ]


    def import_events(
        self,
        records: Iterable[ImportRecord],
        *,
        batch_size: int = 5000,
        progress: Callable[[ImportReport], None] | None = None,
    ) -> ImportReport:
        """Bulk-import existing history (docs/import.md): `records` (see
        `event_sourcing.stores.import_readers.read_records`) checked and encoded as appends are,
        written `batch_size` at a time, one transaction per batch, versions in input order
        per stream. Records whose id is recorded already are skipped, so running an import
        again, or after an interruption, writes only what is missing. A bad record raises
        an EventStoreError naming its line or row; the batches before it stay committed.
        `progress(report)` runs after every batch."""
        from event_sourcing.stores.imports import import_events

        return import_events(self, records, batch_size=batch_size, progress=progress)

    # -- reading ------------------------------------------------------------------------
    def _upcaster(self) -> Callable[[list[RecordedEvent]], list[RecordedEvent]]:
        registry = self.registry
        current = {name: registry.current_version(name) for name in registry.types()}
        open_personal = self.privacy.open

        def upcast(events: list[RecordedEvent]) -> list[RecordedEvent]:
            events = open_personal(events)
            if all(
                current.get(name, version) == version
                for name, version in set(map(_TYPE_AND_VERSION, events))
            ):
                return events  # the usual page: every event at its type's current version
            for index, event in enumerate(events):
                version = current.get(event.event_type)
                if version is not None and event.schema_version != version:
                    new_version, payload = registry.upcast(
                        event.event_type, event.schema_version, event.payload
                    )
                    events[index] = event._replace(
                        payload=payload,
                        schema_version=new_version,
                        recorded_schema_version=event.schema_version,
                    )
            return events

        return upcast

    def read_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[RecordedEvent]:
        """Events of one stream in version order, upcast to the current schemas (a list:
        use `iter_stream` for a stream too long to hold in memory)."""
        return list(self.iter_stream(stream_id, from_version, to_version))

    def iter_stream(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> Iterator[RecordedEvent]:
        """`read_stream` as an iterator that reads READ_PAGE_SIZE events at a time."""
        check_name(stream_id, "stream_id")
        first = check_int(from_version, "from_version", 1)
        last = optional_int(to_version, "to_version", 0)
        return self._iter_stream(stream_id, first, MAX_INT64 if last is None else last)

    def _iter_stream(self, stream_id: str, first: int, last: int) -> Iterator[RecordedEvent]:
        upcast = self._upcaster()
        # A stream's versions are contiguous from 1, so a short page is its end.
        while first <= last:
            end = min(last, first + READ_PAGE_SIZE - 1)
            page = self.recorder.read_stream(stream_id, first, end)
            yield from upcast(page)
            if len(page) < end - first + 1:
                return
            first = end + 1

    def read_all(
        self,
        after: int = 0,
        event_types: Collection[str] | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event after global position `after`, in position order.

        `event_types` keeps only those type names; `until` keeps events recorded
        (created_at, record time, not occurred_at) at or before that (tz-aware) time;
        `limit` caps how many are returned. Arguments are checked when called; the events
        are read page by page as they are iterated. For business time, see `read_as_of`.
        """
        return self._iter_all(
            check_int(after, "after", 0),
            check_event_types(event_types),
            check_until(until),
            optional_int(limit, "limit", 0),
        )

    def _iter_all(
        self, after: int, types: list[str] | None, until: datetime | None, limit: int | None
    ) -> Iterator[RecordedEvent]:
        # chain and map run in C: no Python frame resumed per event.
        pages = iter_pages(self.recorder, after, types, until, limit, READ_PAGE_SIZE)
        return chain.from_iterable(map(self._upcaster(), pages))

    def read_as_of(
        self,
        at: datetime,
        known_at: datetime | None = None,
        event_types: Collection[str] | None = None,
    ) -> Iterator[RecordedEvent]:
        """The events that occurred at or before `at` (business time: occurred_at) and were
        recorded at or before `known_at` (record time: created_at; None: now), in
        business-time order (occurred_at, then position): what the log said about `at`
        when it stood at `known_at`. See docs/temporal.md."""
        from event_sourcing.stores.business_time import iter_as_of

        return iter_as_of(self, at, known_at, check_event_types(event_types))

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        """Every event sharing a correlation id, in position order."""
        correlation = optional_id(correlation_id, "correlation_id")
        if correlation is None:
            raise EventValidationError("correlation_id must be a non-empty string, got None")
        return self._upcaster()(self.recorder.read_correlated(correlation))

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by id, or None."""
        if event_id is None:
            raise EventValidationError("event_id must be a UUID, got None")
        found = self._upcaster()(self.recorder.read_ids([check_event_id(event_id)]))
        return found[0] if found else None

    def stream_version(self, stream_id: str) -> int:
        check_name(stream_id, "stream_id")
        return self.recorder.stream_version(stream_id)

    def head_position(self) -> int:
        return self.recorder.head_position()

    def counts_by_type(self) -> dict[str, int]:
        return self.recorder.counts_by_type()

    def forget(self, subject_id: str, *, reason: str) -> RecordedEvent:
        """Erase a data subject (crypto-shredding): destroy their key, so their personal
        values read as erased markers from now on, and record a `subject_erased` event
        holding no personal data. See docs/privacy.md."""
        from event_sourcing.privacy.forget import forget

        return forget(self, subject_id, reason=reason)

    def transaction(self, read_only: bool = False) -> AbstractContextManager[SqlTransaction]:
        """A transaction on the store's database, for read models kept beside the log.

        A `read_only` one only reads (it is rolled back) and never holds appends back."""
        return self.recorder.transaction(read_only)

    # -- integrity (docs/integrity.md) --------------------------------------------------
    def seal(self) -> Seal:
        """Verify the events since the last seal and append an `integrity_sealed` event with
        their Merkle root, chained to the previous seal's."""
        from event_sourcing.integrity.audit import seal

        return seal(self)

    def verify(
        self,
        *,
        since_last_verified: bool = False,
        against: Sequence[Seal] | str | Path | None = None,
    ) -> VerifyReport:
        """Recompute hash chains and seals (see event_sourcing.integrity.audit.verify)."""
        from event_sourcing.integrity.audit import verify

        return verify(self, since_last_verified=since_last_verified, against=against)
