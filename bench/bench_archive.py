"""Archive benchmark (docs/archive.md, "Cost"): what each read of archived history reads.

Appends 20,000 bench payloads (bench_store.make_payloads) in 50 streams to a PostgreSQL
store with partitions of 5,000 (every other event given an occurred_at in 2024, as imported
history is), ends each stream with a correlated `run_done`, seals, archives, then prints
the shared buffers the page statement of `read_all` and the count statement of
`log_counts` touch (EXPLAIN (ANALYZE, BUFFERS)), with and without their look at the
archive's manifest, before and after the archive; and the client CPU
(`time.process_time()`, median and range of --runs runs), before and after the archive, of
reads: `read_all` of every event, and the reads no position range serves (`read_as_of` of
every event, `read_correlated`, `read_all` of a rare type); after it, of `log_counts`
computed for the first time and on the usual path, `counts_by_type`, `forget`'s search of
the log for a key id (`sealed_events`) and the part of it that searches the files.

Run: `make bench-archive` or `.venv/bin/python bench/bench_archive.py [--runs 5]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

import event_sourcing as es
from event_sourcing.privacy.forget import sealed_events
from event_sourcing.projections.counts import log_counts
from event_sourcing.stores import postgres_read
from event_sourcing.stores.postgres_archive import archive
from event_sourcing.stores.postgres_archive_files import archived_files

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import DEFAULT_PG_URL
from bench_store import make_payloads

DATED = datetime(2024, 1, 1, tzinfo=UTC)
LATER = datetime.now(UTC) + timedelta(days=1)

BOUND_ONLY = "(SELECT coalesce(max(upper_bound), 0) FROM mlevents_archives)"
COUNT = (
    "SELECT event_type, count(*), sum(CASE WHEN version = 1 THEN 1 ELSE 0 END) "
    "FROM event_store WHERE position > %s AND position <= %s GROUP BY event_type"
)


def buffers(base: str, schema: str, query: str, params: Sequence[Any]) -> int:
    with psycopg.connect(base, autocommit=True, options=f"-c search_path={schema}") as conn:
        row = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", params  # type: ignore[arg-type]
        ).fetchone()
    assert row is not None
    plan = row[0][0]["Plan"]
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


def statements(base: str, schema: str, head: int) -> None:
    page, params = postgres_read.page_query(10_000, None, None, 1000)
    bound_only = page.replace(postgres_read.ARCHIVED, BOUND_ONLY)
    at_head, head_params = postgres_read.page_query(head, None, None, 1000)
    with_manifest = f"{COUNT} UNION ALL {archived_files(head - 100, head, 3)}"
    print(
        f"  read_all page at 10,000: {buffers(base, schema, bound_only, params)} buffers "
        f"with the bound alone, {buffers(base, schema, page, params)} with bound and count; "
        f"at the head: {buffers(base, schema, at_head, head_params)}"
    )
    print(
        f"  log_counts, last 100 positions: {buffers(base, schema, COUNT, (head - 100, head))}"
        f" buffers without the manifest, "
        f"{buffers(base, schema, with_manifest, (head - 100, head))} with it"
    )


def cpu(run: Callable[[], object], runs: int) -> str:
    spent = []
    for _ in range(runs):
        started = time.process_time()
        run()
        spent.append((time.process_time() - started) * 1000)
    return f"{statistics.median(spent):.1f} ms ({min(spent):.1f}-{max(spent):.1f})"


def reads(store: es.EventStore, runs: int) -> None:
    """The reads that no position range serves, through the archive once it is there."""
    print(f"  read_all (every event): "
          f"{cpu(lambda: sum(1 for _ in store.read_all()), runs)}")
    print(f"  read_as_of (every event, 10,000 of them dated): "
          f"{cpu(lambda: sum(1 for _ in store.read_as_of(LATER)), runs)}")
    print(f"  read_correlated (one event): "
          f"{cpu(lambda: store.read_correlated('corr-7'), runs)}")
    print(f"  read_all of one type (50 of 20,050 events): "
          f"{cpu(lambda: list(store.read_all(event_types=['run_done'])), runs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    schema = f"bench_archive_{uuid.uuid4().hex[:8]}"
    payloads = make_payloads(20_000)
    with tempfile.TemporaryDirectory(prefix="mlevents-bench-archive-") as folder:
        os.environ["MLEVENTS_ARTIFACTS"] = folder
        store = es.connect(f"{args.pg_url}?schema={schema}", partition_size=5000,
                           validate=False)
        try:
            for s in range(50):  # every other event imported history, dated in 2024
                store.append(f"run-{s}", [
                    es.NewEvent("training_progress", p, occurred_at=None if n % 2 else (
                        DATED + timedelta(minutes=s * 400 + n)
                    ))
                    for n, p in enumerate(payloads[s * 400:(s + 1) * 400])
                ])
            for s in range(50):
                store.append(f"run-{s}", [es.NewEvent("run_done", {"s": s})],
                             correlation_id=f"corr-{s}")
            store.seal()
            print("not archived")
            statements(args.pg_url, schema, store.head_position())
            reads(store, args.runs)
            done = archive(store, LATER)
            print(f"archived: {sum(r.count for r in done)} events in {len(done)} files")
            statements(args.pg_url, schema, store.head_position())

            def first_counts() -> None:
                with store.transaction() as tx:
                    tx.execute("DROP TABLE IF EXISTS event_counts")
                    tx.execute("DROP TABLE IF EXISTS event_counts_through")
                log_counts(store)

            def usual_counts() -> None:
                store.append("late", [es.NewEvent("late", {})])
                log_counts(store)

            find: Any = store.recorder
            print(f"  log_counts first after the archive: {cpu(first_counts, args.runs)}")
            print(f"  log_counts, one new event: {cpu(usual_counts, args.runs)}")
            print(f"  counts_by_type: {cpu(store.counts_by_type, args.runs)}")
            reads(store, args.runs)
            print(f"  sealed_events (forget), one key id: "
                  f"{cpu(lambda: sealed_events(store, ['k-none']), args.runs)}, of which "
                  f"the files: {cpu(lambda: find.archived_containing(['k-none']), args.runs)}")
        finally:
            store.close()
            with psycopg.connect(args.pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
