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


def pg_pages_touched(url: str, after: int, types: list[str] | None) -> int:
    base, _, schema = url.partition("?schema=")
    query, params = postgres.page_query(after, types, None, 1000)
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
