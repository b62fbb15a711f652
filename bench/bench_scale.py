"""Scale benchmark: how reads, projections and provenance grow from 100k to 1M events.

Generates a realistic ML log (training runs of 1,200 progress steps, dataset versions,
deployments, predictions with feedback) in append batches, then times each read at a tenth
of the size and at the full size, on a fresh store and on a long-lived one (every query run
more than five times on it first, the way a Dagster daemon holds it), and prints the growth
exponent log(t_full / t_tenth) / log(10). Also projection catch-up from position 0 (median
of --catch-up-repeats, in events/s and CPU µs per event), and the read-model tables' size
after it against their live size.

Run: `make bench-scale` or `.venv/bin/python bench/bench_scale.py [--events 200000]
[--backend sqlite]`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.cli.store_commands import status_report
from event_sourcing.projections import ProjectionRunner, as_of, builtin_projections
from event_sourcing.provenance import explain, impact, lineage
from event_sourcing.provenance.index import provenance_index_projection
from event_sourcing.serving import current_deployment

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
STEPS = 1_200  # progress events per training run
PROGRESS_BATCH = 200  # progress events per append
RUNS_PER_DATASET = 4
RUNS_PER_DEPLOYMENT = 3
PREDICTIONS_PER_RUN = 60  # each: requested + completed, and feedback for every other one
MODEL_NAME = "churn-clf"
REPEATS = 7
FRESH_REPEATS = 15  # a fresh store's figure is a few ms, easily moved by a busy machine


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def artifact(text: str) -> dict[str, str]:
    return {"uri": f"artifact://sha256/{sha(text)}", "sha256": sha(text)}


@dataclass
class Log:
    """What the generator wrote so far, and the subjects the reads ask about (the oldest)."""

    runs: int = 0
    datasets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    inferences: list[str] = field(default_factory=list)
    early_position: int = 0


def _dataset(store: es.EventStore, log: Log) -> tuple[str, str]:
    n = len(log.datasets)
    raw, clean, features = sha(f"raw{n}"), sha(f"clean{n}"), sha(f"features{n}")
    stream = f"dataset:churn-{n}"
    store.append(stream, [
        es.NewEvent(EventTypes.DATA_INGESTED, {
            "dataset_id": "churn", "dataset_version": raw, "source_uri": f"s3://lake/{n}.csv",
            "rows": 10_000, "columns": ["tenure", "plan", "churned"],
            "content_sha256": sha(f"batch{n}"), "batch_id": f"b{n}",
            "artifact": artifact(f"batch{n}"),
        }),
        es.NewEvent(EventTypes.DATA_PREPROCESSED, {
            "dataset_id": "churn", "input_version": raw, "output_version": clean,
            "steps": ["dropna"], "rows_in": 10_000, "rows_out": 9_800,
        }),
        es.NewEvent(EventTypes.DATA_VALIDATED, {
            "dataset_id": "churn", "dataset_version": clean, "passed": True, "rows": 9_800,
            "checks": [{"name": "no_nulls", "passed": True}],
        }),
    ])
    store.append(f"features:churn-{n}", [
        es.NewEvent(EventTypes.FEATURE_COMPUTED, {
            "feature_set": "churn_features", "feature_version": f"fv{n}",
            "dataset_version": clean, "features": ["tenure", "plan"], "rows": 9_800,
            "artifact": artifact(f"features{n}"),
        }),
    ])
    log.datasets.append(raw)
    return features, f"fv{n}"


def _run(store: es.EventStore, log: Log, dataset: str, feature_version: str) -> str:
    run, model = f"run-{log.runs}", f"model-{log.runs}"
    version = log.runs + 1
    store.append(run, [es.NewEvent(EventTypes.TRAINING_STARTED, {
        "config": {"estimator": "gbm", "depth": 6}, "dataset_id": "churn",
        "dataset_version": dataset, "feature_version": feature_version,
        "code_version": {"package_version": "0.1.0", "git_commit": "abc123"},
        "hyperparameters": {"depth": 6, "lr": 0.1}, "seed": 7, "user_id": "ada",
        "model_name": MODEL_NAME,
    })], stream_type="training_run", correlation_id=run)
    for start in range(1, STEPS + 1, PROGRESS_BATCH):
        store.append(run, [
            es.NewEvent(EventTypes.TRAINING_PROGRESS, {
                "step": step, "metrics": {"accuracy": step / STEPS, "auc": 0.5 + step / 4000},
                "loss": 1 / step, "learning_rate": 0.1,
            })
            for step in range(start, min(start + PROGRESS_BATCH, STEPS + 1))
        ], correlation_id=run)
    store.append(run, [es.NewEvent(EventTypes.TRAINING_COMPLETED, {
        "model_id": model, "model_artifact": artifact(model), "final_metrics": {"auc": 0.9},
        "duration_seconds": 600.0, "model_fingerprint": sha(model), "model_name": MODEL_NAME,
    })], correlation_id=run)
    store.append(model, [es.NewEvent(EventTypes.MODEL_CREATED, {
        "model_id": model, "training_id": run, "model_name": MODEL_NAME,
        "artifact": artifact(model), "metrics": {"auc": 0.9}, "fingerprint": sha(model),
    })], stream_type="model", correlation_id=run)
    store.append(f"model-name:{MODEL_NAME}", [es.NewEvent(EventTypes.MODEL_VERSIONED, {
        "model_id": model, "model_name": MODEL_NAME, "version": version, "training_id": run,
        "artifact": artifact(model), "metrics": {"auc": 0.9},
    })], stream_type="model_name", correlation_id=run)
    log.runs += 1
    log.models.append(model)
    return model


def _deploy_and_predict(store: es.EventStore, log: Log, model: str, deploy: bool) -> None:
    version = log.runs
    if deploy:
        store.append(f"deployments:{MODEL_NAME}", [es.NewEvent(EventTypes.MODEL_DEPLOYED, {
            "model_id": model, "model_name": MODEL_NAME, "version": version,
        })])
    for i in range(PREDICTIONS_PER_RUN):
        inference = f"inf-{log.runs}-{i}"
        served = {"model_id": model, "model_version": version}
        events = [
            es.NewEvent(EventTypes.INFERENCE_REQUESTED, {**served, "inputs": {"tenure": i}}),
            es.NewEvent(EventTypes.INFERENCE_COMPLETED, {**served, "prediction": i % 2}),
        ]
        if i % 2 == 0:
            events.append(es.NewEvent(EventTypes.INFERENCE_FEEDBACK, {
                **served, "inference_id": inference, "actual": 0, "correct": i % 4 == 0,
            }))
        store.append(inference, events, stream_type="inference", correlation_id=inference)
        if not log.inferences:
            log.inferences.append(inference)


def generate(store: es.EventStore, log: Log, events: int) -> None:
    """Append cycles of the realistic shape until the log holds `events` events."""
    dataset = feature_version = ""
    while store.head_position() < events:
        if log.runs % RUNS_PER_DATASET == 0 or not dataset:
            dataset, feature_version = _dataset(store, log)
        model = _run(store, log, dataset, feature_version)
        _deploy_and_predict(store, log, model, deploy=(log.runs - 1) % RUNS_PER_DEPLOYMENT == 0)
        if not log.early_position:
            log.early_position = store.head_position()


# -- measuring ---------------------------------------------------------------------------------


def _time(operation: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median seconds of `operation`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        operation()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def operations(store: es.EventStore, log: Log) -> dict[str, Callable[[], Any]]:
    head = store.head_position()
    return {
        "sensor tick at the head": lambda: list(store.read_all(after=head, limit=100)),
        "sensor tick, reset cursor, type filter": lambda: list(
            store.read_all(after=0, event_types=[EventTypes.MODEL_DEPLOYED], limit=20)
        ),
        "serving.current_deployment": lambda: current_deployment(store, "production", MODEL_NAME),
        "lineage of the oldest model": lambda: lineage(store, log.models[0]),
        "explain the oldest prediction": lambda: explain(store, log.inferences[0]),
        "as_of deployments (early position)": lambda: as_of(
            store, "deployments", log.early_position
        ).close(),
        "mlevents status": lambda: status_report(store),
        "impact of the oldest dataset": lambda: impact(store, log.datasets[0]),
    }


def measure(url: str, log: Log, long_lived: es.EventStore) -> dict[str, tuple[float, float]]:
    """(fresh, long-lived) median seconds per operation."""
    out: dict[str, tuple[float, float]] = {}
    warm = operations(long_lived, log)
    for operation in warm.values():  # more than five times: prepared statements kick in
        for _ in range(6):
            operation()
    for name, operation in warm.items():
        def fresh(name: str = name) -> None:
            with es.connect(url, validate=False) as store:
                operations(store, log)[name]()

        fresh()  # first use creates the projections' tables
        out[name] = (_time(fresh, FRESH_REPEATS), _time(operation))
    return out


@dataclass(frozen=True)
class CatchUp:
    """Median events/s and CPU µs per event of catching every built-in projection and the
    provenance index up from position 0 (each `ProjectionRunner.rebuild`)."""

    rate: float
    cpu_us: float


def catch_up(store: es.EventStore, repeats: int) -> CatchUp:
    runner = ProjectionRunner(store, [*builtin_projections(), provenance_index_projection()])
    head = store.head_position()
    rates, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        for name in runner.projections:
            runner.rebuild(name)
        rates.append(head / (time.perf_counter() - start))
        cpus.append((time.process_time() - cpu) / head * 1e6)
    return CatchUp(statistics.median(rates), statistics.median(cpus))


def _ratio(after: int, live: int) -> str:
    return f"{after / 1e6:.1f} MB after catch-up, {live / 1e6:.1f} MB live ({after / live:.2f}x)"


def table_bloat(url: str, schema: str) -> str:
    """Read-model tables after catch-up against their live size (VACUUM FULL), PostgreSQL."""
    tables = [t for p in builtin_projections() for t in p.tables]
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        def size() -> int:
            row = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = ANY(%s)",
                (schema, tables),
            ).fetchone()
            return int(row[0]) if row and row[0] else 0

        after = size()
        for table in tables:
            conn.execute(f"VACUUM FULL {table}")
        live = size()
    return _ratio(after, live)


def table_bloat_sqlite(path: Path) -> str:
    """Read-model tables (with their indexes) after catch-up against their size in a
    VACUUM INTO copy of the database (pages measured with dbstat), SQLite."""
    tables = [t for p in builtin_projections() for t in p.tables]
    marks = ",".join("?" * len(tables))
    query = (
        "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
        f"(SELECT name FROM sqlite_master WHERE tbl_name IN ({marks}))"
    )
    copy = path.with_name("live.db")
    with closing(sqlite3.connect(path)) as conn:
        after = int(conn.execute(query, tables).fetchone()[0])
        conn.execute("VACUUM INTO ?", (str(copy),))
    with closing(sqlite3.connect(copy)) as conn:
        live = int(conn.execute(query, tables).fetchone()[0])
    copy.unlink()
    return _ratio(after, live)


# -- running -----------------------------------------------------------------------------------


def run_backend(backend: str, events: int, pg_url: str, repeats: int) -> list[str]:
    tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
    schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'events.db'}?synchronous=OFF"
    else:
        url = f"{pg_url}?schema={schema}"
    log = Log()
    lines: list[str] = []
    results: dict[int, dict[str, tuple[float, float]]] = {}
    rates: dict[int, CatchUp] = {}
    try:
        store = es.connect(url, validate=False)
        for size in (events // 10, events):
            start = time.perf_counter()
            generate(store, log, size)
            took = time.perf_counter() - start
            head = store.head_position()
            print(f"[{backend}] {head:,} events generated ({took:.0f} s)", file=sys.stderr)
            rates[size] = catch_up(store, repeats)
            results[size] = measure(url, log, store)
        store.close()
        small, big = events // 10, events
        lines.append(f"\n{backend}: {small:,} -> {big:,} events, median ms (fresh / long-lived)\n")
        lines.append(f"| operation | {small // 1000}k fresh | {small // 1000}k long-lived | "
                     f"{big // 1000}k fresh | {big // 1000}k long-lived | exponent (fresh / "
                     "long-lived) |")
        lines.append("|---|---|---|---|---|---|")
        for name in results[small]:
            (f1, l1), (f2, l2) = results[small][name], results[big][name]
            lines.append(
                f"| {name} | {f1 * 1e3:.2f} | {l1 * 1e3:.2f} | {f2 * 1e3:.2f} | {l2 * 1e3:.2f} | "
                f"{_exponent(f1, f2, small, big)} / {_exponent(l1, l2, small, big)} |"
            )
        lines.append(
            f"| projection catch-up from 0 (events/s) | {rates[small].rate:,.0f} | | "
            f"{rates[big].rate:,.0f} | | |"
        )
        lines.append(
            f"| projection catch-up, CPU µs per event | {rates[small].cpu_us:.1f} | | "
            f"{rates[big].cpu_us:.1f} | | |"
        )
        bloat = (
            table_bloat(pg_url, schema) if backend == "postgresql"
            else table_bloat_sqlite(Path(tmp.name) / "events.db")
        )
        lines.append(f"\nread-model tables: {bloat}")
    finally:
        if backend == "postgresql":
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        tmp.cleanup()
    return lines


def _exponent(t1: float, t2: float, n1: int, n2: int) -> str:
    return f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="full log size (default 1,000,000; the small one is a tenth)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL)
    parser.add_argument("--catch-up-repeats", type=int, default=3,
                        help="catch-ups from 0 per size, their median reported (default 3)")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    started = time.perf_counter()
    lines = [f"bench-scale {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"]
    for backend in backends:
        lines.extend(run_backend(backend, args.events, args.pg_url, args.catch_up_repeats))
    lines.append(f"\ntotal {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
