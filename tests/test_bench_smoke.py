"""Smoke tests of the benchmarks in bench/: every case runs on both backends at tiny sizes.

No timing assertions: it proves the benchmark works and reports a row per case/impl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH_DIR) not in sys.path:
    # Also how the spawned writer processes find the module: spawn copies sys.path.
    sys.path.insert(0, str(BENCH_DIR))

import bench_store  # noqa: E402


def _without_schema(url: str) -> str:
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_case_reports_a_rate_per_implementation(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pg_url = bench_store.DEFAULT_PG_URL
    if backend == "postgresql":
        # The fixture skips (or fails in CI) when PostgreSQL is down; the bench makes and
        # drops its own schemas on the same server.
        pg_url = _without_schema(request.getfixturevalue("pg_schema_url"))
    settings = bench_store.Settings(
        events=300, single_events=10, seconds=2.0, max_seconds=30.0, writers=2, repeats=1,
        backends=(backend,), pg_url=pg_url,
        payloads=bench_store.make_payloads(150),
    )

    results = bench_store.run_benchmark(settings, workdir=tmp_path)

    keys = {(r.case, r.backend, r.implementation) for r in results}
    expected = {
        (case, backend, impl)
        for case in bench_store.CASES
        for impl in bench_store.IMPLEMENTATIONS
    }
    assert keys == expected
    assert all(len(r.rates) == 1 and r.median > 0 for r in results)
    table = bench_store.format_table(results)
    for case in bench_store.CASES:
        assert sum(line.startswith(case + " ") for line in table.splitlines()) == 3
    assert list(tmp_path.iterdir()) == [], "the benchmark left SQLite files behind"


def test_payloads_are_ml_sized_and_valid_training_progress() -> None:
    import event_sourcing as es

    payloads = bench_store.make_payloads(20)
    sizes = [len(json.dumps(p)) for p in payloads]
    assert all(250 <= size <= 350 for size in sizes), sizes
    with es.connect("sqlite:///:memory:") as store:
        for payload in payloads:
            store.registry.encode(bench_store.EVENT_TYPE, payload)


def test_each_postgresql_measurement_gets_its_own_schema_dropped_after(
    pg_schema_url: str, tmp_path: Path
) -> None:
    import psycopg

    pg_url = _without_schema(pg_schema_url)
    query = "SELECT count(*) FROM pg_namespace WHERE nspname = %s"
    with bench_store.fresh_location("postgresql", tmp_path, pg_url) as location:
        with psycopg.connect(pg_url) as connection:
            assert connection.execute(query, (location.schema,)).fetchone() == (1,)
        assert f"schema={location.schema}" in location.mlevents_url
    with psycopg.connect(pg_url) as connection:
        assert connection.execute(query, (location.schema,)).fetchone() == (0,)


def test_the_integrity_bench_prints_a_row_per_operation(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    import bench_integrity

    pg_url = _without_schema(request.getfixturevalue("pg_schema_url"))
    bench_integrity.main(["--events", "300", "--repeats", "1", "--pg-url", pg_url])
    lines = capsys.readouterr().out.splitlines()
    for backend in ("sqlite", "postgresql"):
        for operation in ("verify (full)", "seal", "verify --since-last-verified"):
            assert any(
                line.startswith(backend) and f"| {operation} " in line for line in lines
            ), lines


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_storage_bench_accounts_for_every_btree(
    backend: str, request: pytest.FixtureRequest
) -> None:
    import bench_storage

    pg_url = bench_store.DEFAULT_PG_URL
    if backend == "postgresql":
        pg_url = _without_schema(request.getfixturevalue("pg_schema_url"))
    sizes = bench_storage.measure(backend, 2000, pg_url)

    assert sizes.events >= 2000 and sizes.payload > 0 and sizes.metadata > 0
    assert sizes.total == sum(sizes.parts.values()) > sizes.payload + sizes.metadata
    assert {"table", "id", "stream_version", "idx_event_store_type",
            "idx_event_store_correlation", "streams"} <= set(sizes.parts)
    if backend == "sqlite":  # each index's query uses it
        assert sizes.plans and all("INDEX" in plan for plan in sizes.plans.values())
    lines = bench_storage.format_sizes(backend, sizes)
    assert sum(line.startswith("| ") for line in lines) == 3 + len(sizes.parts)  # + headers
    assert all(bench_storage.INDEX_QUERIES.get(name) for name in sizes.parts)

