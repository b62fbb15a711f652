"""Idempotent writes in the library: typed events with ids, first-record-wins appends, keyed
training runs and steps recorded once. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import EventTypes, ModelRetired, TrainingFailed
from event_sourcing.training import TrainingService, TrainingStateError, model_name_stream


def _retired(reason: str) -> ModelRetired:
    return ModelRetired(
        model_id="m1", model_name="m", version=1, environment="production", reason=reason
    )


def test_typed_events_carry_an_id_and_metadata(store: es.EventStore) -> None:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "retire m1"))
    (recorded,) = store.append(
        "deployment:production",
        [es.NewEvent.of(_retired("old"), id=event_id, metadata={"ticket": "OPS-1"})],
        metadata={"user": "ops"},
    )
    assert recorded.id == event_id
    assert recorded.event_type == EventTypes.MODEL_RETIRED
    assert recorded.metadata == {"user": "ops", "ticket": "OPS-1"}
    assert store.get_event(event_id) == recorded
    with pytest.raises(es.EventValidationError, match="typed catalog event"):
        es.NewEvent.of({"reason": "x"}, id=event_id)  # type: ignore[arg-type]


def test_first_record_wins_only_when_asked(store: es.EventStore) -> None:
    event_id = str(uuid.uuid4())
    (first,) = store.append("s", [es.NewEvent.of(_retired("first"), id=event_id)])
    retry = [es.NewEvent.of(_retired("second attempt, other payload"), id=event_id)]
    # The default compares content: a different payload under a recorded id is refused.
    with pytest.raises(es.DuplicateEventError, match="different content"):
        store.append("s", retry)
    # Keyed emission: the recorded event is returned and nothing is written, even at a stale
    # expected version.
    assert store.append("s", retry, expected_version=0, on_duplicate="return_existing") == [
        first
    ]
    assert store.stream_version("s") == 1
    # An id recorded on another stream is another event altogether.
    with pytest.raises(es.DuplicateEventError):
        store.append("other", retry, on_duplicate="return_existing")
    # Part of a batch recorded is never "already done".
    partial = [*retry, es.NewEvent.of(_retired("new"), id=str(uuid.uuid4()))]
    with pytest.raises(es.DuplicateEventError, match="part of this batch"):
        store.append("s", partial, on_duplicate="return_existing")
    with pytest.raises(es.EventValidationError, match="on_duplicate"):
        store.append("s", retry, on_duplicate="ignore")  # type: ignore[arg-type]
    assert store.stream_version("s") == 1 and store.stream_version("other") == 0


@pytest.fixture(scope="module")
def cancer() -> pd.DataFrame:
    frame = load_breast_cancer(as_frame=True).frame
    assert isinstance(frame, pd.DataFrame)
    return frame.iloc[:200].reset_index(drop=True)


@pytest.fixture
def service(store: es.EventStore, tmp_path: Any) -> TrainingService:
    return TrainingService(store, ArtifactStore(tmp_path / "artifacts"))


def test_a_step_recorded_twice_is_recorded_once(
    service: TrainingService, store: es.EventStore, cancer: pd.DataFrame
) -> None:
    training_id = service.start_training({}, service.artifacts.put_table(cancer), seed=1)
    first = service.record_training_step(training_id, {"step": 1, "loss": 0.5})
    again = service.record_training_step(training_id, {"step": 1, "loss": 0.4})
    assert again == first and again.payload["loss"] == 0.5  # the first record wins
    service.record_training_step(training_id, {"step": 2, "loss": 0.3})
    service.fail_training(training_id, "stopped")
    # After the run ended, a recorded step is still returned; a new one is refused.
    assert service.record_training_step(training_id, {"step": 2, "loss": 9.0}).payload[
        "loss"
    ] == 0.3
    with pytest.raises(TrainingStateError, match="has ended"):
        service.record_training_step(training_id, {"step": 3})
    types = [e.event_type for e in store.read_stream(training_id)]
    assert types.count(EventTypes.TRAINING_PROGRESS) == 2


def _start(service: TrainingService, data: pd.DataFrame, key: str, **kwargs: Any) -> str:
    options: dict[str, Any] = {"seed": 1, "hyperparameters": {"C": 1.0}, **kwargs}
    return service.start_training(
        {"model_name": "m"},
        service.artifacts.put_table(data),
        idempotency_key=key,
        **options,
    )


def test_a_keyed_training_run_is_resumed_not_started_twice(
    service: TrainingService, store: es.EventStore, cancer: pd.DataFrame
) -> None:
    key = f"run-1/trained_model/{uuid.uuid4()}"
    assert service.keyed_run(key) is None
    training_id = _start(service, cancer, key)
    service.record_training_step(training_id, {"step": 1, "loss": 0.5})
    head = store.head_position()
    # The retry: same key, same inputs -> the open run, nothing written.
    assert _start(service, cancer, key) == training_id == service.keyed_run(key)
    assert store.head_position() == head
    model = LogisticRegression(max_iter=500).fit(cancer.drop(columns="target"), cancer["target"])
    model_id = service.complete_training(training_id, model, {"accuracy": 0.9}, model_name="m")
    # A retry after completion gets the completed run and its model, still nothing written.
    assert _start(service, cancer, key) == training_id
    assert service.completed_model(training_id) == model_id
    assert store.head_position() == head + 3  # training_completed, model_created, _versioned
    started = [
        e for e in store.read_all(event_types=[EventTypes.TRAINING_STARTED])
    ]
    assert len(started) == 1
    assert len(store.read_stream(model_name_stream("m"))) == 1
    # Another key (a fresh run of the job) is new history.
    assert _start(service, cancer, f"run-2/trained_model/{uuid.uuid4()}") != training_id


def test_a_retry_with_other_inputs_closes_the_open_run_first(
    service: TrainingService, store: es.EventStore, cancer: pd.DataFrame
) -> None:
    key = f"run-1/trained_model/{uuid.uuid4()}"
    first = _start(service, cancer, key)
    second = _start(service, cancer, key, seed=2)
    assert second != first
    closed = service.replay_training(first)
    assert closed["status"] == "failed" and "superseded" in closed["error"]
    assert service.keyed_run(key) == second
    # A run that failed is history: the next retry starts a new one.
    service.fail_training(second, RuntimeError("boom"))
    third = _start(service, cancer, key, seed=2)
    assert third not in (first, second)
    assert service.replay_training(third)["status"] == "running"
    failed = [TrainingFailed.model_validate(e.payload) for e in store.read_stream(first)[1:]]
    assert [f.error_type for f in failed] == [None]
    with pytest.raises(es.EventStoreError, match="not both"):
        service.start_training(
            {}, service.artifacts.put_table(cancer), training_id="x", idempotency_key=key
        )
