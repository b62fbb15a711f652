"""Benchmark of tamper evidence: full verification, sealing and verification since the last
verified seal, on SQLite and PostgreSQL. Progress goes to stderr, the table to stdout.

    .venv/bin/python bench/bench_integrity.py                 # 100,000 events, both backends
    .venv/bin/python bench/bench_integrity.py --backend sqlite --events 200000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from bench_store import DEFAULT_PG_URL, make_payloads

import event_sourcing as es
from event_sourcing.events import NewEvent

BATCH = 100
NEW_EVENTS = 1_000  # appended before the incremental verification


def _populate(store: es.EventStore, events: int) -> None:
    payloads = make_payloads(1000)
    for n in range(0, events, BATCH):
        store.append(
            f"run-{n // 10_000}",  # 10,000 events per stream
            [NewEvent("training_progress", payloads[(n + i) % 1000]) for i in range(BATCH)],
        )


def _timed(action: Callable[[], object], repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def measure(url: str, events: int, repeats: int) -> list[tuple[str, int, float]]:
    """(operation, events it covered, median seconds) for one fresh store."""
    store = es.connect(url)
    try:
        _populate(store, events)
        seal = _timed(store.seal, 1)  # verifies the range, then its Merkle root
        # a sealed log: every chain, and the seal's Merkle tree, recomputed
        full = _timed(lambda: _check(store.verify(), events), repeats)
        _populate(store, NEW_EVENTS)
        new = store.head_position() - events
        since = _timed(lambda: _check(store.verify(since_last_verified=True), new), repeats)
    finally:
        store.close()
    return [
        ("seal", events, seal),
        ("verify (full)", events, full),
        ("verify --since-last-verified", new, since),
    ]


def _check(report: object, at_least: int) -> None:
    assert getattr(report, "ok", False), getattr(report, "problems", None)
    assert getattr(report, "events", 0) >= at_least


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events in the store")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("MLEVENTS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlevents-bench-") as tmp:
        for backend in backends:
            print(f"{backend}: {args.events:,} events...", file=sys.stderr, flush=True)
            if backend == "sqlite":
                results = measure(f"sqlite:///{Path(tmp) / 'events.db'}", args.events,
                                  args.repeats)
            else:
                schema = f"bench_{uuid.uuid4().hex[:12]}"
                separator = "&" if "?" in args.pg_url else "?"
                try:
                    results = measure(f"{args.pg_url}{separator}schema={schema}", args.events,
                                      args.repeats)
                finally:
                    with psycopg.connect(args.pg_url, autocommit=True) as connection:
                        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            rows += [(backend, *result) for result in results]
    header = ("backend", "operation", "events", "seconds", "events/s")
    table = [header] + [
        (backend, op, f"{n:,}", f"{seconds:.3f}", f"{n / seconds:,.0f}")
        for backend, op, n, seconds in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print(" | ".join(
            cell.rjust(widths[i]) if i >= 2 else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ))
        if n == 0:
            print("-+-".join("-" * width for width in widths))


if __name__ == "__main__":
    main()
