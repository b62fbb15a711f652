"""The PostgreSQL recorder's connections: session settings, the pool, per-thread append
connections, and how each survives a lost connection; every driver error leaves mapped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from event_sourcing.errors import ConfigurationError, EventStoreError, StoreUnavailableError
from event_sourcing.stores.per_thread import PerThread
from event_sourcing.stores.postgres_errors import broken, store_error
from event_sourcing.stores.recorder import redact_text, redact_url

T = TypeVar("T")
Connection = psycopg.Connection[Any]

# How long an append waits for a lock before it fails (writing nothing): a blocked append
# holds its in-flight marker, so this bounds how long it can hold readers back. The URL's
# own lock_timeout wins. See docs/ordering.md, "A stuck append".
APPEND_LOCK_TIMEOUT = "10s"
# Settings the store's correctness needs, after (so overriding) the URL's own `options`:
# reads inside a store.transaction() rely on each statement taking a fresh snapshot.
_PINNED_OPTIONS = r"-c default_transaction_isolation=read\ committed"


def session_options(url: str, store_options: str) -> str:
    """libpq `options` for every connection: the URL's own (e.g. statement_timeout,
    lock_timeout), then the store's, which win where both set the same thing."""
    try:
        given = conninfo_to_dict(url).get("options") or ""
    except psycopg.Error as exc:
        raise ConfigurationError(f"bad PostgreSQL URL {redact_url(url)!r}: {exc}") from None
    return f"{given} {_PINNED_OPTIONS} {store_options}".strip()


def _close_cursor(cursor: psycopg.Cursor[Any]) -> None:
    cursor.connection.close()


class Connections:
    """A pool for reads and transactions, one connection per appending thread.

    A pooled connection found lost (a restarted server, a terminated backend) is dropped
    and the read sent again on another; a transaction starts on a connection checked alive.
    Reads on a thread inside its open transaction() use that transaction's connection, so
    they never wait for a second one (pool_size=1 works).
    """

    def __init__(
        self,
        url: str,
        kwargs: dict[str, Any],
        *,
        name: str,
        description: str,
        configure: Callable[[Connection], None],
        pool_size: int,
        pool_timeout: float,
        connect_timeout: float,
    ) -> None:
        self.description = description
        self._url = url
        self._append_kwargs = {
            **kwargs, "options": f"-c lock_timeout={APPEND_LOCK_TIMEOUT} {kwargs['options']}"
        }
        self._configure = configure
        self._connect_timeout = max(1, int(connect_timeout))
        # Each thread's append cursor (reusing one saves ~15 us an append).
        self._appenders = PerThread(self._open_appender, _close_cursor)
        self._in_transaction = threading.local()
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs=kwargs, open=True,
            name=name, configure=configure, timeout=pool_timeout,
        )
        self._attempts = pool_size + 1  # each lost connection is dropped from the pool
        try:
            self._pool.wait(timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailableError(
                f"cannot open a connection pool to {redact_url(url)}"
            ) from None

    def close(self) -> None:
        self._appenders.close_all()
        self._pool.close()

    def error(self, exc: psycopg.Error, what: str) -> EventStoreError:
        if isinstance(exc, PoolClosed):
            return StoreUnavailableError(f"the store {self.description} is closed")
        return store_error(exc, what, self.description)

    # -- appends ------------------------------------------------------------------------
    def append_cursor(self) -> psycopg.Cursor[Any]:
        """A cursor on this thread's append connection, opened on first use, reopened if
        broken.

        Appends skip the pool: a checkout and return cost more client CPU than the append
        statement itself under load (4 writer processes: 2,967-3,614 events/s through the
        pool, 3,835-4,268 on a connection of their own). An append never runs inside
        another operation, so one connection per thread is enough; it is closed when
        the store is closed or when its thread ends.
        """
        cursor = self._appenders.get()
        if cursor.connection.closed:
            self._appenders.discard()
            cursor = self._appenders.get()
        return cursor

    def _open_appender(self) -> psycopg.Cursor[Any]:
        if self._pool.closed:
            raise StoreUnavailableError(f"the store {self.description} is closed")
        try:
            connection = psycopg.connect(
                self._url, connect_timeout=self._connect_timeout, **self._append_kwargs
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(self._url)}: "
                f"{redact_text(str(exc).strip().splitlines()[0], self._url)}"
            ) from None
        self._configure(connection)
        return connection.cursor()

    # -- reads and transactions ---------------------------------------------------------
    def read(self, what: str, read: Callable[[Connection], T]) -> T:
        """`read(connection)` on this thread's open transaction's connection, else on a
        pooled one; sent again on another if the connection was lost (reads are
        idempotent, and a read_all iterator thus resumes after its last page)."""
        inner: Connection | None = getattr(self._in_transaction, "connection", None)
        if inner is not None:
            try:
                return read(inner)
            except psycopg.Error as exc:
                raise self.error(exc, what) from exc
        for attempt in range(1, self._attempts + 1):
            try:
                connection = self._pool.getconn()
            except psycopg.Error as exc:
                raise self.error(exc, what) from exc
            try:
                return read(connection)
            except psycopg.Error as exc:
                if broken(connection) and attempt < self._attempts:
                    continue
                raise self.error(exc, what) from exc
            finally:
                self._pool.putconn(connection)  # a lost connection is closed, not reused
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self, what: str) -> Iterator[Connection]:
        """A transaction on a pooled connection checked alive first; a driver error
        escaping it is raised as an EventStoreError."""
        connection = self._live_connection(what)
        outer = getattr(self._in_transaction, "connection", None)
        self._in_transaction.connection = connection
        try:
            with connection.transaction():
                yield connection
        except psycopg.Error as exc:
            raise self.error(exc, what) from exc
        finally:
            self._in_transaction.connection = outer
            self._pool.putconn(connection)

    def _live_connection(self, what: str) -> Connection:
        for _ in range(self._attempts):
            try:
                connection = self._pool.getconn()
            except psycopg.Error as exc:
                raise self.error(exc, what) from exc
            try:
                ConnectionPool.check_connection(connection)
            except psycopg.Error as exc:
                self._pool.putconn(connection)
                if not broken(connection):
                    raise self.error(exc, what) from exc
                continue
            return connection
        raise StoreUnavailableError(
            f"{what} on {self.description}: every pooled connection was lost; check that "
            "the server is running"
        )
