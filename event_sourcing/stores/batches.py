"""An append's batch checked and encoded into the rows a Recorder writes, and a retried
batch compared with what is recorded (EventStore.append; import_events encodes its
batches here too).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import DomainEvent
from event_sourcing.errors import DuplicateEventError, EventValidationError
from event_sourcing.events import NewEvent, RecordedEvent, new_event_ids
from event_sourcing.privacy.marking import SUBJECT_METADATA_KEY
from event_sourcing.stores.arguments import MAX_BATCH_BYTES, check_event_id, check_name, too_large
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.times import occurred_text
from event_sourcing.stores.values import (
    decode,
    encode_marked,
    encode_serialized,
    refuse_lone_surrogates,
    same,
)

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

new_row = tuple.__new__  # a NamedTuple built from a tuple, without its Python __new__


def encode_batch(
    store: EventStore,
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
        return _encode_rows(store, events, metadata, batch_occurred)
    finally:
        if enabled:
            gc.enable()


def _encode_rows(
    store: EventStore,
    events: list[NewEvent | DomainEvent],
    metadata: Mapping[str, Any] | None,
    batch_occurred: str | None,
) -> tuple[list[EventRow], list[dict[str, Any]], list[dict[str, Any]]]:
    registry = store.registry
    vault = store.privacy
    batch_keys: dict[str, Any] = {}  # subjects' keys, read once per append
    specs: dict[str, Any] = {}  # event type -> its personal fields, looked up once
    limit = store.max_payload_bytes
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
                check_name(event_type, f"events[{index}].type")
            registered = registry.is_registered(event_type)
            if not registered:
                check_name(event_type, f"events[{index}].type")
                if store.validate:
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
                event_id = check_event_id(event.id)
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
            raise too_large(f"{what} with its metadata", size, limit, "per event")
        total += size
        payloads.append(payload)
        rows.append(new_row(EventRow, (
            event_id, event_type, schema_version, payload_json, metadata_json, stored,
            canonical and metadata_canonical, occurred,
        )))
    if total > MAX_BATCH_BYTES:
        raise too_large(
            f"this batch of {len(rows):,} events", total, MAX_BATCH_BYTES, "per append"
        )
    return rows, payloads, metadatas


def idempotent_result(
    stream_id: str,
    rows: list[EventRow],
    payloads: list[dict[str, Any]],
    existing: list[RecordedEvent],
    compare: bool,
) -> list[RecordedEvent]:
    """What append returns for a batch recorded already (`existing`: its events as read
    back): those events, if the retry matches them (same stream; with `compare`, same type
    and payload too), else DuplicateEventError."""
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
