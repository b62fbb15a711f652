"""Store benchmark: mlevents vs the `eventsourcing` library vs raw SQL, side by side.

Owns the four cases (1 event/tx, 100 events/tx, read_all, concurrent writers) on SQLite and
PostgreSQL, and the table of events/s with ratios to raw SQL and to eventsourcing.

Run: `make bench` or `.venv/bin/python bench/bench_store.py [--quick] [--backend sqlite]`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from event_sourcing.events import new_event_id
from event_sourcing.stores import postgres_schema, sqlite_schema

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")
IMPLEMENTATIONS = ("mlevents", "eventsourcing", "raw")
# Not in the default set: mlevents with an unregistered type and validate=False, to show
# what pydantic validation of the payload costs.
OPTIONAL_IMPLEMENTATIONS = ("mlevents-novalidate",)
CASES = ("append 1/tx", "append 100/tx", "read_all", "concurrent 1/tx")
EVENT_TYPE = "training_progress"
EVENTS_PER_STREAM = 1000  # writers move to a fresh stream (a new "run") every 1000 events
READ_PAGE = 2000  # same page size as EventStore.read_all, for every implementation
BATCH = 100


# -- payloads --------------------------------------------------------------------------------


def make_payloads(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` distinct training_progress payloads of about 300 bytes of JSON each."""
    rng = random.Random(seed)
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC).timestamp()
    payloads = []
    for step in range(count):
        payloads.append(
            {
                "step": step,
                "loss": round(rng.uniform(0.01, 3.0), 8),
                "learning_rate": round(rng.uniform(1e-5, 1e-3), 8),
                "timestamp": datetime.fromtimestamp(stamp + step, UTC).isoformat(
                    timespec="microseconds"
                ),
                "metrics": {
                    "accuracy": round(rng.random(), 8),
                    "val_loss": round(rng.uniform(0.01, 3.0), 8),
                    "val_accuracy": round(rng.random(), 8),
                    "grad_norm": round(rng.uniform(0.1, 10.0), 8),
                    "throughput": round(rng.uniform(100, 5000), 4),
                },
                "resources": {
                    "gpu_memory": round(rng.uniform(1000, 40000), 2),
                    "cpu_usage": round(rng.uniform(5, 400), 2),
                },
            }
        )
    return payloads


PAYLOAD_POOL = 1000


# -- where a run's data lives ----------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A fresh database for one measurement: a SQLite file, or a PostgreSQL schema."""

    backend: str
    sqlite_path: str = ""
    pg_url: str = ""  # libpq URL without the schema option
    schema: str = ""

    @property
    def mlevents_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        parts = urlsplit(self.pg_url)
        query = dict(parse_qsl(parts.query))
        query["schema"] = self.schema
        return urlunsplit(parts._replace(query=urlencode(query)))


def _pg_connect(url: str, schema: str | None = None, autocommit: bool = False) -> Any:
    import psycopg

    options = f"-c search_path={schema} -c timezone=UTC" if schema else "-c timezone=UTC"
    return psycopg.connect(url, autocommit=autocommit, options=options, connect_timeout=10)


@contextmanager
def fresh_location(backend: str, workdir: Path, pg_url: str) -> Iterator[Location]:
    """A new, empty database for one measurement; removed afterwards."""
    if backend == "sqlite":
        path = workdir / f"bench_{uuid.uuid4().hex[:12]}.db"
        try:
            yield Location("sqlite", sqlite_path=str(path))
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            # Let the file system finish with this run's files (writeback, freeing blocks)
            # now, not during the next implementation's measurement.
            os.sync()
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with _pg_connect(pg_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Location("postgresql", pg_url=pg_url, schema=schema)
    finally:
        with _pg_connect(pg_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- implementations -------------------------------------------------------------------------


class Writer(Protocol):
    def append(self, payloads: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class Implementation(Protocol):
    name: str

    def prepare(self, location: Location) -> None:
        """Create the tables (once, in the parent process)."""

    def writer(self, location: Location, writer_id: int) -> Writer: ...

    def read_all(self, location: Location) -> int:
        """Read every event in global order, decoded; return how many."""


class _Streams:
    """Stream bookkeeping every writer does: a stream per 1000 events, its next version."""

    def __init__(self, writer_id: int) -> None:
        self.writer_id = writer_id
        self.run = 0
        self.version = 0
        self.stream_id = self._name()

    def _name(self) -> str:
        return f"run-{self.writer_id}-{self.run}-{uuid.uuid4().hex[:8]}"

    def advance(self, count: int) -> int:
        """Make room for `count` events; return the stream's version before them."""
        if self.version + count > EVENTS_PER_STREAM and self.version:
            self.run += 1
            self.version = 0
            self.stream_id = self._name()
        before = self.version
        self.version += count
        return before


# mlevents --------------------------------------------------------------------------------


class _MlWriter:
    def __init__(self, location: Location, writer_id: int, validate: bool) -> None:
        import event_sourcing as es

        self._es = es
        self._store = es.connect(location.mlevents_url, validate=validate)
        self._type = EVENT_TYPE if validate else "bench_progress"
        self._streams = _Streams(writer_id)

    def append(self, payloads: Sequence[dict[str, Any]]) -> None:
        before = self._streams.advance(len(payloads))
        new_event = self._es.NewEvent
        self._store.append(
            self._streams.stream_id,
            [new_event(self._type, payload) for payload in payloads],
            expected_version=before,
            stream_type="training_run",
        )

    def close(self) -> None:
        self._store.close()


class MlEvents:
    """mlevents through its public API: es.connect, store.append, store.read_all."""

    def __init__(self, validate: bool = True) -> None:
        self.validate = validate
        self.name = "mlevents" if validate else "mlevents-novalidate"

    def prepare(self, location: Location) -> None:
        import event_sourcing as es

        es.connect(location.mlevents_url).close()

    def writer(self, location: Location, writer_id: int) -> Writer:
        return _MlWriter(location, writer_id, self.validate)

    def read_all(self, location: Location) -> int:
        import event_sourcing as es

        count = 0
        with es.connect(location.mlevents_url, validate=self.validate) as store:
            for _event in store.read_all():
                count += 1
        return count


# eventsourcing -----------------------------------------------------------------------------

_ES_TOPIC = "bench_store:TrainingProgress"


def _es_recorder(location: Location) -> tuple[Any, Any]:
    """(datastore, application recorder) of the eventsourcing library for `location`."""
    if location.backend == "sqlite":
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        sqlite_store = SQLiteDatastore(location.sqlite_path)
        return sqlite_store, SQLiteApplicationRecorder(sqlite_store)
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    parts = urlsplit(location.pg_url)
    pg_store = PostgresDatastore(
        dbname=parts.path.lstrip("/") or "postgres",
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or "",
        schema=location.schema,
    )
    return pg_store, PostgresApplicationRecorder(pg_store)


class _EsWriter:
    def __init__(self, location: Location) -> None:
        from eventsourcing.persistence import StoredEvent

        self._stored_event = StoredEvent
        self._datastore, self._recorder = _es_recorder(location)
        self._originator = uuid.uuid4()
        self._version = 0

    def append(self, payloads: Sequence[dict[str, Any]]) -> None:
        if self._version + len(payloads) > EVENTS_PER_STREAM and self._version:
            self._originator, self._version = uuid.uuid4(), 0
        stored = self._stored_event
        start = self._version + 1
        self._recorder.insert_events(
            [
                stored(self._originator, start + n, _ES_TOPIC, json.dumps(payload).encode())
                for n, payload in enumerate(payloads)
            ]
        )
        self._version += len(payloads)

    def close(self) -> None:
        self._datastore.close()


class EventSourcingLib:
    """The `eventsourcing` library's application recorders, fed StoredEvent objects."""

    name = "eventsourcing"

    def prepare(self, location: Location) -> None:
        datastore, recorder = _es_recorder(location)
        try:
            recorder.create_table()
        finally:
            datastore.close()

    def writer(self, location: Location, writer_id: int) -> Writer:
        return _EsWriter(location)

    def read_all(self, location: Location) -> int:
        datastore, recorder = _es_recorder(location)
        count, start = 0, 0
        try:
            while True:
                page = recorder.select_notifications(
                    start, READ_PAGE, inclusive_of_start=False
                )
                for notification in page:
                    json.loads(notification.state)
                count += len(page)
                if len(page) < READ_PAGE:
                    return count
                start = page[-1].id
        finally:
            datastore.close()


# raw SQL -----------------------------------------------------------------------------------

# The store's own DDL up to its triggers and functions: the same tables, columns,
# constraints and indexes, with the position from a sequence / INTEGER PRIMARY KEY at insert.
_RAW_SQLITE_SCHEMA = sqlite_schema.SCHEMA.split("CREATE TRIGGER")[0]
_RAW_PG_SCHEMA = postgres_schema.SCHEMA.split("CREATE OR REPLACE FUNCTION")[0] + (
    # (the store's trigger assigns positions; raw SQL takes them from a column default)
    "ALTER TABLE event_store ALTER COLUMN position SET DEFAULT nextval('event_position_seq');"
    # one partition holding every position, with the unique indexes the store keeps in
    # event_keys (docs/partitions.md)
    "CREATE TABLE event_store_all PARTITION OF event_store "
    "FOR VALUES FROM (MINVALUE) TO (MAXVALUE);"
    "CREATE UNIQUE INDEX ON event_store_all (id);"
    "CREATE UNIQUE INDEX ON event_store_all (stream_id, version);"
)

_RAW_INSERT = (
    "INSERT INTO event_store (id, stream_id, stream_type, version, event_type, schema_version,"
    " payload, metadata, created_at, correlation_id, causation_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RAW_SELECT = (
    "SELECT id, stream_id, stream_type, version, position, event_type, schema_version, "
    "payload, metadata, created_at, correlation_id, causation_id FROM event_store "
    "WHERE position > ? ORDER BY position LIMIT ?"
)


def _new_id_bytes() -> bytes:
    return sqlite_schema.id_value(new_event_id())


def _sqlite_connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 30000")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    return connection


class _RawWriter:
    """Does the per-event work any writer must (an id of the same UUIDv7 scheme as the
    store's, json.dumps of payload and metadata, stream version), then one INSERT batch
    (PostgreSQL: a single event is one autocommit INSERT, a batch one pipelined
    transaction); no ordering guarantee."""

    def __init__(self, location: Location, writer_id: int) -> None:
        self._sqlite = location.backend == "sqlite"
        self._connection: Any
        if self._sqlite:
            self._connection = _sqlite_connect(location.sqlite_path)
            self._insert = _RAW_INSERT
        else:
            self._connection = _pg_connect(location.pg_url, location.schema, autocommit=True)
            self._insert = _RAW_INSERT.replace("?", "%s")
        self._streams = _Streams(writer_id)

    def append(self, payloads: Sequence[dict[str, Any]]) -> None:
        before = self._streams.advance(len(payloads))
        now = datetime.now(UTC)
        # SQLite stores ids as their 16 bytes and times as integer microseconds.
        created = sqlite_schema.time_value(now) if self._sqlite else now
        new_id = _new_id_bytes if self._sqlite else new_event_id
        stream_id = self._streams.stream_id
        rows = [
            (
                new_id(), stream_id, "training_run", before + n, EVENT_TYPE, 1,
                json.dumps(payload, separators=(",", ":")), json.dumps({}), created, None, None,
            )
            for n, payload in enumerate(payloads, start=1)
        ]
        if self._sqlite:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                if len(rows) == 1:
                    connection.execute(self._insert, rows[0])
                else:
                    connection.executemany(self._insert, rows)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return
        if len(rows) == 1:
            self._connection.execute(self._insert, rows[0])
            return
        # psycopg 3 pipelines executemany: one round trip for the whole batch.
        with self._connection.transaction(), self._connection.cursor() as cursor:
            cursor.executemany(self._insert, rows)

    def close(self) -> None:
        self._connection.close()


class RawSql:
    """sqlite3 / psycopg 3 straight into a table shaped like the store's event_store."""

    name = "raw"

    def prepare(self, location: Location) -> None:
        if location.backend == "sqlite":
            connection = _sqlite_connect(location.sqlite_path)
            try:
                connection.executescript(_RAW_SQLITE_SCHEMA)
            finally:
                connection.close()
            return
        with _pg_connect(location.pg_url, location.schema, autocommit=True) as connection:
            connection.execute(_RAW_PG_SCHEMA)

    def writer(self, location: Location, writer_id: int) -> Writer:
        return _RawWriter(location, writer_id)

    def read_all(self, location: Location) -> int:
        """Keyset pages like the store's; JSON and timestamps decoded into tuples."""
        count, after = 0, 0
        if location.backend == "sqlite":
            connection = _sqlite_connect(location.sqlite_path)
            # (ids are stored as 16 bytes, times as integer microseconds)
            loads, parse, text = json.loads, sqlite_schema.time_of, sqlite_schema.id_text
            try:
                while True:
                    rows = connection.execute(_RAW_SELECT, (after, READ_PAGE)).fetchall()
                    decoded = [
                        (text(row[0]), *row[1:7], loads(row[7]), loads(row[8]), parse(row[9]),
                         *row[10:])
                        for row in rows
                    ]
                    count += len(decoded)
                    if len(rows) < READ_PAGE:
                        return count
                    after = rows[-1][4]
            finally:
                connection.close()
        # psycopg decodes jsonb to dicts and timestamptz to datetimes itself.
        with _pg_connect(location.pg_url, location.schema, autocommit=True) as connection:
            query = _RAW_SELECT.replace("?", "%s").replace("SELECT id,", "SELECT id::text,")
            while True:
                rows = connection.execute(query, (after, READ_PAGE)).fetchall()
                count += len(rows)
                if len(rows) < READ_PAGE:
                    return count
                after = rows[-1][4]


def implementation(name: str) -> Implementation:
    factories: dict[str, Callable[[], Implementation]] = {
        "mlevents": MlEvents,
        "mlevents-novalidate": lambda: MlEvents(validate=False),
        "eventsourcing": EventSourcingLib,
        "raw": RawSql,
    }
    try:
        return factories[name]()
    except KeyError:
        raise SystemExit(
            f"unknown implementation {name!r}; choose from {', '.join(factories)}"
        ) from None


# -- cases -----------------------------------------------------------------------------------


@dataclass
class Settings:
    """Sizes and bounds of one benchmark run."""

    events: int = 100_000  # appended by the 100/tx case and read by read_all
    single_events: int = 5_000  # cap for the 1/tx case, and per writer in the concurrent one
    seconds: float = 5.0  # time cap for the 1/tx and concurrent cases
    max_seconds: float = 120.0  # time cap for any single timed loop (batch append, populate)
    writers: int = 4
    repeats: int = 5
    backends: tuple[str, ...] = BACKENDS
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    cases: tuple[str, ...] = CASES
    pg_url: str = DEFAULT_PG_URL
    payloads: list[dict[str, Any]] = field(default_factory=lambda: make_payloads(PAYLOAD_POOL))


def _write(
    writer: Writer, payloads: list[dict[str, Any]], batch: int, max_events: int, seconds: float
) -> tuple[int, float]:
    """Append batches until `max_events` or `seconds` run out; return (events, elapsed)."""
    pool = len(payloads)
    written = 0
    start = time.perf_counter()
    deadline = start + seconds
    while written < max_events and time.perf_counter() < deadline:
        size = min(batch, max_events - written)
        offset = written % pool
        chunk = payloads[offset : offset + size]
        if len(chunk) < size:
            chunk = chunk + payloads[: size - len(chunk)]
        writer.append(chunk)
        written += size
    return written, time.perf_counter() - start


def _timed_append(impl: Implementation, location: Location, s: Settings, batch: int) -> float:
    impl.prepare(location)
    writer = impl.writer(location, 0)
    try:
        if batch == 1:
            written, elapsed = _write(writer, s.payloads, 1, s.single_events, s.seconds)
        else:
            written, elapsed = _write(writer, s.payloads, batch, s.events, s.max_seconds)
    finally:
        writer.close()
    return written / elapsed


def _concurrent_worker(
    impl_name: str,
    location: Location,
    writer_id: int,
    max_events: int,
    seconds: float,
    barrier: Any,
    results: Any,
) -> None:
    """One writer process: connect, wait for the others, append 1 event/tx until done."""
    try:
        writer = implementation(impl_name).writer(location, writer_id)
        payloads = make_payloads(PAYLOAD_POOL, seed=writer_id)
        writer.append(payloads[:1])  # warm up the connection outside the timed window
        barrier.wait(timeout=120)
        start = time.monotonic()
        written, _ = _write(writer, payloads, 1, max_events, seconds)
        end = time.monotonic()
        writer.close()
        results.put((writer_id, written, start, end, None))
    except BaseException as exc:  # report, so the parent never waits for a dead writer
        results.put((writer_id, 0, 0.0, 0.0, f"{type(exc).__name__}: {exc}"))


def _timed_concurrent(impl: Implementation, location: Location, s: Settings) -> float:
    impl.prepare(location)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(s.writers)
    results = context.Queue()
    processes = [
        context.Process(
            target=_concurrent_worker,
            args=(impl.name, location, n, s.single_events, s.seconds, barrier, results),
            daemon=True,
        )
        for n in range(s.writers)
    ]
    for process in processes:
        process.start()
    outcomes = []
    try:
        for _ in processes:
            outcomes.append(results.get(timeout=s.seconds + 180))
    except queue.Empty:
        raise RuntimeError(f"{impl.name}: a concurrent writer never reported back") from None
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    errors = [error for *_, error in outcomes if error]
    if errors:
        raise RuntimeError(f"{impl.name}: concurrent writer failed: {errors[0]}")
    total = sum(written for _, written, *_ in outcomes)
    elapsed = max(end for *_, end, _ in outcomes) - min(start for _, _, start, *_ in outcomes)
    return total / elapsed


def _populate(impl: Implementation, location: Location, s: Settings) -> None:
    impl.prepare(location)
    writer = impl.writer(location, 0)
    try:
        written, _ = _write(writer, s.payloads, BATCH, s.events, s.max_seconds)
    finally:
        writer.close()
    if written < s.events:
        raise RuntimeError(
            f"{impl.name}: populating {s.events} events hit the {s.max_seconds}s cap "
            f"after {written}; raise --max-seconds or lower --events"
        )


@dataclass
class Result:
    case: str
    backend: str
    implementation: str
    rates: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(s: Settings, workdir: Path | None = None) -> list[Result]:
    """Every case x backend x implementation, `s.repeats` times each, implementations
    interleaved per repeat so background load hits them alike."""
    impls = [implementation(name) for name in s.implementations]
    results: dict[tuple[str, str, str], Result] = {}

    def record(case: str, backend: str, impl: Implementation, rate: float) -> None:
        key = (case, backend, impl.name)
        results.setdefault(key, Result(case, backend, impl.name, [])).rates.append(rate)
        _progress(f"  {case:<16} {backend:<10} {impl.name:<20} {rate:>12,.0f} events/s")

    with tempfile.TemporaryDirectory(prefix="mlevents-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        for backend in s.backends:
            for case in s.cases:
                if case == "read_all":
                    # Populate once per implementation (untimed), then time each read.
                    for impl in impls:
                        with fresh_location(backend, root, s.pg_url) as location:
                            _populate(impl, location, s)
                            for _ in range(s.repeats):
                                start = time.perf_counter()
                                count = impl.read_all(location)
                                elapsed = time.perf_counter() - start
                                if count != s.events:
                                    raise RuntimeError(
                                        f"{impl.name} read {count} events, expected {s.events}"
                                    )
                                record(case, backend, impl, count / elapsed)
                    continue
                for _ in range(s.repeats):
                    for impl in impls:
                        with fresh_location(backend, root, s.pg_url) as location:
                            if case == "append 1/tx":
                                rate = _timed_append(impl, location, s, 1)
                            elif case == "append 100/tx":
                                rate = _timed_append(impl, location, s, BATCH)
                            else:
                                rate = _timed_concurrent(impl, location, s)
                        record(case, backend, impl, rate)
    order = {name: n for n, name in enumerate(s.implementations)}
    return sorted(
        results.values(),
        key=lambda r: (BACKENDS.index(r.backend), CASES.index(r.case), order[r.implementation]),
    )


def format_table(results: Sequence[Result]) -> str:
    by_key = {(r.case, r.backend, r.implementation): r.median for r in results}

    def ratio(result: Result, other: str) -> str:
        base = by_key.get((result.case, result.backend, other))
        return f"{result.median / base:.2f}x" if base else "-"

    header = ("case", "backend", "implementation", "events/s", "vs raw", "vs eventsourcing")
    rows = [
        (
            r.case, r.backend, r.implementation, f"{r.median:,.0f}",
            ratio(r, "raw"), ratio(r, "eventsourcing"),
        )
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return " | ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        )

    out = [line(header), "-+-".join("-" * width for width in widths)]
    previous = None
    for result, row in zip(results, rows, strict=True):
        if previous is not None and (result.backend, result.case) != previous:
            out.append("")
        previous = (result.backend, result.case)
        out.append(line(row))
    return "\n".join(out)


def describe(s: Settings) -> str:
    size = len(json.dumps(s.payloads[0]))
    return "\n".join(
        [
            f"payload: training_progress dict, ~{size} bytes of JSON; events/s is the median "
            f"of {s.repeats} run(s)",
            f"append 100/tx and read_all: {s.events:,} events; append 1/tx: up to "
            f"{s.single_events:,} events or {s.seconds:g}s; concurrent: {s.writers} writer "
            f"processes (spawn), 1 event/tx, each up to {s.single_events:,} events or "
            f"{s.seconds:g}s",
            "mlevents: es.connect + store.append(NewEvent('training_progress', ...), "
            "expected_version=n) - pydantic-validated; read_all yields RecordedEvent",
            "eventsourcing 9.5.6: Postgres/SQLite ApplicationRecorder.insert_events(StoredEvent"
            "(..., state=json.dumps(payload).encode())) with its defaults (PostgreSQL: LOCK "
            "TABLE per insert; SQLite: WAL, synchronous left at SQLite's default FULL); "
            "read: select_notifications pages + json.loads",
            "raw: per event a UUIDv7 id + json.dumps(payload) + json.dumps(metadata), then one "
            "INSERT batch per tx (sqlite3 executemany, WAL + synchronous=FULL; psycopg 3 "
            "pipelined executemany, position from a sequence at insert) - no ordering "
            "guarantee, no stream table; read: keyset pages, JSON + timestamps decoded into "
            "tuples",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000,
                        help="events for append 100/tx and read_all (default 100000)")
    parser.add_argument("--single-events", type=int, default=5_000,
                        help="cap for append 1/tx, and per writer when concurrent (default 5000)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="time cap for append 1/tx and concurrent cases (default 5)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="time cap for batch append and populating reads (default 120)")
    parser.add_argument("--writers", type=int, default=4, help="concurrent writers (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--impl", action="append", dest="impls",
                        choices=[*IMPLEMENTATIONS, *OPTIONAL_IMPLEMENTATIONS],
                        help="implementation to run (repeatable; default: all three)")
    parser.add_argument("--case", action="append", dest="cases", choices=CASES,
                        help="case to run (repeatable; default: all four)")
    parser.add_argument("--pg-url", default=os.environ.get("MLEVENTS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL),
                        help="PostgreSQL URL (env MLEVENTS_BENCH_PG_URL)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke test (2k events, 200 singles, 1 repeat)")
    args = parser.parse_args(argv)
    settings = Settings(
        events=args.events, single_events=args.single_events, seconds=args.seconds,
        max_seconds=args.max_seconds, writers=args.writers, repeats=args.repeats,
        backends=BACKENDS if args.backend == "both" else (args.backend,),
        implementations=tuple(args.impls) if args.impls else IMPLEMENTATIONS,
        cases=tuple(args.cases) if args.cases else CASES,
        pg_url=args.pg_url,
    )
    if args.quick:
        settings.events, settings.single_events = 2_000, 200
        settings.seconds, settings.repeats = 1.0, 1
    if min(settings.events, settings.single_events, settings.writers, settings.repeats) < 1:
        parser.error("--events, --single-events, --writers and --repeats must be >= 1")
    if settings.events % BATCH:
        parser.error(f"--events must be a multiple of {BATCH}")
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    print(describe(settings), flush=True)
    results = run_benchmark(settings)
    print()
    print(format_table(results))


if __name__ == "__main__":
    main()
