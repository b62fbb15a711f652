"""The Sink interface of the relay: publish a batch of events in order, return the broker's acks.

A sink is the only part of the relay that knows a broker; the NATS JetStream one is built in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import orjson

from event_sourcing.errors import EventStoreError
from event_sourcing.events import RecordedEvent

__all__ = ["DEFAULT_PREFIX", "Ack", "RelayError", "Sink", "encode_event"]

DEFAULT_PREFIX = "mlevents"
"""Subjects (or topics) start with this: `mlevents.model_deployed`."""


class RelayError(EventStoreError):
    """The broker cannot be reached, is misconfigured, or did not acknowledge a message."""


class Ack(NamedTuple):
    """The broker's acknowledgement of one message: where it stored it, and whether it dropped
    it as a duplicate of a message it already had (same event id within its window)."""

    sequence: int
    duplicate: bool


class Sink(Protocol):
    """Where the relay publishes. Implementations must keep the order of `events` on the
    broker and must make a retry of a published event harmless (the event id is the
    idempotency key)."""

    description: str

    def publish(self, events: Sequence[RecordedEvent]) -> list[Ack]:
        """Publish `events` in order; return once the broker acknowledged every one of them
        (one Ack per event, in order). Raise RelayError if any was not acknowledged."""
        ...

    def last_position(self) -> int | None:
        """The global position of the last event the destination holds from this store, or
        None if it holds none or cannot tell. The relay resumes after
        max(checkpoint, last_position()), so a page stored before a crash is not sent again
        however late the relay comes back."""
        ...

    def close(self) -> None: ...


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_event(event: RecordedEvent) -> bytes:
    """The message body of an event: its `RecordedEvent.to_dict()` as compact UTF-8 JSON
    (what `mlevents read` prints)."""
    document = event.to_dict()
    try:
        return orjson.dumps(document)  # ~10x the standard encoder: half the relay's CPU
    except TypeError:  # an integer beyond 64 bits, which only the standard encoder writes
        return _JSON.encode(document).encode()
