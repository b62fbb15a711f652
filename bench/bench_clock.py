"""Benchmark of the clock guard on PostgreSQL: what "never record a time earlier than the
stream's head" costs concurrent writers.

Every append statement inserts only if its stream's head (the row it reads anyway) was
recorded at or before its time. This runs concurrent writers (1 event per append, each on
its own stream) with and without that filter, in interleaved rounds in one process, and
prints per-event server CPU (the writers' own backends, from /proc: PostgreSQL must run on
this machine), client CPU and events/s.

    .venv/bin/python bench/bench_clock.py                      # 4 writers, 12 rounds
    .venv/bin/python bench/bench_clock.py --writers 8 --rounds 20 --appends 500
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from bench_store import DEFAULT_PG_URL

import event_sourcing as es
from event_sourcing.events import NewEvent
from event_sourcing.stores import postgres_append

GUARD = "    WHERE coalesce(head.created_at <= %(now)s, true)\n"
_TICK = os.sysconf("SC_CLK_TCK")


def _server_cpu(pids: list[int]) -> float:
    """Seconds of CPU (user + system) the backends `pids` have used."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


class Writers:
    """`count` threads that live across rounds (each keeps its own append connection, so a
    round measures appends, not connecting): each appends `appends` events a round."""

    def __init__(self, store: es.EventStore, count: int, appends: int, rounds: int) -> None:
        self.start = threading.Barrier(count + 1)
        self.end = threading.Barrier(count + 1)
        self.threads = [
            threading.Thread(target=self._write, args=(store, appends, rounds), daemon=True)
            for _ in range(count)
        ]
        for thread in self.threads:
            thread.start()

    def _write(self, store: es.EventStore, appends: int, rounds: int) -> None:
        stream, version = f"w-{uuid.uuid4().hex[:12]}", 0
        for _ in range(rounds):
            self.start.wait()
            for _ in range(appends):
                store.append(
                    stream, [NewEvent("training_progress", {"step": version, "loss": 0.5})],
                    expected_version=version,
                )
                version += 1
            self.end.wait()

    def round(self) -> tuple[float, float]:
        """Wall seconds and client CPU seconds of one round."""
        self.start.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        self.end.wait()
        return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=os.environ.get("MLEVENTS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=12, help="rounds per variant")
    parser.add_argument("--appends", type=int, default=300, help="appends per writer a round")
    args = parser.parse_args(argv)
    if GUARD not in next(iter(postgres_append._APPEND.values())):
        raise SystemExit("the clock guard is not in the append statement: update GUARD")
    variants = {
        "stream guard": dict(postgres_append._APPEND),
        "no guard": {key: sql.replace(GUARD, "") for key, sql in postgres_append._APPEND.items()},
    }
    schema = f"bench_clock_{uuid.uuid4().hex[:8]}"
    name = f"bench-clock-{os.getpid()}"
    separator = "&" if "?" in args.pg_url else "?"
    url = f"{args.pg_url}{separator}application_name={name}"
    store = es.connect(f"{url}&schema={schema}", pool_size=args.writers + 1)
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    try:
        writers = Writers(store, args.writers, args.appends, args.rounds * len(variants) + 1)
        writers.round()  # warm up: connections, plans
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            pids = [row[0] for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            )]
        if not pids:
            raise SystemExit("no backend of the writers found (application_name not set?)")
        events = args.writers * args.appends
        names = list(variants)
        # Each round runs every variant, in an order rotated round by round (no variant
        # always runs first).
        order = [names[(r + i) % len(names)] for r in range(args.rounds) for i in range(len(names))]
        for n, variant in enumerate(order):
            postgres_append._APPEND.update(variants[variant])
            server = _server_cpu(pids)
            wall, client = writers.round()
            server = _server_cpu(pids) - server
            results[variant].append((events / wall, client / events * 1e6, server / events * 1e6))
            print(f"round {n + 1}: {variant}: {events / wall:,.0f} events/s", file=sys.stderr)
    finally:
        postgres_append._APPEND.update(variants["stream guard"])
        store.close()
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(f"\n{args.writers} concurrent writers, 1 event per append, {args.rounds} interleaved "
          f"rounds of {args.writers * args.appends:,} appends per variant (medians)\n")
    print(f"| {'variant':<12} | {'events/s':>9} | {'client CPU µs/event':>19} | "
          f"{'server CPU µs/event':>19} |")
    print(f"| {'-' * 12} | {'-' * 9}:| {'-' * 19}:| {'-' * 19}:|")
    for variant, rows in results.items():
        rate, client, server = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {variant:<12} | {rate:>9,.0f} | {client:>19.1f} | {server:>19.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
