"""PostgreSQL faults as EventStoreErrors: the one place psycopg and pool errors are mapped.

Every error the PostgreSQL recorder lets out goes through `store_error`.
"""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from event_sourcing.errors import (
    AccessDeniedError,
    EventStoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def broken(connection: psycopg.Connection[object] | None) -> bool:
    """Whether `connection` is lost (a server restart, a terminated backend, a network
    cut): the operation may be sent again on another connection."""
    return connection is not None and (connection.closed or connection.broken)


def store_error(exc: psycopg.Error, what: str, where: str) -> EventStoreError:
    """The EventStoreError a user sees for `exc`, raised while doing `what` on `where` (the
    store's redacted description). Raise it `from exc` to keep the driver's details."""
    detail = _first_line(exc)
    if isinstance(exc, PoolTimeout):
        return StoreTimeoutError(
            f"{what} on {where} got no database connection in time ({detail}): every pooled "
            "connection stayed busy or the server did not answer. Raise pool_size or "
            "pool_timeout (connect options), or check that the server is up."
        )
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreTimeoutError(
            f"{what} on {where} waited longer than lock_timeout for a lock another "
            f"transaction holds ({detail}); nothing was written. Retry, or find the "
            "transaction holding the lock (pg_locks); lock_timeout can be set in the URL, "
            "e.g. ?options=-c%20lock_timeout%3D30s"
        )
    if isinstance(exc, pg_errors.QueryCanceled):
        return StoreTimeoutError(
            f"{what} on {where} was cancelled ({detail}): it ran past statement_timeout, or "
            "an administrator cancelled it; nothing was written. Raise statement_timeout "
            "in the URL (e.g. ?options=-c%20statement_timeout%3D60s) or narrow the read."
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return AccessDeniedError(
            f"{what} on {where} was refused: {detail}. If the database role lacks a "
            "privilege, grant it (`mlevents grant`) or use another role."
        )
    if isinstance(
        exc, (pg_errors.InvalidSchemaName, pg_errors.UndefinedTable, pg_errors.UndefinedFunction)
    ):
        return StoreUnavailableError(
            f"{what} on {where} found no such object ({detail}): was the store's schema "
            "dropped or renamed while it was open? Reopen it with es.connect (`mlevents "
            "init` recreates an empty store)"
        )
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StoreUnavailableError(
            f"{what} on {where} failed: the server is read-only ({detail}); point the URL "
            "at the primary"
        )
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        return StoreUnavailableError(
            f"{what} on {where} failed: {detail}. Check that the server is running and "
            "reachable; the store reconnects by itself once it is."
        )
    return EventStoreError(
        f"{what} on {where} failed with a database error "
        f"({type(exc).__name__}, SQLSTATE {exc.sqlstate}): {detail}"
    )
