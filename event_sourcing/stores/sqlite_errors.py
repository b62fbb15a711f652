"""How a sqlite3 error reaches a user: as the EventStoreError the same failure raises on
PostgreSQL (event_sourcing.stores.postgres_errors)."""

from __future__ import annotations

import sqlite3

from event_sourcing.errors import (
    AccessDeniedError,
    EventStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)


def store_error(exc: sqlite3.Error, where: str) -> EventStoreError:
    """The EventStoreError a user sees for a sqlite3 error on `where` (as on PostgreSQL:
    event_sourcing.stores.postgres_errors)."""
    detail = str(exc)
    if "append-only" in detail:  # the immutability triggers
        return AccessDeniedError(f"{where} refused a statement: {detail}")
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in detail or "busy" in detail):
        return StoreTimeoutError(
            f"{where} stayed locked by another connection past the busy timeout ({detail}); "
            "nothing was written. Retry; find the process holding a long write transaction."
        )
    if "no such table" in detail:
        return StoreUnavailableError(
            f"{where} found no such object ({detail}): was the file replaced or the table "
            "dropped while the store was open?"
        )
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailableError(
            f"{where} failed: {detail}. Check the file, its folder's permissions and free "
            "disk space."
        )
    return EventStoreError(
        f"{where} failed with a database error ({type(exc).__name__}): {detail}"
    )
