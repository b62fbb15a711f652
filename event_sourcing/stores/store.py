"""EventStore: the backend-independent front of the log (validation, encoding, upcasting).

It checks every argument before any I/O, so bad input never half-writes, then delegates
to a Recorder (SQLite or PostgreSQL) that owns the SQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import DomainEvent, EventRegistry, default_registry
from event_sourcing.errors import (
    DuplicateEventError,
    EventValidationError,
    PayloadTooLargeError,
)
from event_sourcing.events import NewEvent, RecordedEvent, new_event_id
from event_sourcing.stores.recorder import (
    AlreadyRecorded,
    EventRow,
    Recorder,
    SqlTransaction,
    iter_pages,
)

MAX_STREAM_ID_LENGTH = 255
MAX_NAME_LENGTH = 255
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
READ_PAGE_SIZE = 2000

if TYPE_CHECKING:
    from event_sourcing.integrity.audit import Seal, VerifyReport

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# Built once: json.dumps(**kwargs) would construct an encoder per call on the hot path.
_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def _encode_json(value: Any, what: str, max_bytes: int) -> str:
    try:
        text = _JSON.encode(value)
    except TypeError as exc:
        raise EventValidationError(
            f"{what} is not JSON-serialisable ({exc}); use lists instead of sets, "
            "base64 text or an artifact reference instead of bytes"
        ) from None
    except ValueError as exc:
        raise EventValidationError(
            f"{what} is not valid JSON ({exc}); NaN and Infinity have no JSON form, "
            "record them as null or as a string"
        ) from None
    _raise_if_too_large(text, what, max_bytes)
    return text


def _check_size(payload_json: str, index: int, event_type: str, max_bytes: int) -> None:
    # len() first: a str is never longer than its UTF-8 bytes, so small payloads stop here
    if len(payload_json) * 4 > max_bytes:
        _raise_if_too_large(payload_json, f"payload of events[{index}] ({event_type})", max_bytes)


def _raise_if_too_large(text: str, what: str, max_bytes: int) -> None:
    size = len(text) if text.isascii() else len(text.encode())
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {size:,} bytes, over the store's limit of {max_bytes:,} bytes. "
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
    return value


def _optional_id(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    return _check_name(value, what)


def _event_id(value: Any) -> str:
    if value is None:
        return new_event_id()
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise EventValidationError(
            f"event id {value!r} is not a UUID; pass a UUID (uuid.uuid5 gives deterministic "
            "ids for idempotent retries) or leave id=None"
        ) from None


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
    ) -> None:
        self.recorder = recorder
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
    ) -> list[RecordedEvent]:
        """Append `events` to `stream_id`, all or nothing; return them as recorded.

        `expected_version`: None skips the check; n requires the stream to be at version n
        (0: the stream must not exist yet). A batch whose event ids are all recorded
        already, with the same content, returns the recorded events and writes nothing.
        """
        _check_name(stream_id, "stream_id")
        if expected_version is not None and (
            not isinstance(expected_version, int)
            or isinstance(expected_version, bool)
            or expected_version < 0
        ):
            raise EventValidationError(
                f"expected_version must be None or an int >= 0, got {expected_version!r}"
            )
        if stream_type is not None:
            _check_name(stream_type, "stream_type")
        correlation = _optional_id(correlation_id, "correlation_id")
        causation = _optional_id(causation_id, "causation_id")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise EventValidationError(
                f"metadata must be a mapping, got {type(metadata).__name__}"
            )
        if type(events) is not list:  # a list is the usual case: no copy, no ABC checks
            if isinstance(events, (NewEvent, DomainEvent)) or not isinstance(events, Iterable):
                raise EventValidationError(
                    "events must be a sequence of events (wrap one in [...])"
                )
            events = list(events)
        rows, payloads, metadatas = self._encode(events, metadata)
        created_at = self.clock()
        if created_at.tzinfo is not UTC:
            if created_at.tzinfo is None:
                raise EventValidationError(
                    "the store's clock returned a naive datetime; use UTC"
                )
            created_at = created_at.astimezone(UTC)
        try:
            kind, version, positions = self.recorder.append(
                stream_id, stream_type, expected_version, rows, created_at, correlation,
                causation,
            )
        except AlreadyRecorded as recorded:
            return self._idempotent_result(stream_id, rows, recorded.events)
        return [
            RecordedEvent(
                row.id, stream_id, kind, version + n, position, row.event_type,
                row.schema_version, payload, metadata_, created_at, correlation, causation,
                row.schema_version,
            )
            for n, (row, position, payload, metadata_) in enumerate(
                zip(rows, positions, payloads, metadatas, strict=True)
            )
        ]

    def _encode(
        self, events: list[NewEvent | DomainEvent], metadata: Mapping[str, Any] | None
    ) -> tuple[list[EventRow], list[dict[str, Any]], list[dict[str, Any]]]:
        """Validate and encode a batch: rows to write, plus the payloads and metadata as a
        reader will decode them (JSON-normalized, so append returns what read_all returns).
        """
        if not events:
            raise EventValidationError("append needs at least one event")
        registry = self.registry
        limit = self.max_payload_bytes
        batch_metadata = dict(metadata) if metadata else {}
        batch_metadata_json = (
            _encode_json(batch_metadata, "metadata", limit) if batch_metadata else "{}"
        )
        rows: list[EventRow] = []
        payloads: list[dict[str, Any]] = []
        metadatas: list[dict[str, Any]] = []
        seen: set[str] = set()
        encode_json = registry.encode_json
        for index, event in enumerate(events):
            event_metadata: Mapping[str, Any] | None = None
            if type(event) is NewEvent or isinstance(event, NewEvent):
                event_type = event.type
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
                if registered:
                    # pydantic's output is plain JSON already: no decode needed
                    schema_version, payload, payload_json = encode_json(event_type, raw_payload)
                    _check_size(payload_json, index, event_type, limit)
                else:
                    payload_json = _encode_json(
                        dict(raw_payload), f"payload of events[{index}] ({event_type})", limit
                    )
                    schema_version, payload = 1, json.loads(payload_json)
                if event.id is None:
                    event_id = new_event_id()  # fresh ids never collide; given ones may
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
            elif isinstance(event, DomainEvent):
                event_type, schema_version, payload, payload_json = registry.encode_model_json(
                    event
                )
                _check_size(payload_json, index, event_type, limit)
                event_id = new_event_id()
            else:
                raise EventValidationError(
                    f"events[{index}] is a {type(event).__name__}; expected es.NewEvent or a "
                    "typed catalog event"
                )
            if event_metadata:
                merged = {**batch_metadata, **event_metadata}
                metadata_json = _encode_json(merged, f"metadata of events[{index}]", limit)
                metadatas.append(json.loads(metadata_json))
            else:
                metadata_json = batch_metadata_json
                metadatas.append(json.loads(metadata_json) if batch_metadata else {})
            payloads.append(payload)
            rows.append(
                EventRow(event_id, event_type, schema_version, payload_json, metadata_json, payload)
            )
        return rows, payloads, metadatas

    def _idempotent_result(
        self, stream_id: str, rows: list[EventRow], existing: list[RecordedEvent]
    ) -> list[RecordedEvent]:
        by_id = {event.id: event for event in existing}
        for row in rows:
            old = by_id.get(row.id)
            if old is None:
                raise DuplicateEventError(
                    f"part of this batch is already recorded (e.g. {existing[0].id}) but event "
                    f"{row.id} is not: a retry must resend exactly the same batch"
                )
            if (
                old.stream_id != stream_id
                or old.event_type != row.event_type
                or old.payload != json.loads(row.payload_json)
            ):
                raise DuplicateEventError(
                    f"event id {row.id} is already recorded with different content "
                    f"(stream {old.stream_id!r}, type {old.event_type!r}); "
                    "use a fresh id for a new event"
                )
        return [by_id[row.id] for row in rows]

    # -- reading ------------------------------------------------------------------------
    def _upcaster(self) -> Callable[[list[RecordedEvent]], list[RecordedEvent]]:
        registry = self.registry
        current = {name: registry.current_version(name) for name in registry.types()}

        def upcast(events: list[RecordedEvent]) -> list[RecordedEvent]:
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
        """Events of one stream in version order, upcast to the current schemas."""
        _check_name(stream_id, "stream_id")
        return self._upcaster()(self.recorder.read_stream(stream_id, from_version, to_version))

    def read_all(
        self,
        after: int = 0,
        event_types: Collection[str] | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event after global position `after`, in position order.

        `event_types` keeps only those type names; `until` keeps events created at or
        before that (tz-aware) time; `limit` caps how many are returned.
        """
        if not isinstance(after, int) or after < 0:
            raise EventValidationError(f"after must be an int >= 0, got {after!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise EventValidationError(f"limit must be None or an int >= 0, got {limit!r}")
        if until is not None:
            if until.tzinfo is None:
                raise EventValidationError("until must be timezone-aware (UTC)")
            until = until.astimezone(UTC)
        if isinstance(event_types, str):
            event_types = [event_types]
        types = None if event_types is None else list(event_types)
        upcast = self._upcaster()
        for page in iter_pages(self.recorder, after, types, until, limit, READ_PAGE_SIZE):
            yield from upcast(page)

    def read_correlated(self, correlation_id: str) -> list[RecordedEvent]:
        """Every event sharing a correlation id, in position order."""
        correlation = _optional_id(correlation_id, "correlation_id")
        assert correlation is not None
        return self._upcaster()(self.recorder.read_correlated(correlation))

    def get_event(self, event_id: str) -> RecordedEvent | None:
        """One event by id, or None."""
        found = self._upcaster()(self.recorder.read_ids([_event_id(event_id)]))
        return found[0] if found else None

    def stream_version(self, stream_id: str) -> int:
        _check_name(stream_id, "stream_id")
        return self.recorder.stream_version(stream_id)

    def head_position(self) -> int:
        return self.recorder.head_position()

    def counts_by_type(self) -> dict[str, int]:
        return self.recorder.counts_by_type()

    def transaction(self) -> AbstractContextManager[SqlTransaction]:
        """A transaction on the store's database, for read models kept beside the log."""
        return self.recorder.transaction()

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
