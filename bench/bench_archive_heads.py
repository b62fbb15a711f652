"""Archived heads benchmark (docs/archive.md, "Appending to a stream whose head is
archived"): what an append costs when its stream's latest event was archived, against the
same append when it is in the tables.

Appends bench payloads (bench_store.make_payloads) in 200 streams of --events events (100)
to a PostgreSQL store with partitions of --partition-size (5,000; one row group of up to
50,000 rows per file), seals and archives them (the heads of the streams timed are
archived). Then, interleaved stream by stream, one event is appended to each of 50
streams in each way, timed (wall clock, `time.perf_counter()`; client CPU,
`time.process_time()`), medians and ranges:

- archived head, no expectation, and expecting version --events, by a store that never saw the
  stream (its head is read from the file: the row group is read anew each time, as for
  streams scattered over the archive);
- archived head, expecting version 100, by the store that appended it (its head cached:
  no lookup);
- then the same three ways again on the same streams, their heads now in the tables.

Also the first such append by a new store object (it reads the manifest and checks the
file's content address first).

Run: `make bench-archive-heads` or `.venv/bin/python bench/bench_archive_heads.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import event_sourcing as es
from event_sourcing.stores.postgres_archive import archive

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import DEFAULT_PG_URL
from bench_store import make_payloads

STREAMS, TIMED = 200, 50


def timed(
    store: es.EventStore, stream: str, expected: int | None,
    into: dict[str, list[tuple[float, float]]], key: str,
) -> None:
    """One event appended to `stream`, its wall and client CPU milliseconds kept."""
    event = [es.NewEvent("run_done", {"ok": True})]
    wall, cpu = time.perf_counter(), time.process_time()
    store.append(stream, event, expected_version=expected)
    into.setdefault(key, []).append(
        ((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000)
    )


def summary(samples: list[tuple[float, float]]) -> str:
    wall = [s[0] for s in samples]
    cpu = [s[1] for s in samples]
    return (
        f"wall {statistics.median(wall):.2f} ms ({min(wall):.2f}-{max(wall):.2f}), "
        f"client CPU {statistics.median(cpu):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--events", type=int, default=100, help="events per stream")
    parser.add_argument("--partition-size", type=int, default=5000)
    args = parser.parse_args()
    events, size = args.events, args.partition_size
    schema = f"bench_heads_{uuid.uuid4().hex[:8]}"
    url = f"{args.pg_url}?schema={schema}"
    payloads = make_payloads(STREAMS * events)
    with tempfile.TemporaryDirectory(prefix="mlevents-bench-heads-") as folder:
        os.environ["MLEVENTS_ARTIFACTS"] = folder
        warm = es.connect(url, partition_size=size, validate=False)
        cold = es.connect(url, validate=False)
        fresh: Any = None
        try:
            for s in range(STREAMS):
                warm.append(f"run-{s}", [
                    es.NewEvent("training_progress", p)
                    for p in payloads[s * events:(s + 1) * events]
                ])
            warm.seal()
            done = archive(warm, datetime.now(UTC) + timedelta(days=1))
            archived = sum(r.count for r in done)
            print(f"archived: {archived} events in {len(done)} files")
            # (The last stream's head shares its partition with the seal.)
            assert archived >= (3 * TIMED + 1) * events
            files: Any = cold.recorder._archives  # type: ignore[attr-defined]
            cold.read_stream("run-0", 1, 1)  # the manifest read, and a file checked

            samples: dict[str, list[tuple[float, float]]] = {}
            for i in range(TIMED):
                a, b, c = (f"run-{i}", f"run-{TIMED + i}", f"run-{2 * TIMED + i}")
                files._last = None  # the row group read anew
                timed(cold, a, None, samples, "archived, no expectation")
                files._last = None
                timed(cold, b, events, samples, "archived, expected version (head not cached)")
                timed(warm, c, events, samples, "archived, expected version (head cached)")
                timed(warm, a, None, samples, "hot, no expectation")
                timed(warm, b, events + 1, samples, "hot, expected version (head not cached)")
                timed(warm, c, events + 1, samples, "hot, expected version (head cached)")
            for key, found in samples.items():
                print(f"  {key}: {summary(found)}")
            fresh = es.connect(url, validate=False)
            first: dict[str, list[tuple[float, float]]] = {}
            timed(fresh, f"run-{3 * TIMED}", None, first, "first")
            print(f"  first append to an archived head by a new store object: "
                  f"{summary(first['first'])}")
            report = warm.verify()
            assert report.ok, report.problems
        finally:
            for store in (warm, cold, fresh):
                if store is not None:
                    store.close()
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
