"""Reproducible training and inference logging against real stores and real scikit-learn models.

Runs are recorded, replayed from events alone, re-run and verified; tampering must be named.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import EventTypes
from event_sourcing.training import (
    InferenceNotFoundError,
    TrainingFunctionRegistry,
    TrainingNotFoundError,
    TrainingService,
    TrainingStateError,
    capture_environment,
    code_version,
    log_feedback,
    log_prediction,
    model_fingerprint,
    model_name_stream,
)

FUNCTIONS = TrainingFunctionRegistry()


@FUNCTIONS.register
def train_forest(dataset: pd.DataFrame, hyperparameters: dict[str, Any], seed: int | None) -> Any:
    X, y = dataset.drop(columns="target"), dataset["target"]
    model = RandomForestClassifier(**hyperparameters, random_state=seed, n_jobs=1)
    return model.fit(X, y)


@FUNCTIONS.register(name="logreg")
def train_logreg(dataset: pd.DataFrame, hyperparameters: dict[str, Any], seed: int | None) -> Any:
    X, y = dataset.drop(columns="target"), dataset["target"]
    model = make_pipeline(
        StandardScaler(), LogisticRegression(**hyperparameters, random_state=seed)
    )
    return model.fit(X, y)


def train_forest_differently(
    dataset: pd.DataFrame, hyperparameters: dict[str, Any], seed: int | None
) -> Any:
    X, y = dataset.drop(columns="target"), dataset["target"]
    model = RandomForestClassifier(**hyperparameters, random_state=(seed or 0) + 1, n_jobs=1)
    return model.fit(X, y)


class StepClock:
    """A clock that advances one second per call, from a fixed UTC instant."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_breast_cancer(as_frame=True).frame
    train, test = train_test_split(frame, test_size=0.25, random_state=0, stratify=frame["target"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def service(store: es.EventStore, artifacts: ArtifactStore) -> TrainingService:
    return TrainingService(store, artifacts, functions=FUNCTIONS, clock=StepClock())


def _train_forest(
    service: TrainingService, cancer: tuple[pd.DataFrame, pd.DataFrame], **kwargs: Any
) -> Any:
    train, test = cancer
    X_eval, y_eval = test.drop(columns="target"), test["target"]
    return service.train(
        train_forest,
        train,
        hyperparameters={"n_estimators": 8, "max_depth": 4},
        seed=7,
        X_eval=X_eval,
        evaluate=lambda model: {"accuracy": model.score(X_eval, y_eval)},
        dataset_id="breast_cancer",
        model_name="cancer-forest",
        **kwargs,
    )


def _types(events: list[es.RecordedEvent]) -> list[str]:
    return [event.event_type for event in events]


# -- fingerprints and environment --------------------------------------------------------------


def test_fingerprint_tracks_seed_params_and_data() -> None:
    data = load_wine()
    X, y = data.data, data.target

    def fit(seed: int, depth: int = 3) -> Any:
        return RandomForestClassifier(n_estimators=5, max_depth=depth, random_state=seed).fit(X, y)

    assert model_fingerprint(fit(1), X) == model_fingerprint(fit(1), X)
    assert model_fingerprint(fit(1), X) != model_fingerprint(fit(2), X)
    assert model_fingerprint(fit(1), X) != model_fingerprint(fit(1, depth=4), X)
    assert model_fingerprint(fit(1), X) != model_fingerprint(fit(1), X[:50])
    assert model_fingerprint(fit(1)) == model_fingerprint(fit(1))  # params + trees only


def test_environment_and_code_version() -> None:
    env = capture_environment()
    assert {"numpy", "pandas", "scikit-learn", "pydantic", "mlevents"} <= set(env.packages)
    assert env.python.count(".") == 2
    version = code_version(train_forest)
    assert version.package_version == es.__version__
    assert version.source_sha256 is not None
    assert version.source_sha256 != code_version(train_forest_differently).source_sha256
    assert version.git_commit is None or len(version.git_commit) >= 40


# -- recording and replay ----------------------------------------------------------------------


def test_manual_flow_replays_the_seed_state_shape(
    service: TrainingService,
    store: es.EventStore,
    artifacts: ArtifactStore,
    cancer: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = cancer
    dataset = artifacts.put_table(train)
    config = {"experiment": "baseline", "optimizer": "lbfgs"}
    training_id = service.start_training(
        config,
        dataset.sha256,
        dataset_id="breast_cancer",
        feature_version="raw-v1",
        hyperparameters={"C": 0.5, "max_iter": 200},
        seed=3,
        train_fn=train_logreg,
        user_id="ada",
    )
    steps = [
        {"step": 1, "metrics": {"acc": 0.9}, "loss": 0.4, "learning_rate": 0.1},
        {"step": 2, "metrics": {"acc": 0.95}, "loss": 0.2, "learning_rate": 0.05, "gpu_memory": 10},
    ]
    for step in steps:
        service.record_training_step(training_id, step)
    # Train on the snapshot, as documented: verification re-runs on exactly that.
    model = train_logreg(artifacts.get_table(dataset), {"C": 0.5, "max_iter": 200}, 3)
    X_eval = test.drop(columns="target")
    model_id = service.complete_training(
        training_id, model, {"accuracy": np.float64(0.97)}, X_eval=X_eval, model_name="cancer-lr"
    )

    state = service.replay_training(training_id)
    assert {"config", "dataset_id", "steps", "final_metrics"} <= set(state)
    assert state["config"] == config  # recorded as given
    assert state["training_function"] == "logreg" and state["model_name"] == "cancer-lr"
    assert state["dataset_id"] == "breast_cancer"
    assert [s["step"] for s in state["steps"]] == [1, 2]
    assert state["steps"][0]["metrics"] == {"acc": 0.9} and state["steps"][0]["loss"] == 0.4
    assert state["steps"][1]["resources"]["gpu_memory"] == 10
    assert state["final_metrics"] == {"accuracy": 0.97}
    assert state["status"] == "completed" and state["model_id"] == model_id
    assert state["dataset_version"] == dataset.sha256 and state["dataset_uri"] == dataset.uri
    assert state["hyperparameters"] == {"C": 0.5, "max_iter": 200} and state["seed"] == 3
    assert state["code_version"]["source_sha256"] == code_version(train_logreg).source_sha256
    assert state["environment"]["packages"]["scikit-learn"]

    events = store.read_stream(training_id)
    assert _types(events) == [
        EventTypes.TRAINING_STARTED,
        EventTypes.TRAINING_PROGRESS,
        EventTypes.TRAINING_PROGRESS,
        EventTypes.TRAINING_COMPLETED,
    ]
    assert {e.stream_type for e in events} == {"training_run"}
    assert {e.correlation_id for e in events} == {training_id}
    assert events[0].payload["started_at"] == "2025-01-01T12:00:01Z"  # the injected clock
    assert events[0].payload["training_function"] == "logreg"
    completed = events[-1].payload
    assert completed["duration_seconds"] > 0
    # What verification and model registration need is typed payload, not event metadata.
    assert events[-1].metadata == {}
    assert completed["model_name"] == "cancer-lr"
    assert completed["fingerprint_digits"] == service.fingerprint_digits
    assert set(completed["fingerprint_components"]) == {
        "params",
        "learned",
        "predictions",
        "probabilities",
    }
    eval_ref = artifacts.put_table(X_eval)
    assert completed["eval_set"]["uri"] == eval_ref.uri == f"artifact://sha256/{eval_ref.sha256}"
    assert completed["eval_set"]["sha256"] == eval_ref.sha256
    assert artifacts.get_model(completed["model_artifact"]["sha256"]).score(
        X_eval, test["target"]
    ) == pytest.approx(model.score(X_eval, test["target"]))

    verdict = service.verify_reproducibility(training_id)
    assert verdict.reproducible, verdict.differences


def test_complete_training_registers_and_versions_the_model(
    service: TrainingService, store: es.EventStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    first = _train_forest(service, cancer)
    second = _train_forest(service, cancer)

    for version, outcome in enumerate([first, second], start=1):
        completed = store.read_stream(outcome.training_id)[-1]
        assert completed.event_type == EventTypes.TRAINING_COMPLETED
        (created,) = store.read_stream(outcome.model_id)
        assert created.event_type == EventTypes.MODEL_CREATED and created.stream_type == "model"
        assert created.payload["training_id"] == outcome.training_id
        assert created.payload["model_name"] == "cancer-forest"
        assert created.payload["fingerprint"] == outcome.fingerprint
        assert created.causation_id == completed.id
        assert created.correlation_id == outcome.training_id
        versioned = store.read_stream(model_name_stream("cancer-forest"))[version - 1]
        assert versioned.event_type == EventTypes.MODEL_VERSIONED
        assert versioned.payload["version"] == version == versioned.version
        assert versioned.payload["model_id"] == outcome.model_id
        assert versioned.causation_id == created.id
        assert versioned.correlation_id == outcome.training_id
    # Same seed, same data, same code: the same model, twice.
    assert first.fingerprint == second.fingerprint

    with pytest.raises(TrainingStateError, match="already completed"):
        service.complete_training(first.training_id, first.model, {"accuracy": 1.0})


def test_interrupted_completion_is_finished_by_a_retry(
    service: TrainingService,
    store: es.EventStore,
    monkeypatch: pytest.MonkeyPatch,
    cancer: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, _ = cancer
    training_id = service.start_training({}, service.artifacts.put_table(train), seed=1)
    model = train_forest(train, {"n_estimators": 3}, 1)
    original = TrainingService._register_model

    def crash(*args: Any) -> None:
        raise RuntimeError("process killed after training_completed")

    monkeypatch.setattr(TrainingService, "_register_model", crash)
    with pytest.raises(RuntimeError):
        service.complete_training(training_id, model, {"accuracy": 0.9}, model_name="m")
    monkeypatch.setattr(TrainingService, "_register_model", original)
    model_id = service.replay_training(training_id)["model_id"]
    assert store.stream_version(model_id) == 0

    retry = {"attempt": 2}
    assert service.complete_training(training_id, model, {"accuracy": 0.9}, metadata=retry) == (
        model_id
    )
    assert _types(store.read_stream(model_id)) == [EventTypes.MODEL_CREATED]
    [versioned] = store.read_stream(model_name_stream("m"))
    assert versioned.payload["model_id"] == model_id
    # The retry's metadata goes on the events the retry wrote.
    assert store.read_stream(model_id)[0].metadata == versioned.metadata == retry
    with pytest.raises(TrainingStateError, match="already completed"):
        service.complete_training(training_id, model, {"accuracy": 0.9})


def test_metadata_reaches_every_event_the_service_appends(
    service: TrainingService, store: es.EventStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    run = {"dagster_run_id": "run-42", "asset_key": "trained_model", "partition_key": None}
    outcome = _train_forest(service, cancer, metadata=run)
    service.verify_reproducibility(outcome.training_id, metadata=run)
    train, _ = cancer
    failing = service.start_training({}, service.artifacts.put_table(train), metadata=run)
    service.record_training_step(failing, {"step": 1, "loss": 0.5}, metadata=run)
    service.fail_training(failing, "diverged", metadata=run)

    events = list(store.read_all())
    assert _types(events) == [
        EventTypes.TRAINING_STARTED,
        EventTypes.TRAINING_COMPLETED,
        EventTypes.MODEL_CREATED,
        EventTypes.MODEL_VERSIONED,
        EventTypes.TRAINING_VERIFIED,
        EventTypes.TRAINING_STARTED,
        EventTypes.TRAINING_PROGRESS,
        EventTypes.TRAINING_FAILED,
    ]
    assert [e.metadata for e in events] == [run] * len(events)
    # The service's own envelope fields are untouched by it.
    assert {e.correlation_id for e in events[:5]} == {outcome.training_id}


def test_fail_path(
    service: TrainingService, store: es.EventStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, _ = cancer
    training_id = service.start_training({"lr": 0.1}, service.artifacts.put_table(train))
    service.record_training_step(training_id, {"step": 5, "loss": 1.5})
    try:
        raise MemoryError("CUDA out of memory")
    except MemoryError as exc:
        failed = service.fail_training(training_id, exc)
    assert failed.payload["error"] == "CUDA out of memory"
    assert failed.payload["error_type"] == "MemoryError"
    assert "Traceback" in failed.payload["traceback"]
    assert failed.payload["step"] == 5
    assert failed.correlation_id == training_id

    state = service.replay_training(training_id)
    assert state["status"] == "failed" and state["final_metrics"] is None
    assert state["error"] == "CUDA out of memory"
    with pytest.raises(TrainingStateError, match="has ended"):
        service.record_training_step(training_id, {"step": 6})
    with pytest.raises(TrainingStateError, match="failed"):
        service.complete_training(training_id, object(), {})
    with pytest.raises(TrainingStateError, match="only completed runs"):
        service.verify_reproducibility(training_id)
    with pytest.raises(TrainingStateError):
        service.fail_training(training_id, "again")
    assert store.stream_version(training_id) == 3  # nothing was written by the refusals


@pytest.mark.filterwarnings("ignore:X does not have valid feature names")
def test_train_fails_the_run_when_training_raises(
    service: TrainingService, store: es.EventStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, _ = cancer
    with pytest.raises(TypeError):
        service.train(train_forest, train, hyperparameters={"no_such_param": 1}, seed=0)
    started = next(store.read_all(event_types=[EventTypes.TRAINING_STARTED]))
    assert _types(store.read_stream(started.stream_id))[-1] == EventTypes.TRAINING_FAILED
    assert service.replay_training(started.stream_id)["status"] == "failed"
    # A model that cannot be fingerprinted on X_eval fails the run too.
    with pytest.raises(ValueError):
        service.train(train_forest, train, seed=0, X_eval=np.zeros((2, 3)))
    statuses = [
        service.replay_training(e.stream_id)["status"]
        for e in store.read_all(event_types=[EventTypes.TRAINING_STARTED])
    ]
    assert statuses == ["failed", "failed"]


def test_bad_input_is_refused_before_writing(
    service: TrainingService, store: es.EventStore
) -> None:
    with pytest.raises(TrainingNotFoundError, match="start_training returns it"):
        service.replay_training(str(uuid.uuid4()))
    with pytest.raises(TrainingNotFoundError):
        service.record_training_step(str(uuid.uuid4()), {"step": 1})
    with pytest.raises(es.EventStoreError, match="put_table"):
        service.start_training({}, "v1")
    training_id = service.start_training({}, "ab" * 32)
    with pytest.raises(es.EventStoreError, match="unknown step_data keys"):
        service.record_training_step(training_id, {"step": 1, "epoch_time": 3})
    with pytest.raises(es.EventStoreError, match="needs a 'step'"):
        service.record_training_step(training_id, {"loss": 1.0})
    with pytest.raises(es.EventStoreError, match="NaN"):
        service.complete_training(training_id, LogisticRegression(), {"loss": float("nan")})
    assert store.stream_version(training_id) == 1


# -- verification --------------------------------------------------------------------------------


def test_seeded_model_verifies(
    service: TrainingService, store: es.EventStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    outcome = _train_forest(service, cancer)
    verdict = service.verify_reproducibility(outcome.training_id)
    assert verdict.reproducible is True, verdict.differences
    assert verdict.actual_fingerprint == verdict.expected_fingerprint == outcome.fingerprint
    assert verdict.differences == []

    events = store.read_stream(outcome.training_id)
    assert _types(events)[-2:] == [EventTypes.TRAINING_COMPLETED, EventTypes.TRAINING_VERIFIED]
    assert events[-1].payload["reproducible"] is True
    assert events[-1].causation_id == events[-2].id
    assert events[-1].correlation_id == outcome.training_id
    assert service.replay_training(outcome.training_id)["verifications"][0]["reproducible"]


def test_changed_dataset_artifact_fails_verification_naming_the_dataset(
    service: TrainingService,
    store: es.EventStore,
    artifacts: ArtifactStore,
    cancer: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    outcome = _train_forest(service, cancer)
    started = store.read_stream(outcome.training_id)[0].payload
    path = artifacts.path_for(started["dataset_uri"])
    text = path.read_text()
    lines = text.split("\n")
    lines[2] = lines[2].replace(",", ",9", 1)  # change one cell of the first data row
    os.chmod(path, 0o644)
    path.write_text("\n".join(lines))

    verdict = service.verify_reproducibility(outcome.training_id)
    assert verdict.reproducible is False
    assert verdict.actual_fingerprint is None
    assert verdict.differences[0].startswith("dataset:")
    assert "breast_cancer" in verdict.differences[0]
    assert started["dataset_version"] in verdict.differences[0]
    recorded = store.read_stream(outcome.training_id)[-1]
    assert recorded.event_type == EventTypes.TRAINING_VERIFIED
    assert recorded.payload["reproducible"] is False
    assert recorded.payload["differences"] == verdict.differences


def test_hyperparameters_that_do_not_match_the_model_are_named(
    service: TrainingService, artifacts: ArtifactStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, test = cancer
    training_id = service.start_training(
        {},
        artifacts.put_table(train),
        hyperparameters={"n_estimators": 4},
        seed=2,
        train_fn=train_forest,
    )
    actually_trained = train_forest(train, {"n_estimators": 6}, 2)  # not what was recorded
    service.complete_training(training_id, actually_trained, {}, X_eval=test.drop(columns="target"))
    verdict = service.verify_reproducibility(training_id)
    assert verdict.reproducible is False
    assert verdict.actual_fingerprint not in (None, verdict.expected_fingerprint)
    assert any(d.startswith("hyperparameters:") for d in verdict.differences)


def test_changed_training_code_is_named(
    service: TrainingService, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    outcome = _train_forest(service, cancer)
    verdict = service.verify_reproducibility(outcome.training_id, train_fn=train_forest_differently)
    assert verdict.reproducible is False
    assert any(d.startswith("code:") and "source sha256" in d for d in verdict.differences)
    assert any(d.startswith("model:") for d in verdict.differences)


def test_changed_eval_set_artifact_fails_verification_naming_it(
    service: TrainingService,
    store: es.EventStore,
    artifacts: ArtifactStore,
    cancer: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    outcome = _train_forest(service, cancer)
    eval_set = store.read_stream(outcome.training_id)[-1].payload["eval_set"]
    path = artifacts.path_for(eval_set["uri"])
    os.chmod(path, 0o644)
    path.write_text(path.read_text().replace(",", ",1", 1))

    verdict = service.verify_reproducibility(outcome.training_id)
    assert verdict.reproducible is False and verdict.actual_fingerprint is None
    assert any(
        d.startswith("evaluation set:") and eval_set["uri"] in d for d in verdict.differences
    )


def test_training_function_can_be_recorded_by_name(
    service: TrainingService,
    store: es.EventStore,
    artifacts: ArtifactStore,
    cancer: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = cancer
    dataset = artifacts.put_table(train)
    # A "training_function" key in config is the user's; only train_fn names the function.
    config = {"training_function": "not:this", "note": "by name"}
    training_id = service.start_training(
        config, dataset, hyperparameters={"max_iter": 300}, seed=1, train_fn="logreg"
    )
    started = store.read_stream(training_id)[0].payload
    assert started["config"] == config
    assert started["training_function"] == "logreg"
    assert started["code_version"]["source_sha256"] == code_version(train_logreg).source_sha256
    model = train_logreg(artifacts.get_table(dataset), {"max_iter": 300}, 1)
    service.complete_training(training_id, model, {}, X_eval=test.drop(columns="target"))
    assert service.verify_reproducibility(training_id).reproducible

    unknown = service.start_training({}, dataset, seed=1, train_fn="nowhere:train")
    assert store.read_stream(unknown)[0].payload["training_function"] == "nowhere:train"
    service.complete_training(unknown, model, {})
    verdict = service.verify_reproducibility(unknown)
    assert verdict.reproducible is False
    assert any(d.startswith("code:") and "nowhere:train" in d for d in verdict.differences)


def test_training_functions_are_found_by_import_or_reported_missing(
    store: es.EventStore, artifacts: ArtifactStore, cancer: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    recorder = TrainingService(store, artifacts, functions=FUNCTIONS)
    forest = _train_forest(recorder, cancer)
    train, _ = cancer
    logreg = recorder.train(train_logreg, train, hyperparameters={"max_iter": 300}, seed=0)
    # A fresh process: nothing registered. "module:qualname" names are imported...
    fresh = TrainingService(store, artifacts, functions=TrainingFunctionRegistry())
    assert fresh.verify_reproducibility(forest.training_id).reproducible
    # ...but a custom name that was never registered here cannot be found.
    verdict = fresh.verify_reproducibility(logreg.training_id)
    assert verdict.reproducible is False and verdict.actual_fingerprint is None
    assert any(d.startswith("code:") and "'logreg'" in d for d in verdict.differences)


# -- inference -----------------------------------------------------------------------------------


def test_log_prediction_and_feedback_share_correlation_and_causation(
    store: es.EventStore, artifacts: ArtifactStore
) -> None:
    data = load_wine(as_frame=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(data.data, data.target)
    row = data.data.iloc[0]
    proba = model.predict_proba(data.data.iloc[[0]])[0]
    prediction = model.predict(data.data.iloc[[0]])[0]
    model_id = str(uuid.uuid4())

    inference_id = log_prediction(
        store,
        model_id,
        1,
        row,
        prediction,
        probabilities=dict(zip(model.classes_, proba, strict=True)),
        latency_ms=1.5,
    )
    requested, completed = store.read_stream(inference_id)
    assert (requested.event_type, completed.event_type) == (
        EventTypes.INFERENCE_REQUESTED,
        EventTypes.INFERENCE_COMPLETED,
    )
    assert requested.correlation_id == completed.correlation_id == inference_id
    assert {e.stream_type for e in (requested, completed)} == {"inference"}
    assert requested.payload["inputs"]["alcohol"] == float(row["alcohol"])
    assert completed.payload["prediction"] == int(prediction)
    assert set(completed.payload["probabilities"]) == {"0", "1", "2"}

    feedback = log_feedback(store, inference_id, np.int64(int(data.target.iloc[0])))
    assert feedback.event_type == EventTypes.INFERENCE_FEEDBACK
    assert feedback.stream_id == inference_id
    assert feedback.causation_id == completed.id
    assert feedback.correlation_id == inference_id
    assert feedback.payload["model_id"] == model_id and feedback.payload["model_version"] == 1
    assert feedback.payload["correct"] is (int(prediction) == int(data.target.iloc[0]))
    assert [e.id for e in store.read_correlated(inference_id)] == [
        requested.id,
        completed.id,
        feedback.id,
    ]

    # Large inputs go by reference, and a caller's correlation id is kept.
    ref = artifacts.put_table(data.data.head(50))
    batch_id = log_prediction(store, model_id, 1, ref, [0] * 50, correlation_id="batch-7")
    requested, _ = store.read_stream(batch_id)
    assert requested.payload["inputs_ref"]["sha256"] == ref.sha256
    assert requested.correlation_id == "batch-7"
    regression = log_prediction(store, model_id, 1, [1.0, 2.0], 3.25)
    assert log_feedback(store, regression, 3.0).payload["correct"] is None

    with pytest.raises(InferenceNotFoundError, match="log_prediction returned"):
        log_feedback(store, str(uuid.uuid4()), 1)


def test_inference_inputs_are_validated(store: es.EventStore) -> None:
    with pytest.raises(es.EventStoreError, match="ArtifactRef"):
        log_prediction(store, "m", 1, "s3://bucket/x", 1)
    with pytest.raises(es.EventStoreError, match="JSON"):
        log_prediction(store, "m", 1, {"x": float("inf")}, 1)
    assert store.head_position() == 0
