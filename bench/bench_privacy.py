"""Privacy benchmark: what encrypting personal data costs an `inference_requested` append.

Times one-event appends with the subject id in metadata under another key (stored as given,
what an append cost before encryption) and as metadata["subject_id"] (inputs and subject
sealed under the subject's key), on SQLite and PostgreSQL, and prints the ratio.

Run: `.venv/bin/python bench/bench_privacy.py [--events 2000] [--repeats 5] [--backend sqlite]`.
Without a subject it only uses `es.connect` and `append`, so `--plain-only` also runs against
an older checkout (PYTHONPATH=that/checkout) for a before/after figure.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

import event_sourcing as es

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
INPUTS = {
    "email": "someone@example.com", "age": 41, "country": "DE", "plan": "pro",
    "sessions_30d": 17, "spend_30d": 129.5, "tenure_months": 26, "churn_score": 0.31,
}


def run(url: str, events: int, subject: bool) -> float:
    """Appends per second: `events` inference_requested events, one per append."""
    store = es.connect(url)
    # The same metadata either way; only the key differs (subject_ref is not a subject).
    metadata = {"subject_id" if subject else "subject_ref": "someone@example.com"}
    payload = {"model_id": "churn", "model_version": 3, "inputs": INPUTS}
    try:
        for n in range(20):  # warm-up: connections, the key table, the subject's key
            store.append(f"warm-{n}", [es.NewEvent("inference_requested", payload)],
                         metadata=metadata)
        started = time.perf_counter()
        for n in range(events):
            store.append(f"inference-{n}", [es.NewEvent("inference_requested", payload)],
                         metadata=metadata)
        return events / (time.perf_counter() - started)
    finally:
        store.close()


def location(
    backend: str, workdir: Path, pg_url: str, synchronous: str
) -> tuple[str, str | None]:
    if backend == "sqlite":
        path = workdir / f"{uuid.uuid4().hex}.db"
        return f"sqlite:///{path}?synchronous={synchronous}", None
    schema = f"bench_privacy_{uuid.uuid4().hex[:12]}"
    return f"{pg_url}?schema={schema}", schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument("--pg-url", default=os.environ.get("MLEVENTS_BENCH_PG_URL",
                                                           DEFAULT_PG_URL))
    parser.add_argument("--sqlite-synchronous", default="FULL",
                        help="OFF takes the disk out, leaving the CPU cost encryption adds")
    parser.add_argument("--plain-only", action="store_true",
                        help="only appends without a subject (runs on older checkouts too)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLEVENTS_KEK", base64.b64encode(os.urandom(32)).decode())
    modes = [False] if args.plain_only else [False, True]
    print(f"{'backend':<11} {'mode':<12} {'appends/s':>10}  (median of {args.repeats})")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backend or ["sqlite", "postgresql"]:
            rates: dict[bool, list[float]] = {mode: [] for mode in modes}
            for _ in range(args.repeats):
                for mode in modes:  # interleaved, so drift hits both alike
                    url, schema = location(
                        backend, Path(tmp), args.pg_url, args.sqlite_synchronous
                    )
                    try:
                        rates[mode].append(run(url, args.events, mode))
                    finally:
                        if schema:
                            with psycopg.connect(args.pg_url, autocommit=True) as connection:
                                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            medians = {mode: statistics.median(values) for mode, values in rates.items()}
            for mode, rate in medians.items():
                name = "subject" if mode else "no subject"
                print(f"{backend:<11} {name:<12} {rate:>10,.0f}")
            if True in medians:
                print(f"{backend:<11} cost of encryption: {medians[False] / medians[True]:.2f}x "
                      "the time of the same append stored as given")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
