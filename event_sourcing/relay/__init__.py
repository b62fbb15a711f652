"""Streaming out: the relay publishes the store's global log, in order, to a message broker.

Owns the relay loop and its checkpoint table, the Sink interface and the NATS JetStream sink.
"""

from event_sourcing.relay.relay import (
    DEFAULT_INTERVAL,
    DEFAULT_PAGE_SIZE,
    Relay,
    RelayStats,
    read_checkpoint,
    relay_lag,
    set_checkpoint,
)
from event_sourcing.relay.sink import Ack, RelayError, Sink, encode_event

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_PAGE_SIZE",
    "Ack",
    "Relay",
    "RelayError",
    "RelayStats",
    "Sink",
    "encode_event",
    "read_checkpoint",
    "relay_lag",
    "set_checkpoint",
]
