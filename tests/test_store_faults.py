"""Faults the store must absorb: dropped connections, timeouts, stuck appends, threads that
come and go, clocks outside the calendar. Each failure a user sees is an EventStoreError."""

from __future__ import annotations

import gc
import os
import threading
import uuid
from typing import Any

import psycopg
import pytest

import event_sourcing as es


def ev(**payload: Any) -> es.NewEvent:
    return es.NewEvent("t", payload)


def _admin_url(url: str) -> str:
    return url.partition("?")[0]


@pytest.fixture
def named_url(store_url: str) -> str:
    """`store_url`; on PostgreSQL with an application_name of its own, so a test can find
    (and terminate) exactly this store's backends and no other session."""
    if store_url.startswith("sqlite"):
        return store_url
    return f"{store_url}&application_name=mlevents-faults-{uuid.uuid4().hex[:12]}"


def _app_name(url: str) -> str:
    return url.rpartition("application_name=")[2]


def _backends(url: str) -> list[int]:
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (_app_name(url),)
        ).fetchall()
    return [pid for (pid,) in rows]


def _terminate_store_backends(url: str) -> int:
    """Terminate every backend of this store (found by its application_name); returns how
    many there were."""
    with psycopg.connect(_admin_url(url), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (_app_name(url),),
        ).fetchall()
    return len(rows)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- item 9: a thread's connection is closed when the thread ends ---------------------------
def test_short_lived_appending_threads_leak_no_connections(named_url: str) -> None:
    store = es.connect(named_url, validate=False)
    store.append("warm-up", [ev()])

    def append_once(n: int) -> None:
        store.append(f"s-{n}", [ev(n=n)])

    def run_threads(count: int) -> None:
        for n in range(count):
            thread = threading.Thread(target=append_once, args=(n,))
            thread.start()
            thread.join()
        gc.collect()

    run_threads(20)
    fds_before = _open_fds()
    pg_before = len(_backends(named_url)) if store.dialect == "postgresql" else 0
    run_threads(200)
    # Bounded, not growing with the number of threads (2 descriptors a thread leaked).
    assert _open_fds() - fds_before < 10
    if store.dialect == "postgresql":
        assert len(_backends(named_url)) - pg_before < 3
    assert store.head_position() >= 221
    store.close()
