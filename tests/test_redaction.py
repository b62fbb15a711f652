"""Which dataset versions an erasure redacts (event_sourcing.privacy.redaction), on both
backends: the versions it names, versions derived from them that still hold the subject's
rows, every subject of several erasures; not the subject's new data after the erasure.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import DataIngested, DataPreprocessed, DataValidated
from event_sourcing.ml.history import dataset_history
from event_sourcing.privacy import LocalKeyProvider
from event_sourcing.privacy.impact import record_dataset_subjects
from event_sourcing.privacy.redaction import dataset_stream, erased_versions, redact_erased

MakeStore = Callable[..., es.EventStore]
A, B, C, D = "alice", "bob", "carol", "dave"


@pytest.fixture
def private(make_store: MakeStore) -> es.EventStore:
    return make_store(key_provider=LocalKeyProvider(os.urandom(32)))


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _table(*customers: str, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": range(start, start + len(customers)),
        "customer": list(customers),
        "x": [float(n) for n in range(start, start + len(customers))],
    })


def _version(
    store: es.EventStore, artifacts: ArtifactStore, table: pd.DataFrame, parent: str | None = None
) -> str:
    """Snapshot a version, record its subjects, and (built on `parent`) its derivation."""
    ref = artifacts.put_table(table)
    record_dataset_subjects(store, "customers", ref.sha256, table["customer"])
    if parent is not None:
        store.append(dataset_stream("customers"), [DataPreprocessed(
            dataset_id="customers", input_version=parent, output_version=ref.sha256,
            steps=["append a batch"], rows_in=0, rows_out=len(table),
        )])
    return ref.sha256


def _redactions(store: es.EventStore) -> dict[str, str]:
    return {e.payload["old_version"]: e.payload["new_version"]
            for e in store.read_all(event_types=["dataset_redacted"])}


def _customers(artifacts: ArtifactStore, version: str) -> list[str]:
    table = artifacts.get_table(version)
    assert isinstance(table, pd.DataFrame)
    return list(table["customer"])


def test_two_erasures_redact_every_version_holding_either_subject(
    private: es.EventStore, artifacts: ArtifactStore
) -> None:
    v1 = _version(private, artifacts, _table(A, B, C))
    v2 = _version(private, artifacts, _table(A, B, C, A, D), parent=v1)
    alice = private.forget(A, reason="art. 17")
    bob = private.forget(B, reason="art. 17")
    done = redact_erased(private, artifacts)
    assert not done.problems and len(done.events) == 4
    chain = _redactions(private)
    # Alice's erasure: v1 -> v1a, v2 -> v2a; Bob's then redacts those (his rows were kept).
    assert set(chain) == {v1, v2, chain[v1], chain[v2]}
    assert _customers(artifacts, chain[chain[v1]]) == [C]
    assert _customers(artifacts, chain[chain[v2]]) == [C, D]
    assert not any(artifacts.exists(v) for v in (v1, v2, chain[v1], chain[v2]))
    by = {e.payload["old_version"]: e.payload["erasure_event_id"]
          for e in private.read_all(event_types=["dataset_redacted"])}
    assert (by[v1], by[chain[v1]]) == (alice.id, bob.id)
    assert erased_versions(private)[v2] == alice.id
    assert redact_erased(private, artifacts).events == []  # idempotent


def test_a_version_built_after_the_forget_from_an_affected_one_is_redacted_too(
    private: es.EventStore, artifacts: ArtifactStore
) -> None:
    v1 = _version(private, artifacts, _table(A, B))
    erasure = private.forget(A, reason="art. 17")
    assert erasure.payload["dataset_versions"] == [v1]
    v2 = _version(private, artifacts, _table(A, B, C), parent=v1)  # carried Alice's rows over
    redact_erased(private, artifacts)
    chain = _redactions(private)
    assert set(chain) == {v1, v2} and _customers(artifacts, chain[v2]) == [B, C]


def test_the_subjects_new_data_after_the_erasure_is_kept_until_forgotten_again(
    private: es.EventStore, artifacts: ArtifactStore
) -> None:
    v1 = _version(private, artifacts, _table(A, B))
    private.forget(A, reason="art. 17")
    redact_erased(private, artifacts)
    v1a = _redactions(private)[v1]
    v2 = _version(private, artifacts, _table(B, A, start=10), parent=v1a)  # Alice is back
    assert redact_erased(private, artifacts).events == []
    assert _customers(artifacts, v2) == [B, A]
    again = private.forget(A, reason="art. 17, second request")
    assert again.payload["dataset_versions"] == [v1, v2]
    [event] = redact_erased(private, artifacts).events
    assert event.payload["old_version"] == v2 and event.payload["erasure_event_id"] == again.id
    assert _customers(artifacts, event.payload["new_version"]) == [B]


def test_rows_that_cannot_be_found_are_reported_not_guessed(
    private: es.EventStore, artifacts: ArtifactStore
) -> None:
    table = _table(A, B)
    ref = artifacts.put_table(table)
    record_dataset_subjects(private, "customers", ref.sha256, list(table["customer"]))  # no column
    private.forget(A, reason="art. 17")
    done = redact_erased(private, artifacts)
    assert done.events == [] and artifacts.exists(ref)
    assert "no subject column was recorded" in done.problems[0]


def test_a_redacted_version_takes_the_old_ones_place_in_the_dataset_history(
    private: es.EventStore, artifacts: ArtifactStore
) -> None:
    """Alice only in the second batch: the redacted second version is the first one's rows.
    It keeps the second batch's hash (the file is not ingested again) and the identical
    version's verdict; the next batch builds on it."""
    v1 = _version(private, artifacts, _table(B, C))
    v2 = _version(private, artifacts, _table(B, C, A, start=0), parent=v1)
    for version, batch, rows in ((v1, "1" * 64, 2), (v2, "2" * 64, 3)):
        private.append(dataset_stream("customers"), [
            DataIngested(dataset_id="customers", dataset_version=version, source_uri="file:///b",
                         rows=rows, columns=["sample_id", "customer", "x"],
                         content_sha256=batch, artifact=artifacts.ref_for(version)),
            DataValidated(dataset_id="customers", dataset_version=version, passed=True,
                          checks=[], rows=rows),
        ])
    private.forget(A, reason="art. 17")
    redact_erased(private, artifacts)
    history = dataset_history(private, dataset_stream("customers"))
    assert [(v.version, v.redacted_from, v.status) for v in history.versions] == [
        (v1, None, "passed"), (v1, v2, "passed"),
    ]
    assert history.ingested_hashes() == {"1" * 64, "2" * 64}
    assert history.ingestion_parent() is history.versions[-1]
    assert set(history.redacted) == {v2}
