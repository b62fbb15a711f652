"""Relay benchmark: events/s from the store to NATS JetStream, acknowledged and checkpointed.

Owns the relay figures of README and docs/relay.md: per backend, a full relay of a filled store,
beside its two halves (reading the log alone, publishing pre-read events alone).

Run: `.venv/bin/python bench/bench_relay.py [--events 100000] [--backend sqlite] [--quick]`.
Needs nats-server with JetStream on `--nats-url` (default nats://127.0.0.1:4222).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import nats
import psycopg

import event_sourcing as es
from event_sourcing.relay import Relay
from event_sourcing.relay.nats import JetStreamSink

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import DEFAULT_PG_URL, EVENT_TYPE, make_payloads

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Settings:
    events: int
    repeats: int
    backends: Sequence[str]
    pg_url: str
    nats_url: str


@dataclass(frozen=True)
class Row:
    backend: str
    events: int
    relay: float  # events/s, median
    relay_cpu: float  # events per CPU-second of the relay process (both of its threads)
    read: float
    publish: float


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_store(backend: str, settings: Settings, workdir: Path) -> Iterator[es.EventStore]:
    """A new store (SQLite file or PostgreSQL schema, dropped afterwards) with the events."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'relay-{uuid.uuid4().hex[:8]}.db'}"
        schema = None
    else:
        schema = f"bench_relay_{uuid.uuid4().hex[:12]}"
        url = _with_schema(settings.pg_url, schema)
    store = es.connect(url)
    try:
        payloads = make_payloads(min(settings.events, 1000))
        for start in range(0, settings.events, 100):
            size = min(100, settings.events - start)
            store.append(
                f"run-{start // 1000}",
                [es.NewEvent(EVENT_TYPE, payloads[(start + i) % len(payloads)])
                 for i in range(size)],
            )
        yield store
    finally:
        store.close()
        if schema is not None:
            with psycopg.connect(settings.pg_url, autocommit=True) as connection:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def fresh_sink(settings: Settings) -> Iterator[JetStreamSink]:
    """A sink on a JetStream stream of its own, deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    sink = JetStreamSink(settings.nats_url, prefix=f"bench.relay{tag}", stream=f"BENCH_{tag}")
    try:
        yield sink
    finally:
        sink.close()

        async def delete() -> None:
            nc = await nats.connect(settings.nats_url)
            try:
                await nc.jetstream().delete_stream(sink.stream)
            finally:
                await nc.close()

        asyncio.run(delete())


def measure(backend: str, settings: Settings, workdir: Path) -> Row:
    relay_rates, cpu_rates, read_rates, publish_rates = [], [], [], []
    n = settings.events
    with fresh_store(backend, settings, workdir) as store:
        for repeat in range(settings.repeats):
            with fresh_sink(settings) as sink:
                started, cpu = time.perf_counter(), time.process_time()
                stats = Relay(store, sink, name=f"bench-{repeat}").run(until_caught_up=True)
                relay_rates.append(n / (time.perf_counter() - started))
                cpu_rates.append(n / (time.process_time() - cpu))
                assert stats.published == n and stats.duplicates == 0, stats
            started = time.perf_counter()
            events = list(store.read_all())
            read_rates.append(n / (time.perf_counter() - started))
            with fresh_sink(settings) as sink:
                started = time.perf_counter()
                for first in range(0, n, 2000):
                    sink.publish(events[first:first + 2000])
                publish_rates.append(n / (time.perf_counter() - started))
            print(f"  {backend} repeat {repeat + 1}: relay {relay_rates[-1]:,.0f}/s",
                  file=sys.stderr)
    return Row(backend, n, statistics.median(relay_rates), statistics.median(cpu_rates),
               statistics.median(read_rates), statistics.median(publish_rates))


def run_benchmark(settings: Settings, workdir: Path) -> list[Row]:
    return [measure(backend, settings, workdir) for backend in settings.backends]


def render(rows: Sequence[Row], settings: Settings) -> str:
    lines = [
        f"relay to NATS JetStream, {settings.events:,} events of ~300 B, "
        f"median of {settings.repeats}",
        "",
        "| backend | relay: read, publish, acks, checkpoint | per relay CPU-second "
        "| read_all alone | publish + acks alone |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.backend} | {r.relay:,.0f} events/s | {r.relay_cpu:,.0f} events/s "
        f"| {r.read:,.0f} events/s | {r.publish:,.0f} events/s |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events relayed (100,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("MLEVENTS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--nats-url", default=os.environ.get("MLEVENTS_BENCH_NATS_URL",
                                                             DEFAULT_NATS_URL))
    parser.add_argument("--quick", action="store_true", help="5,000 events, 1 repeat")
    args = parser.parse_args(argv)
    settings = Settings(
        events=5000 if args.quick else args.events,
        repeats=1 if args.quick else args.repeats,
        backends=BACKENDS if args.backend == "both" else (args.backend,),
        pg_url=args.pg_url,
        nats_url=args.nats_url,
    )
    with tempfile.TemporaryDirectory() as workdir:
        rows = run_benchmark(settings, Path(workdir))
    print(render(rows, settings))


if __name__ == "__main__":
    main()
