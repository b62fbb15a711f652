"""Shared fixtures: a fresh store per test on every backend (SQLite file, real PostgreSQL).

Each PostgreSQL test gets its own schema, dropped afterwards, so tests never see each
other's rows. In CI (CI=true) an unreachable PostgreSQL fails the run; elsewhere the
PostgreSQL tests are skipped and the summary says so loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import event_sourcing as es

PG_URL = os.environ.get("MLEVENTS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_pg_state: dict[str, Any] = {}


def pg_available() -> str | None:
    """None if PostgreSQL answers, else why not (checked once per session)."""
    if "error" not in _pg_state:
        try:
            with psycopg.connect(PG_URL, connect_timeout=3) as connection:
                connection.execute("SELECT 1")
            _pg_state["error"] = None
        except psycopg.OperationalError as exc:
            _pg_state["error"] = str(exc).strip().splitlines()[0]
    return _pg_state["error"]


def require_pg() -> None:
    error = pg_available()
    if error is None:
        return
    message = f"PostgreSQL at {PG_URL} is unreachable: {error}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: PostgreSQL tests must run, not skip)")
    _pg_state["skipped"] = _pg_state.get("skipped", 0) + 1
    pytest.skip(message)


def latest_schema_version(dialect: str) -> int:
    """The schema version a store of `dialect` is created at, and migrated to."""
    from event_sourcing.stores import postgres_schema, sqlite

    return sqlite.SCHEMA_VERSION if dialect == "sqlite" else postgres_schema.SCHEMA_VERSION


def sqlite_texts_inline(tx: Any) -> None:
    """Put a SQLite store's event_store back into its v6 form, before `event_texts`: each
    row holding its stream type, event type and metadata as text (where tests that fake an
    older schema start from)."""
    from event_sourcing.stores.sqlite_schema import _EVENT_STORE_V5, SCHEMA, statements
    from event_sourcing.stores.sqlite_texts import text_of

    tx.execute("ALTER TABLE event_store RENAME TO event_store_v7")  # (its triggers go along)
    tx.execute(_EVENT_STORE_V5)
    tx.execute("ALTER TABLE event_store ADD COLUMN occurred_at INTEGER")
    tx.execute(
        "INSERT INTO event_store SELECT position, id, stream_id, "
        f"{text_of('stream_type')}, version, {text_of('event_type')}, schema_version, "
        f"payload, {text_of('metadata')}, created_at, correlation_id, causation_id, "
        "content_hash, chain_hash, occurred_at FROM event_store_v7"
    )
    tx.execute("DROP TABLE event_store_v7")
    tx.execute("DROP TABLE event_texts")
    for statement in statements(SCHEMA):  # v6's indexes and triggers
        if "event_texts" not in statement:
            tx.execute(statement)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _pg_state.get("skipped"):
        terminalreporter.write_line(
            f"!!! {_pg_state['skipped']} PostgreSQL test(s) SKIPPED: {_pg_state['error']} !!!\n"
            f"!!! Start PostgreSQL or set MLEVENTS_TEST_PG_URL; CI runs them. !!!",
            red=True,
            bold=True,
        )


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose store lives in a schema of its own, dropped afterwards."""
    require_pg()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}schema={schema}"
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of a fresh, empty store: once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[..., es.EventStore]]:
    """Open more stores on the same database (other registry, clock, validation...)."""
    opened: list[es.EventStore] = []

    def make(**options: Any) -> es.EventStore:
        store = es.connect(store_url, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., es.EventStore]) -> es.EventStore:
    return make_store()


# -- the archive (PostgreSQL; docs/archive.md) ----------------------------------------------
@pytest.fixture
def archive_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The artifact store's folder ($MLEVENTS_ARTIFACTS), where archives are written."""
    root = tmp_path / "artifacts"
    monkeypatch.setenv("MLEVENTS_ARTIFACTS", str(root))
    return root


@pytest.fixture
def tiny(
    pg_schema_url: str, archive_artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[es.EventStore]:
    """A PostgreSQL store of partitions of the test module's SIZE positions, not validating
    payloads, archiving into `archive_artifacts`."""
    with es.connect(
        pg_schema_url, partition_size=request.module.SIZE, validate=False
    ) as store:
        yield store
