"""mlevents: an append-only event store for AI/ML systems, with typed events and projections.

`import event_sourcing as es; store = es.connect(url)` is the whole entry point.
"""

from event_sourcing.catalog import DomainEvent, EventRegistry, EventTypes, default_registry
from event_sourcing.errors import (
    AccessDeniedError,
    ConcurrencyError,
    ConfigurationError,
    DuplicateEventError,
    EventStoreError,
    EventValidationError,
    IntegrityError,
    PayloadTooLargeError,
    SchemaVersionError,
    StoreNotFoundError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnknownEventTypeError,
)
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.stores import EventStore, connect, default_url

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ConcurrencyError",
    "ConfigurationError",
    "DomainEvent",
    "DuplicateEventError",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "EventTypes",
    "EventValidationError",
    "IntegrityError",
    "NewEvent",
    "PayloadTooLargeError",
    "RecordedEvent",
    "SchemaVersionError",
    "StoreNotFoundError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "UnknownEventTypeError",
    "__version__",
    "connect",
    "default_registry",
    "default_url",
]
