"""Event envelopes: NewEvent (what a writer appends) and RecordedEvent (what a reader gets).

Both are immutable. RecordedEvent is a NamedTuple: every append and every read builds one
per event, and a tuple is built several times faster than a frozen dataclass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from event_sourcing.catalog import DomainEvent

_VARIANT = "89ab" * 4  # a hex digit's low 2 bits -> the RFC 4122 variant digit 10xx


def new_event_id() -> str:
    """A fresh UUIDv7 (RFC 9562) as text: time-ordered, so new ids land at the right edge
    of the id index instead of at random pages (it halves SQLite commit I/O at 100k rows).

    48 bits of Unix milliseconds, version 7, then 74 random bits, built as text directly
    (every append makes one per event; this is about 40% faster than integer arithmetic).
    """
    ms = f"{time.time_ns() // 1_000_000:012x}"
    r = os.urandom(10).hex()
    return f"{ms[:8]}-{ms[8:]}-7{r[:3]}-{_VARIANT[int(r[3], 16)]}{r[4:7]}-{r[7:19]}"


def new_event_ids(count: int) -> list[str]:
    """`count` fresh UUIDv7s as `new_event_id` makes them, with one clock reading and one
    read of random bytes for them all (an append of a batch)."""
    if count == 1:
        return [new_event_id()]
    ms = f"{time.time_ns() // 1_000_000:012x}"
    prefix = f"{ms[:8]}-{ms[8:]}-7"
    r = os.urandom(10 * count).hex()
    return [
        f"{prefix}{r[i:i + 3]}-{_VARIANT[int(r[i + 3], 16)]}{r[i + 4:i + 7]}-{r[i + 7:i + 19]}"
        for i in range(0, 20 * count, 20)
    ]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. `id` defaults to a fresh UUIDv7; reuse an id to make a retry
    idempotent. `metadata` adds to (and overrides) the append's batch metadata.
    `occurred_at` is when the fact happened (business time, a timezone-aware datetime);
    it overrides the append's `occurred_at`, and both default to the time of recording.

    A typed catalog event gets an id, metadata and an occurred_at through
    `NewEvent.of(event, id=..., metadata=..., occurred_at=...)`; appended bare, it gets a
    fresh id, the batch metadata and the batch occurred_at only.
    """

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    metadata: Mapping[str, Any] | None = None
    occurred_at: datetime | None = None

    @classmethod
    def of(
        cls,
        event: DomainEvent,
        *,
        id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        occurred_at: datetime | None = None,
    ) -> NewEvent:
        """A typed catalog event with an explicit id, per-event metadata and/or the time
        the fact occurred."""
        from event_sourcing.catalog import DomainEvent  # the catalog imports this module

        if not isinstance(event, DomainEvent):
            from event_sourcing.errors import EventValidationError

            raise EventValidationError(
                f"NewEvent.of takes a typed catalog event (a DomainEvent), got "
                f"{type(event).__name__}; build a NewEvent(type, payload) for plain payloads"
            )
        return cls(
            event.event_type, event.model_dump(mode="json"), id=id, metadata=metadata,
            occurred_at=occurred_at,
        )


class RecordedEvent(NamedTuple):
    """An event as the store recorded it.

    `version` is 1-based within its stream; `position` is global and strictly increasing in
    the order events became visible. `schema_version` is the version of `payload` as
    returned (after upcasting); `recorded_schema_version` is the one it was written with.
    `created_at` is when the store recorded the event (record time); `occurred_at` is when
    the fact happened (business time): given at append, else the same as `created_at`.
    Use `event._replace(field=value)` for a changed copy.
    """

    id: str
    stream_id: str
    stream_type: str
    version: int
    position: int
    event_type: str
    schema_version: int
    payload: dict[str, Any]
    metadata: dict[str, Any]
    created_at: datetime
    correlation_id: str | None
    causation_id: str | None
    recorded_schema_version: int
    occurred_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 UTC), as `mlevents read` prints it."""
        return {
            "id": self.id,
            "stream_id": self.stream_id,
            "stream_type": self.stream_type,
            "version": self.version,
            "position": self.position,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "recorded_schema_version": self.recorded_schema_version,
            "payload": self.payload,
            "metadata": self.metadata,
            "created_at": self.created_at.isoformat(),
            "occurred_at": self.occurred_at.isoformat(),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }
