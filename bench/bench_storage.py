"""Storage benchmark: bytes on disk per event, against the bytes of what the events hold.

Grows the realistic ML log of bench_scale.py (training runs of 1,200 progress steps, dataset
versions, deployments, predictions with feedback) on each backend, then prints, per backend,
the bytes per event of the log (event_store with its indexes, plus streams and, on SQLite,
event_texts), the payload and payload+metadata bytes per event (compact JSON of what
read_all returns: the same on both backends), their ratios, and each index's size with the
query that needs it. Every append carries the metadata a Dagster asset's `emit` adds (run
id, job, asset key, partition).

SQLite: every b-tree's pages from the `dbstat` table after a WAL checkpoint (the file is
the sum of them plus the schema page). PostgreSQL: pg_total_relation_size (heap, TOAST,
indexes) of event_store and streams after VACUUM, each index's pg_total_relation_size
(a block range index has a free space map).

Run: `make bench-storage` or `.venv/bin/python bench/bench_storage.py [--events 50000]
[--backend sqlite]`.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg

import event_sourcing as es

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import DEFAULT_PG_URL, Log, generate

# The query each index of event_store exists for (EXPLAIN QUERY PLAN names the index).
INDEX_QUERIES = {
    "table": "the rows (SQLite: the b-tree keyed by position that read_all pages walk; "
    "PostgreSQL: heap and TOAST)",
    "position": "read_all pages: position > ? ORDER BY position",
    "id": "idempotent retries and get_event / read_ids: id IN (...)",
    "stream_version": "read_stream and the append's head: stream_id = ? AND version ...",
    "idx_event_store_type": "read_all(event_types=...): event_type = ? AND position > ?",
    "idx_event_store_correlation": "read_correlated: correlation_id = ?",
    "idx_event_store_occurred": "read_as_of: the dated events (occurred_at given), "
    "occurred_at <= ? ORDER BY occurred_at, position; holds only those",
    "idx_event_store_time": "PostgreSQL's read_all(until=...) before schema v5 (SQLite "
    "filters the positions it scans)",
    "idx_event_store_time_range": "PostgreSQL's read_all(until=...): a block range index, a "
    "few pages for any size of log (SQLite filters the positions it scans)",
    "streams": "the stream's type on its first append, `mlevents status`",
    "event_texts": "SQLite: each stream type, event type and metadata text once (with its "
    "unique index), numbered in the rows (stores.sqlite_texts)",
    "event_keys": "PostgreSQL: each event's id, stream, version and position, one table "
    "across all partitions (its indexes are `id` and `stream_version`; docs/partitions.md)",
}
# A query that should use each SQLite index, to show the plan does.
SQLITE_PLANS = {
    "id": "SELECT position FROM event_store WHERE id = ?",
    "stream_version": "SELECT position FROM event_store WHERE stream_id = ? AND version >= ? "
    "ORDER BY version",
    "idx_event_store_type": "SELECT position FROM event_store WHERE event_type = ? AND "
    "position > ? ORDER BY position",
    "idx_event_store_correlation": "SELECT position FROM event_store WHERE correlation_id = ?",
    "idx_event_store_occurred": "SELECT position FROM event_store WHERE occurred_at IS NOT NULL "
    "AND occurred_at <= ? ORDER BY occurred_at, position",
}


@dataclass
class Sizes:
    events: int
    payload: int  # bytes of all payloads (compact JSON)
    metadata: int
    total: int  # event_store with its indexes, and streams
    parts: dict[str, int] = field(default_factory=dict)  # b-tree / relation -> bytes
    plans: dict[str, str] = field(default_factory=dict)  # index -> plan detail (SQLite)


def content_bytes(store: es.EventStore) -> tuple[int, int, int]:
    """(events, payload bytes, metadata bytes) of the log as read_all returns it."""
    events = payload = metadata = 0
    for event in store.read_all():
        events += 1
        payload += len(orjson.dumps(event.payload))
        metadata += len(orjson.dumps(event.metadata))
    return events, payload, metadata


def _sqlite_name(name: str) -> str:
    """dbstat's b-tree name as an INDEX_QUERIES key (SQLite names UNIQUE constraints'
    indexes sqlite_autoindex_event_store_N, in the order of the constraints)."""
    return {
        "event_store": "table",
        "sqlite_autoindex_event_store_1": "id",
        "sqlite_autoindex_event_store_2": "stream_version",
    }.get(name, name)


def sqlite_sizes(path: Path, store: es.EventStore) -> Sizes:
    events, payload, metadata = content_bytes(store)
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        parts: dict[str, int] = {}
        for name, table, size in connection.execute(
            "SELECT name, tbl_name, sum(pgsize) FROM dbstat JOIN sqlite_master USING (name) "
            "WHERE tbl_name IN ('event_store', 'streams', 'event_texts') GROUP BY name"
        ):
            part = table if table in {"streams", "event_texts"} else _sqlite_name(name)
            parts[part] = parts.get(part, 0) + size
        plans = {}
        for index, query in SQLITE_PLANS.items():
            marks = query.count("?")
            detail = " / ".join(
                row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {query}", [0] * marks)
            )
            plans[index] = detail
    finally:
        connection.close()
    return Sizes(events, payload, metadata, sum(parts.values()), parts, plans)


def postgres_sizes(url: str, schema: str, store: es.EventStore) -> Sizes:
    events, payload, metadata = content_bytes(store)
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("VACUUM ANALYZE event_store")
        conn.execute("VACUUM ANALYZE streams")
        conn.execute("VACUUM ANALYZE event_keys")
        parts: dict[str, int] = {}
        for name, size in conn.execute(
            # (every fork: a block range index has a free space map; a partitioned index is
            # the sum of its partitions')
            "SELECT c.relname, coalesce((SELECT sum(pg_total_relation_size(p.relid)) "
            "FROM pg_partition_tree(c.oid) AS p), pg_total_relation_size(c.oid)) "
            "FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = %s AND t.relname IN ('event_store', 'event_keys')",
            (schema,),
        ):
            parts[{"event_keys_pkey": "id",
                   "event_keys_stream_id_version_key": "stream_version",
                   "event_store_pkey": "position"}.get(name, name)] = int(size)
        row = conn.execute(
            "SELECT (SELECT sum(pg_table_size(p.relid)) FROM pg_partition_tree('event_store') "
            "AS p), pg_total_relation_size('streams'), pg_table_size('event_keys')"
        ).fetchone()
        assert row is not None
        parts["table"] = int(row[0])  # heap + TOAST
        parts["event_keys"] = int(row[2])
        parts["streams"] = int(row[1])
    return Sizes(events, payload, metadata, sum(parts.values()), parts)


class DagsterRunStore:
    """The store as assets write to it: every append carries the metadata
    EventStoreResource.emit adds inside a Dagster run (its run id, job, asset key,
    partition); a new run every 20 appends."""

    def __init__(self, store: es.EventStore) -> None:
        self.store = store
        self.appends = 0
        self.run_id = ""

    def head_position(self) -> int:
        return self.store.head_position()

    def append(self, stream_id: str, events: list[es.NewEvent], **options: Any) -> Any:
        if self.appends % 20 == 0:
            self.run_id = str(uuid.uuid4())
        self.appends += 1
        metadata = {
            "dagster_run_id": self.run_id, "dagster_job": "__ASSET_JOB",
            "asset_key": stream_id.partition(":")[0].partition("-")[0], "partition_key": None,
        }
        return self.store.append(stream_id, events, metadata=metadata, **options)


def measure(backend: str, events: int, pg_url: str) -> Sizes:
    tmp = tempfile.TemporaryDirectory(prefix="bench-storage-")
    schema = f"bench_storage_{uuid.uuid4().hex[:8]}"
    path = Path(tmp.name) / "events.db"
    url = f"sqlite:///{path}?synchronous=OFF" if backend == "sqlite" else (
        f"{pg_url}?schema={schema}"
    )
    try:
        with es.connect(url, validate=False) as store:
            generate(DagsterRunStore(store), Log(), events)  # type: ignore[arg-type]
            print(f"[{backend}] {store.head_position():,} events generated", file=sys.stderr)
            if backend == "sqlite":
                return sqlite_sizes(path, store)
            return postgres_sizes(pg_url, schema, store)
    finally:
        if backend == "postgresql":
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        tmp.cleanup()


def format_sizes(backend: str, sizes: Sizes) -> list[str]:
    n = sizes.events
    content = sizes.payload + sizes.metadata
    lines = [
        f"\n{backend}: {n:,} events",
        "",
        "| bytes per event | stored | payload | payload+metadata | stored / payload | "
        "stored / payload+metadata |",
        "|---|---|---|---|---|---|",
        f"| all | {sizes.total / n:,.0f} | {sizes.payload / n:,.0f} | {content / n:,.0f} | "
        f"{sizes.total / sizes.payload:.2f}x | {sizes.total / content:.2f}x |",
        "",
        "| b-tree / relation | bytes per event | share | needed by |",
        "|---|---|---|---|",
    ]
    for name, size in sorted(sizes.parts.items(), key=lambda item: -item[1]):
        need = INDEX_QUERIES.get(name, "")
        if name in sizes.plans:
            need += f" (plan: {sizes.plans[name]})"
        lines.append(f"| {name} | {size / n:,.0f} | {size / sizes.total:.0%} | {need} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000,
                        help="log size (default 50,000: about ten training cycles)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    lines = [f"bench-storage {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    for backend in backends:
        lines.extend(format_sizes(backend, measure(backend, args.events, args.pg_url)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
