"""Hard problem 6: a reader at the head of a big log does the work it does on an empty one.

No timings (they belong in bench/): each database's own plan says what a read touches.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

import event_sourcing as es
from event_sourcing.stores import postgres, sqlite

EVENTS = 20_000
TYPE_FILTERS: list[list[str] | None] = [None, ["tock"], ["never_written"]]


def fill(store: es.EventStore) -> int:
    for batch in range(EVENTS // 100):
        store.append(
            f"run-{batch}",
            [es.NewEvent("tick" if i % 2 else "tock", {"i": i, "pad": "x" * 200})
             for i in range(100)],
        )
    return store.head_position()


def pg_pages_touched(url: str, after: int, types: list[str] | None, limit: int = 1000) -> int:
    base, _, schema = url.partition("?schema=")
    query, params = postgres.page_query(after, types, None, limit)
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        row = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", params  # type: ignore[arg-type]
        ).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


@pytest.mark.parametrize("types", TYPE_FILTERS)
def test_postgres_read_at_head_costs_what_it_costs_on_an_empty_log(
    pg_schema_url: str, types: list[str] | None
) -> None:
    with es.connect(pg_schema_url, validate=False) as store:
        empty = pg_pages_touched(pg_schema_url, 0, types)
        head = fill(store)
        # Statistics are deliberately stale here (no ANALYZE): the plan must not depend on them.
        at_head = pg_pages_touched(pg_schema_url, head, types)
        assert list(store.read_all(after=head, event_types=types)) == []
    # 20,000 events fill hundreds of pages; a keyset seek touches a few index pages.
    assert at_head <= empty + 4, f"a read at the head touched {at_head} pages (empty: {empty})"


@pytest.mark.parametrize("types", TYPE_FILTERS)
def test_sqlite_read_at_head_is_an_index_seek(tmp_path: Path, types: list[str] | None) -> None:
    path = tmp_path / "events.db"
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        head = fill(store)
    query, params = sqlite.page_query(head, types, None, 1000)
    connection = sqlite3.connect(path)
    try:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    finally:
        connection.close()
    assert plan and all(step.startswith("SEARCH") for step in plan), plan


# Each page query the store runs, as (after, types); a reset cursor with a type filter is the
# shape whose generic plan walks the position index and filters every row.
PAGE_SHAPES: list[tuple[str, list[str] | None]] = [
    ("head", None), ("head", ["rare"]), ("reset", None), ("reset", ["rare"]),
    ("reset", ["rare", "never_written"]), ("reset", ["never_written"]),
]


def fill_skewed(store: es.EventStore) -> int:
    """Like an ML log: one common type (training progress), one rare (deployments)."""
    for batch in range(EVENTS // 100):
        store.append(
            f"run-{batch}",
            [es.NewEvent("rare" if i == 0 else "tick", {"i": i, "pad": "x" * 200})
             for i in range(100)],
        )
    return store.head_position()


def test_postgres_page_queries_keep_custom_plans_on_a_long_lived_connection(
    pg_schema_url: str,
) -> None:
    """psycopg prepares a statement run five times on one connection, and PostgreSQL may then
    switch it to a generic plan. Run every page query shape ten times on ONE connection (the
    way a daemon's long-lived store does), then ask that connection which plans it used."""
    base, _, schema = pg_schema_url.partition("?schema=")
    with es.connect(pg_schema_url, validate=False) as store:
        head = fill_skewed(store)
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ANALYZE event_store")  # as autovacuum would have, on a live store
    recorder = postgres.PostgresRecorder(base, schema=schema, pool_size=1)
    try:
        for where, types in PAGE_SHAPES:
            after = head if where == "head" else 0
            for _ in range(10):
                recorder.read_page(after, types, None, 100)
        # The pool's only connection: PostgreSQL counts, per prepared statement of this
        # session, the plans it ran.
        plans = recorder._connections.read(
            "prepared statements",
            lambda connection: connection.execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '%FROM event_store WHERE position >%'"
            ).fetchall(),
        )
    finally:
        recorder.close()
    generic = [(statement, count) for statement, count, _ in plans if count]
    assert generic == [], f"page queries ran generic plans: {generic}"


@pytest.mark.parametrize("types", [["rare"], ["rare", "never_written"]])
def test_postgres_rare_types_from_a_reset_cursor_are_seeks(
    pg_schema_url: str, types: list[str]
) -> None:
    """A sensor reading a rare type from position 0 seeks the type index (one ordered seek
    per type, merged), instead of walking the log in position order filtering every row."""
    base, _, schema = pg_schema_url.partition("?schema=")
    with es.connect(pg_schema_url, validate=False) as store:
        fill_skewed(store)
        assert len(list(store.read_all(event_types=types, limit=10))) == 10
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ANALYZE event_store")
    # 10 rare events, one per 100: a seek reads ~10 heap pages and a few index pages; a
    # walk in position order reads ~1,000 rows (~45 pages).
    touched = pg_pages_touched(pg_schema_url, 0, types, limit=10)
    assert touched <= 25, f"reading 10 rare events touched {touched} pages"


def test_sqlite_type_filters_are_index_seeks(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with es.connect(f"sqlite:///{path}", validate=False) as store:
        fill_skewed(store)
    query, params = sqlite.page_query(0, ["rare", "never_written"], None, 10)
    connection = sqlite3.connect(path)
    try:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", params)]
    finally:
        connection.close()
    scans = [step for step in plan if step.startswith(("SEARCH", "SCAN"))]
    assert scans and all("idx_event_store_type" in step for step in scans), plan
