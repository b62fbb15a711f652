"""EventStore: the backend-independent front of the log (validation, encoding, upcasting).

It checks every argument before any I/O, so bad input never half-writes, then delegates
to a Recorder (SQLite or PostgreSQL) that owns the SQL.
"""

from __future__ import annotations

import gc
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from event_sourcing.catalog import DomainEvent, EventRegistry, default_registry
from event_sourcing.errors import (
    ConfigurationError,
    DuplicateEventError,
    EventValidationError,
    PayloadTooLargeError,
)
from event_sourcing.events import NewEvent, RecordedEvent, new_event_id, new_event_ids
from event_sourcing.privacy.crypto import KeyProvider
from event_sourcing.privacy.marking import SUBJECT_METADATA_KEY
from event_sourcing.privacy.vault import Vault
from event_sourcing.stores.recorder import (
    AlreadyRecorded,
    EventRow,
    Recorder,
    SqlTransaction,
    iter_pages,
)
from event_sourcing.stores.times import occurred_text, parse_time, utc_time
from event_sourcing.stores.values import (
    decode,
    encode_marked,
    encode_serialized,
    refuse_lone_surrogates,
    same,
)

MAX_NAME_LENGTH = 255
MAX_INT64 = 2**63 - 1  # versions, positions and limits are 64-bit on both backends
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024  # per event: payload and metadata together
MAX_BATCH_EVENTS = 10_000
# Per append, payloads and metadata together. PostgreSQL receives a batch as one jsonb
# array, which must stay under 256 MB in its binary form (up to 4x the text).
MAX_BATCH_BYTES = 32 * 1024 * 1024
MAX_EVENT_TYPES = 1_000  # names in one read_all(event_types=...) filter
READ_PAGE_SIZE = 2000
new_row = tuple.__new__  # a NamedTuple built from a tuple, without its Python __new__
_TYPE_AND_VERSION = itemgetter(5, 6)  # a RecordedEvent's event_type and schema_version
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}").fullmatch

if TYPE_CHECKING:
    from event_sourcing.integrity.audit import Seal, VerifyReport
    from event_sourcing.stores.imports import ImportRecord, ImportReport

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def check_max_payload_bytes(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_BATCH_BYTES:
        raise ConfigurationError(
            f"max_payload_bytes must be an int from 1 to {MAX_BATCH_BYTES:,} (32 MiB), "
            f"got {value!r}"
        )


def _too_large(what: str, size: int, max_bytes: int, scope: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what} is {size:,} bytes, over the store's limit of {max_bytes:,} bytes {scope}. "
        "Events must stay small: put the data in the artifact store "
        "(event_sourcing.artifacts.ArtifactStore.put_bytes) and record its URI and "
        "sha256 in the event instead."
    )


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EventValidationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise EventValidationError(
            f"{what} is {len(value)} characters; at most {MAX_NAME_LENGTH} are allowed"
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise EventValidationError(
                f"{what} {value!r} contains a lone surrogate, which is not Unicode text; "
                "use a valid string"
            ) from None
    if "\x00" in value:
        raise EventValidationError(
            f"{what} {value!r} contains a NUL character, which PostgreSQL cannot store; "
            "remove it"
        )
    return value


def _check_int(value: Any, what: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (
        minimum <= value <= MAX_INT64
    ):
        raise EventValidationError(
            f"{what} must be an int from {minimum} to 2**63 - 1, got {value!r}"
        )
    return int(value)


def _optional_int(value: Any, what: str, minimum: int) -> int | None:
    return None if value is None else _check_int(value, what, minimum)


def _optional_id(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    return _check_name(value, what)


def _event_id(value: Any) -> str:
    if value is None:
        return new_event_id()
    if type(value) is str and _CANONICAL_UUID(value):
        return value  # what str(uuid.UUID(value)) would give, without building one
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise EventValidationError(
            f"event id {value!r} is not a UUID; pass a UUID (uuid.uuid5 gives deterministic "
            "ids for idempotent retries) or leave id=None"
        ) from None


def _event_types(value: Any) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise EventValidationError(
            f"event_types must be None, a type name or a collection of them, got {value!r}"
        )
    types = list(dict.fromkeys(_check_name(name, "event_types item") for name in names))
    if len(types) > MAX_EVENT_TYPES:
        raise EventValidationError(
            f"event_types names {len(types):,} types; at most {MAX_EVENT_TYPES:,} are "
            "allowed: read without the filter and select the types yourself"
        )
    return types


def _until(value: Any) -> datetime | None:
    return None if value is None else utc_time(value, "until")


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
        _check_name(stream_id, "stream_id")
        _optional_int(expected_version, "expected_version", 0)
        if stream_type is not None:
            _check_name(stream_type, "stream_type")
        correlation = _optional_id(correlation_id, "correlation_id")
        causation = _optional_id(causation_id, "causation_id")
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
        rows, payloads, metadatas = self._encode(events, metadata, batch_occurred)
        created_at = utc_time(self.clock(), "the time the store's clock returned")
        try:
            kind, version, positions, created_at = self.recorder.append(
                stream_id, stream_type, expected_version, rows, created_at, correlation,
                causation,
            )
        except AlreadyRecorded as recorded:
            return self._idempotent_result(
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

    def _encode(
        self,
        events: list[NewEvent | DomainEvent],
        metadata: Mapping[str, Any] | None,
        batch_occurred: str | None = None,
    ) -> tuple[list[EventRow], list[dict[str, Any]], list[dict[str, Any]]]:
        """Validate and encode a batch: rows to write, plus the payloads and metadata as a
        reader will decode them (JSON-normalized, so append returns what read_all returns).
        """
        if not events:
            raise EventValidationError("append needs at least one event")
        # The cyclic garbage collector paused: a batch allocates a few containers per event
        # (payload trees, rows), none in a cycle, and the collections they would trigger
        # (a fifth of the time of an import batch) could free nothing.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._encode_batch(events, metadata, batch_occurred)
        finally:
            if enabled:
                gc.enable()

    def _encode_batch(
        self,
        events: list[NewEvent | DomainEvent],
        metadata: Mapping[str, Any] | None,
        batch_occurred: str | None,
    ) -> tuple[list[EventRow], list[dict[str, Any]], list[dict[str, Any]]]:
        registry = self.registry
        vault = self.privacy
        batch_keys: dict[str, Any] = {}  # subjects' keys, read once per append
        specs: dict[str, Any] = {}  # event type -> its personal fields, looked up once
        limit = self.max_payload_bytes
        batch_metadata = dict(metadata) if metadata else {}
        batch_metadata_json, batch_metadata_size, batch_metadata, batch_canonical = (
            encode_marked(batch_metadata, "metadata") if batch_metadata else ("{}", 2, {}, True)
        )
        # fresh ids, made when the first event without one needs them (one clock reading
        # and urandom call for the batch): an import gives every event its id
        fresh_ids: list[str] | None = None
        rows: list[EventRow] = []
        payloads: list[dict[str, Any]] = []
        metadatas: list[dict[str, Any]] = []
        seen: set[str] = set()
        total = 0
        for index, event in enumerate(events):
            event_metadata: Mapping[str, Any] | None = None
            occurred = batch_occurred
            if type(event) is NewEvent or isinstance(event, NewEvent):
                event_type = event.type
                if type(event_type) is not str:
                    _check_name(event_type, f"events[{index}].type")
                registered = registry.is_registered(event_type)
                if not registered:
                    _check_name(event_type, f"events[{index}].type")
                    if self.validate:
                        raise registry.unknown_type_error(event_type)
                raw_payload = event.payload
                # `type(...) is dict` first: an ABC isinstance check costs more than the rest
                if type(raw_payload) is not dict and not isinstance(raw_payload, Mapping):
                    raise EventValidationError(
                        f"events[{index}].payload must be a mapping, "
                        f"got {type(raw_payload).__name__}"
                    )
                what = f"payload of events[{index}] ({event_type})"
                if registered:
                    schema_version, payload = registry.encode(event_type, raw_payload)
                    payload_json, size, payload, canonical = encode_serialized(payload, what)
                    if "\ufffd" in payload_json:
                        refuse_lone_surrogates(raw_payload, what)
                else:
                    schema_version = 1
                    payload_json, size, payload, canonical = encode_marked(
                        dict(raw_payload), what
                    )
                if event.id is None:
                    if fresh_ids is None:
                        fresh_ids = new_event_ids(len(events))
                    event_id = fresh_ids[index]  # fresh ids never collide; given ones may
                else:
                    event_id = _event_id(event.id)
                    if event_id in seen:
                        raise EventValidationError(
                            f"event id {event_id} appears twice in one batch"
                        )
                    seen.add(event_id)
                event_metadata = event.metadata
                if (
                    event_metadata is not None
                    and type(event_metadata) is not dict
                    and not isinstance(event_metadata, Mapping)
                ):
                    raise EventValidationError(
                        f"events[{index}].metadata must be a mapping, "
                        f"got {type(event_metadata).__name__}"
                    )
                if event.occurred_at is not None:
                    occurred = occurred_text(event.occurred_at, f"events[{index}].occurred_at")
            elif isinstance(event, DomainEvent):
                event_type, schema_version, payload = registry.encode_model(event)
                what = f"payload of events[{index}] ({event_type})"
                payload_json, size, payload, canonical = encode_serialized(payload, what)
                if "\ufffd" in payload_json:
                    refuse_lone_surrogates(event.model_dump(), what)
                if fresh_ids is None:
                    fresh_ids = new_event_ids(len(events))
                event_id = fresh_ids[index]
            else:
                raise EventValidationError(
                    f"events[{index}] is a {type(event).__name__}; expected es.NewEvent or a "
                    "typed catalog event"
                )
            merged: dict[str, Any]
            if event_metadata:
                metadata_json, metadata_size, merged, metadata_canonical = encode_marked(
                    {**batch_metadata, **event_metadata}, f"metadata of events[{index}]"
                )
            else:
                metadata_json, metadata_size = batch_metadata_json, batch_metadata_size
                metadata_canonical = batch_canonical
                merged = decode(metadata_json) if batch_metadata else {}
            metadatas.append(merged)
            size += metadata_size
            stored = payload  # the value payload_json holds (hashed on PostgreSQL)
            spec = specs[event_type] if event_type in specs else specs.setdefault(
                event_type, vault.spec(event_type)
            )
            if spec is not None or SUBJECT_METADATA_KEY in merged:
                sealed = vault.seal(event_id, spec, payload, merged, what, batch_keys)
                if sealed is not None:
                    payload_json, metadata_json, size = sealed
                    stored = None  # ciphertext: the hash is over what is stored, not plaintext
                    canonical = False
            if size > limit:
                raise _too_large(f"{what} with its metadata", size, limit, "per event")
            total += size
            payloads.append(payload)
            rows.append(new_row(EventRow, (
                event_id, event_type, schema_version, payload_json, metadata_json, stored,
                canonical and metadata_canonical, occurred,
            )))
        if total > MAX_BATCH_BYTES:
            raise _too_large(
                f"this batch of {len(rows):,} events", total, MAX_BATCH_BYTES, "per append"
            )
        return rows, payloads, metadatas

    def _idempotent_result(
        self,
        stream_id: str,
        rows: list[EventRow],
        payloads: list[dict[str, Any]],
        existing: list[RecordedEvent],
        compare: bool,
    ) -> list[RecordedEvent]:
        by_id = {event.id: event for event in existing}
        for row, payload in zip(rows, payloads, strict=True):
            old = by_id.get(row.id)
            if old is None:
                raise DuplicateEventError(
                    f"part of this batch is already recorded (e.g. {existing[0].id}) but event "
                    f"{row.id} is not: a retry must resend exactly the same batch"
                )
            changed = compare and (
                old.event_type != row.event_type
                or not same(old.payload, payload)
            )
            if old.stream_id != stream_id or changed:
                raise DuplicateEventError(
                    f"event id {row.id} is already recorded with different content "
                    f"(stream {old.stream_id!r}, type {old.event_type!r}); "
                    "use a fresh id for a new event"
                )
        return [by_id[row.id] for row in rows]

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
        _check_name(stream_id, "stream_id")
        first = _check_int(from_version, "from_version", 1)
        last = _optional_int(to_version, "to_version", 0)
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
            _check_int(after, "after", 0),
            _event_types(event_types),
            _until(until),
            _optional_int(limit, "limit", 0),
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

        return iter_as_of(self, at, known_at, _event_types(event_types))

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        """Every event sharing a correlation id, in position order."""
        correlation = _optional_id(correlation_id, "correlation_id")
        if correlation is None:
            raise EventValidationError("correlation_id must be a non-empty string, got None")
        return self._upcaster()(self.recorder.read_correlated(correlation))

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by id, or None."""
        if event_id is None:
            raise EventValidationError("event_id must be a UUID, got None")
        found = self._upcaster()(self.recorder.read_ids([_event_id(event_id)]))
        return found[0] if found else None

    def stream_version(self, stream_id: str) -> int:
        _check_name(stream_id, "stream_id")
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
