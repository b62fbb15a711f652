"""The error hierarchy of mlevents: every failure the library raises on purpose.

All errors derive from EventStoreError; each message says what was wrong and what to do.
"""

from __future__ import annotations


class EventStoreError(Exception):
    """Base class of every error mlevents raises on purpose."""


class ConcurrencyError(EventStoreError):
    """A stream was not at the version the writer expected; nothing was written."""

    def __init__(self, stream_id: str, expected: int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected {expected}; "
            "nothing was written. Re-read the stream, decide again, and retry."
        )


class EventValidationError(EventStoreError, ValueError):
    """An event, its payload, its metadata or an argument of a store call is invalid."""


class UnknownEventTypeError(EventStoreError, LookupError):
    """An event type is not registered and the store validates types."""


class PayloadTooLargeError(EventValidationError):
    """An encoded payload exceeds the store's size limit."""


class DuplicateEventError(EventStoreError):
    """An event id is already recorded with different content (or on another stream)."""


class SchemaVersionError(EventStoreError):
    """A stored event's schema version cannot be brought to the version the code knows."""


class StoreUnavailableError(EventStoreError, ConnectionError):
    """The database behind a store URL cannot be reached or opened."""


class StoreTimeoutError(StoreUnavailableError, TimeoutError):
    """An operation ran out of time (statement_timeout, lock_timeout, or no pooled
    connection became free) or an append out of attempts (raced again and again) and was
    cancelled; an append that times out writes nothing."""


class ConfigurationError(EventStoreError, ValueError):
    """A store URL or option is malformed or unsupported."""


class StoreNotFoundError(EventStoreError, LookupError):
    """A read-only open found no event store at the URL (create one with `mlevents init`)."""


class AccessDeniedError(EventStoreError, PermissionError):
    """The database role may not do what was asked (see `mlevents grant`)."""


class IntegrityError(EventStoreError):
    """The log does not match its hashes, its seals or a witness, so it is not sealed; or a
    witness file cannot be read (docs/integrity.md)."""


class KeyEncryptionKeyError(EventStoreError):
    """Personal data cannot be decrypted or encrypted: the key-encryption key (MLEVENTS_KEK
    or the store's key provider) is missing, or is not the one the data keys were wrapped
    with. Never answered with plaintext or garbage."""
