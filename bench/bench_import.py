"""Benchmark of bulk import (`store.import_events`, docs/import.md) against a raw load of the
very same rows: COPY on PostgreSQL, batched INSERTs on SQLite (same batches, one transaction
each, same triggers and indexes). The raw load writes rows the import produced before (ids,
versions, hashes and all), so it measures only the database; the import also checks,
encodes, hashes, assigns versions, skips recorded ids and (PostgreSQL) takes the in-flight
marker. A third case measures the floor under any import that checks and hashes what it
writes, as the store must: the raw load plus only the catalog's validation and JSON encoding
of each payload and the SHA-256 content and chain hashes of each event (no ids derived,
nothing looked up or placed). Each case runs on a fresh store, interleaved, `--repeats`
times; the table shows medians. Progress goes to stderr, the table to stdout.

    .venv/bin/python bench/bench_import.py                 # 50,000 events, both backends
    .venv/bin/python bench/bench_import.py --backend sqlite --events 200000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
from bench_store import DEFAULT_PG_URL, make_payloads

import event_sourcing as es
from event_sourcing.integrity.hashing import GENESIS, append_hashes, fold_chain
from event_sourcing.stores import sqlite_schema
from event_sourcing.stores.import_readers import read_records
from event_sourcing.stores.imports import DEFAULT_BATCH_SIZE, ImportRecord
from event_sourcing.stores.postgres_append import WRITTEN
from event_sourcing.stores.recorder import EventRow
from event_sourcing.stores.values import encode_serialized

STREAMS = 50


def make_records(events: int) -> list[ImportRecord]:
    """Training logs: `STREAMS` runs one after another, a training_progress event per step."""
    payloads = make_payloads(1000)
    per_stream = max(1, events // STREAMS)
    return [
        ImportRecord(f"line {n + 1}", n + 1, f"run-{n // per_stream}", "training_progress",
                     {**payloads[n % 1000], "step": n % per_stream})
        for n in range(events)
    ]


def write_json_lines(records: list[ImportRecord], path: Path) -> None:
    with path.open("wb") as out:
        for record in records:
            out.write(orjson.dumps({"stream_id": record.stream_id, "type": record.event_type,
                                    "payload": record.payload}) + b"\n")


# The store's own INSERT, correlation and causation ids and occurred_at bound (the rows read
# back hold them)
_SQLITE_INSERT = sqlite_schema.INSERT[True, True, True]


class Backend:
    """Fresh stores of one backend, and the raw load of rows read back from one."""

    def __init__(self, name: str, pg_url: str, folder: Path) -> None:
        self.name, self.pg_url, self.folder = name, pg_url, folder
        self.schemas: list[str] = []

    def fresh(self) -> es.EventStore:
        if self.name == "sqlite":
            return es.connect(f"sqlite:///{self.folder / uuid.uuid4().hex}.db")
        schema = f"bench_import_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        separator = "&" if "?" in self.pg_url else "?"
        return es.connect(f"{self.pg_url}{separator}schema={schema}")

    def rows(self, store: es.EventStore) -> list[tuple[Any, ...]]:
        """The store's rows as written (the backend's own column list), in position order."""
        if self.name == "sqlite":
            columns = _SQLITE_INSERT.split("(")[1].split(")")[0]
        else:
            columns = WRITTEN.replace("payload, metadata", "payload::text, "
                                                "metadata::text").replace("id,", "id::text,", 1)
        return store.recorder.query(f"SELECT {columns} FROM event_store ORDER BY position")

    def raw_load(self, store: es.EventStore, rows: list[tuple[Any, ...]], batch: int) -> None:
        recorder: Any = store.recorder
        for start in range(0, len(rows), batch):
            if self.name == "sqlite":
                with recorder._write() as connection:
                    connection.executemany(_SQLITE_INSERT, rows[start:start + batch])
                continue
            with recorder._connections.transaction("raw COPY") as connection, \
                    connection.cursor().copy(
                        f"COPY event_store ({WRITTEN}) FROM STDIN"
                    ) as copy:
                for row in rows[start:start + batch]:
                    copy.write_row(row)

    def floor_load(
        self, store: es.EventStore, records: list[ImportRecord], ids: list[str],
        rows: list[tuple[Any, ...]], batch: int,
    ) -> None:
        """The raw load, each batch's events first validated and encoded by the catalog and
        hashed (content and chain), as the store must before it writes them."""
        encode = store.registry.encode
        for start in range(0, len(rows), batch):
            gc.disable()  # as the store does while it encodes a batch (batches.encode_batch)
            encoded = []
            for event_id, record in zip(ids[start:start + batch], records[start:start + batch],
                                        strict=True):
                version, payload = encode(record.event_type, record.payload)
                payload_json, _, value, canonical = encode_serialized(payload, "payload")
                encoded.append(EventRow(event_id, record.event_type, version, payload_json,
                                        "{}", value, canonical))
            contents = append_hashes(encoded, records[start].stream_id,
                                     "2026-12-02T00:00:00.000000+00:00", None, None,
                                     canonical=self.name == "postgresql")[0]
            fold_chain(GENESIS, 0, "default", contents)
            gc.enable()
            self.raw_load(store, rows[start:start + batch], batch)

    def drop(self) -> None:
        if self.schemas:
            with psycopg.connect(self.pg_url, autocommit=True) as connection:
                for schema in self.schemas:
                    connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def append_all(store: es.EventStore, records: list[ImportRecord], batch: int) -> None:
    """The same events through the append path: each stream's events, `batch` at a time."""
    streams: dict[str, list[es.NewEvent]] = {}
    for record in records:
        streams.setdefault(record.stream_id, []).append(
            es.NewEvent(record.event_type, record.payload)
        )
    for stream_id, events in streams.items():
        for start in range(0, len(events), batch):
            store.append(stream_id, events[start:start + batch])


def _timed(action: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(backend: Backend, events: int, repeats: int, batch: int) -> list[list[str]]:
    records = make_records(events)
    path = backend.folder / "events.jsonl"
    write_json_lines(records, path)
    first = backend.fresh()
    first.import_events(records, batch_size=batch)
    rows = backend.rows(first)
    first.close()
    ids = [str(uuid.uuid4()) for _ in records]
    cases: dict[str, Callable[[es.EventStore], object]] = {
        "raw load of the same rows": lambda store: backend.raw_load(store, rows, batch),
        "floor: raw load + validate, encode, hash": lambda store: backend.floor_load(
            store, records, ids, rows, batch
        ),
        "import_events (parsed records)": lambda store: store.import_events(
            records, batch_size=batch
        ),
        "import_events (from the .jsonl file)": lambda store: store.import_events(
            read_records(path), batch_size=batch
        ),
        "re-import (all recorded: skipped)": None,  # type: ignore[dict-item]
        "store.append, a batch per stream (comparison)": lambda store: append_all(
            store, records, batch
        ),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for repeat in range(repeats):
        for name, case in cases.items():
            print(f"{backend.name}: {name} ({repeat + 1}/{repeats})", file=sys.stderr)
            store = backend.fresh()
            try:
                if case is None:  # the same file again on a store holding it all
                    store.import_events(records, batch_size=batch)
                    times[name].append(_timed(lambda s=store: s.import_events(
                        records, batch_size=batch)))
                    continue
                times[name].append(_timed(lambda s=store, c=case: c(s)))
                if repeat == 0 and name.startswith("import"):
                    assert not store.verify().problems
                    assert store.head_position() >= events
            finally:
                store.close()
    raw = statistics.median(wall for wall, _ in times["raw load of the same rows"])
    table = []
    for name, measured in times.items():
        wall = statistics.median(w for w, _ in measured)
        cpu = statistics.median(c for _, c in measured)
        table.append([
            backend.name, name, f"{events / wall:,.0f}", f"{raw / wall:.2f}x",
            f"{cpu / events * 1e6:.1f}",
        ])
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    args = parser.parse_args(argv)
    names = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            backend = Backend(name, args.pg_url, Path(folder))
            try:
                table += measure(backend, args.events, args.repeats, args.batch_size)
            finally:
                backend.drop()
    header = ["backend", "case", "events/s", "vs raw", "client CPU us/event"]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    print(f"{args.events:,} events in {STREAMS} streams, batches of {args.batch_size:,}; "
          f"medians of {args.repeats} (wall clock; CPU is this process's)")
    for row in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
