"""The EventStore's limits, and the checks of its arguments.

Every argument is checked before any I/O, so bad input never half-writes; each check
returns the value in the form the store keeps (canonical UUID text, a de-duplicated type
list, a UTC time).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from event_sourcing.errors import ConfigurationError, EventValidationError, PayloadTooLargeError
from event_sourcing.events import new_event_id
from event_sourcing.stores.times import utc_time

MAX_NAME_LENGTH = 255
MAX_INT64 = 2**63 - 1  # versions, positions and limits are 64-bit on both backends
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024  # per event: payload and metadata together
MAX_BATCH_EVENTS = 10_000
# Per append, payloads and metadata together. PostgreSQL receives a batch as one jsonb
# array, which must stay under 256 MB in its binary form (up to 4x the text).
MAX_BATCH_BYTES = 32 * 1024 * 1024
MAX_EVENT_TYPES = 1_000  # names in one read_all(event_types=...) filter
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}").fullmatch


def check_max_payload_bytes(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_BATCH_BYTES:
        raise ConfigurationError(
            f"max_payload_bytes must be an int from 1 to {MAX_BATCH_BYTES:,} (32 MiB), "
            f"got {value!r}"
        )


def too_large(what: str, size: int, max_bytes: int, scope: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{what} is {size:,} bytes, over the store's limit of {max_bytes:,} bytes {scope}. "
        "Events must stay small: put the data in the artifact store "
        "(event_sourcing.artifacts.ArtifactStore.put_bytes) and record its URI and "
        "sha256 in the event instead."
    )


def check_name(value: Any, what: str) -> str:
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


def check_int(value: Any, what: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (
        minimum <= value <= MAX_INT64
    ):
        raise EventValidationError(
            f"{what} must be an int from {minimum} to 2**63 - 1, got {value!r}"
        )
    return int(value)


def optional_int(value: Any, what: str, minimum: int) -> int | None:
    return None if value is None else check_int(value, what, minimum)


def optional_id(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    return check_name(value, what)


def check_event_id(value: Any) -> str:
    if value is None:
        return new_event_id()
    if type(value) is str and CANONICAL_UUID(value):
        return value  # what str(uuid.UUID(value)) would give, without building one
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise EventValidationError(
            f"event id {value!r} is not a UUID; pass a UUID (uuid.uuid5 gives deterministic "
            "ids for idempotent retries) or leave id=None"
        ) from None


def check_event_types(value: Any) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise EventValidationError(
            f"event_types must be None, a type name or a collection of them, got {value!r}"
        )
    types = list(dict.fromkeys(check_name(name, "event_types item") for name in names))
    if len(types) > MAX_EVENT_TYPES:
        raise EventValidationError(
            f"event_types names {len(types):,} types; at most {MAX_EVENT_TYPES:,} are "
            "allowed: read without the filter and select the types yourself"
        )
    return types


def check_until(value: Any) -> datetime | None:
    return None if value is None else utc_time(value, "until")
