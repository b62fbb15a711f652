"""Helpers for the projection, read-model, temporal and provenance tests: a counter projection
and a runner process (`spawn` imports this module), and a small ML history to project.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import event_sourcing as es
from event_sourcing.catalog import (
    ArtifactRef,
    CodeVersion,
    DataIngested,
    DataPreprocessed,
    DataValidated,
    Environment,
    FeatureComputed,
    FeatureVersioned,
    InferenceCompleted,
    InferenceFeedback,
    InferenceRequested,
    ModelCreated,
    ModelDeployed,
    ModelRetired,
    ModelVersioned,
    QualityCheck,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.projections import Projection, ProjectionRunner

Hook = Callable[[es.RecordedEvent], None]


def counter_projection(
    name: str = "counter", hook: Hook | None = None, version: int = 1
) -> Projection:
    """Counts `tick` events and sums their `value` into `<name>_totals` (one row, id 'all').
    `hook(event)` runs inside the handler, after its write: raise there to fail it."""
    table = f"{name}_totals"

    def tick(tx: Any, event: es.RecordedEvent, typed: Any) -> None:
        tx.execute(
            f"INSERT INTO {table} (id, n, total) VALUES ('all', 1, ?) ON CONFLICT (id) DO UPDATE "
            f"SET n = {table}.n + 1, total = {table}.total + excluded.total",
            (event.payload["value"],),
        )
        if hook is not None:
            hook(event)

    return Projection(
        name=name,
        version=version,
        ddl=(f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, n BIGINT, total BIGINT)",),
        tables=(table,),
        handlers={"tick": tick},
    )


def totals(store: es.EventStore, name: str = "counter") -> tuple[int, int]:
    """(count, sum) in the counter's read model; (0, 0) when empty."""
    with store.transaction() as tx:
        row = tx.execute(f"SELECT n, total FROM {name}_totals WHERE id = 'all'").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def run_until_blocked(url: str, block_at: int, ready: Any, batch_size: int) -> None:
    """Catch the counter up; at position `block_at` (inside a batch's open transaction) signal
    `ready` and hang, so the parent can SIGKILL this process mid-batch."""

    def hook(event: es.RecordedEvent) -> None:
        if event.position == block_at:
            ready.set()
            threading.Event().wait()  # hang until killed

    store = es.connect(url, validate=False)
    ProjectionRunner(store, [counter_projection(hook=hook)]).run(batch_size=batch_size)


# -- a small ML history, written the way TrainingService / inference logging write it ------------


class SteppingClock:
    """A store clock that moves one minute per call, from 2025-01-01 00:00 UTC."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def artifact(text: str) -> ArtifactRef:
    return ArtifactRef(uri=f"artifact://sha256/{sha(text)}", sha256=sha(text))


RAW, CLEAN, FEATURES, OTHER = sha("raw"), sha("clean"), sha("features"), sha("other")


def _run(
    store: es.EventStore, run: str, steps: int, model: str | None, version: int = 0,
    dataset: str = FEATURES,
) -> dict[str, es.RecordedEvent]:
    out = {}
    [out["started"]] = store.append(
        run,
        [
            TrainingStarted(
                config={"estimator": "logreg", "C": 1.0}, dataset_id="wine",
                dataset_version=dataset, feature_version="fv1",
                code_version=CodeVersion(package_version="0.1.0", git_commit="abc123"),
                hyperparameters={"C": 1.0}, seed=7,
                environment=Environment(python="3.11.9", platform="linux"),
                user_id="ada", model_name="wine-clf",
            )
        ],
        stream_type="training_run", correlation_id=run,
    )
    for step in range(1, steps + 1):
        [out[f"step{step * 10}"]] = store.append(
            run,
            [TrainingProgress(step=step * 10, metrics={"accuracy": step / 10}, loss=1 / step)],
            correlation_id=run, causation_id=out["started"].id,
        )
    if model is None:
        [out["failed"]] = store.append(
            run, [TrainingFailed(error="diverged", error_type="FloatingPointError", step=30)],
            correlation_id=run,
        )
        return out
    ref = artifact(model)
    [out["completed"]] = store.append(
        run,
        [
            TrainingCompleted(
                model_id=model, model_artifact=ref, final_metrics={"accuracy": 0.9 + version / 100},
                duration_seconds=42.0, model_fingerprint=sha(model + "fp"),
                model_name="wine-clf",
            )
        ],
        correlation_id=run, causation_id=out["started"].id,
    )
    [out["created"]] = store.append(
        model,
        [ModelCreated(model_id=model, training_id=run, model_name="wine-clf", artifact=ref,
                      metrics={"accuracy": 0.9}, fingerprint=sha(model + "fp"))],
        stream_type="model", correlation_id=run, causation_id=out["completed"].id,
    )
    [out["versioned"]] = store.append(
        "model-name:wine-clf",
        [ModelVersioned(model_id=model, model_name="wine-clf", version=version, training_id=run,
                        artifact=ref, metrics={"accuracy": 0.9})],
        stream_type="model_name", correlation_id=run, causation_id=out["created"].id,
    )
    return out


def build_ml_history(store: es.EventStore) -> dict[str, es.RecordedEvent]:
    """Data -> features -> three runs (one fails) -> two models -> deployments -> predictions.

    Keys name the interesting events (e.g. "m2_deployed", "run1_step50", "inference_1")."""
    e: dict[str, es.RecordedEvent] = {}
    for batch in ("b1", "b2"):
        [e[f"ingested_{batch}"]] = store.append(
            "dataset:wine",
            [DataIngested(dataset_id="wine", dataset_version=RAW, source_uri=f"s3://lake/{batch}.csv",
                          rows=100, columns=["a", "b", "target"], content_sha256=sha(batch),
                          batch_id=batch, artifact=artifact(batch))],
        )
    [e["preprocessed"]] = store.append(
        "dataset:wine",
        [DataPreprocessed(dataset_id="wine", input_version=RAW, output_version=CLEAN,
                          steps=["dropna"], rows_in=200, rows_out=190)],
    )
    [e["validated"]] = store.append(
        "dataset:wine",
        [DataValidated(dataset_id="wine", dataset_version=CLEAN, passed=True, rows=190,
                       checks=[QualityCheck(name="no_nulls", passed=True)])],
    )
    [e["features"]] = store.append(
        "features:wine",
        [FeatureComputed(feature_set="wine_features", feature_version="fv1",
                         dataset_version=CLEAN, features=["a", "b"], rows=190,
                         artifact=artifact("features"))],
    )
    [e["features_versioned"]] = store.append(
        "features:wine",
        [FeatureVersioned(feature_set="wine_features", feature_version="fv1",
                          dataset_version=CLEAN, code_sha256=sha("feature code"),
                          features=["a", "b"])],
    )
    for key, value in _run(store, "run-1", 10, "m1", 1).items():
        e[f"run1_{key}"] = value
    for key, value in _run(store, "run-2", 3, None).items():
        e[f"run2_{key}"] = value
    for key, value in _run(store, "run-3", 2, "m2", 2).items():
        e[f"run3_{key}"] = value
    [e["verified"]] = store.append(
        "run-1",
        [TrainingVerified(training_id="run-1", reproducible=True,
                          expected_fingerprint=sha("m1fp"), actual_fingerprint=sha("m1fp"))],
    )
    [e["m1_deployed"]] = store.append(
        "deployments:wine-clf",
        [ModelDeployed(model_id="m1", model_name="wine-clf", version=1)],
    )
    [e["m1_staging"]] = store.append(
        "deployments:wine-clf",
        [ModelDeployed(model_id="m1", model_name="wine-clf", version=1, environment="staging")],
    )
    e["inference_1"] = _predict(store, "inf-1", "m1", 1, "a", "a")
    [e["m2_deployed"]] = store.append(
        "deployments:wine-clf",
        [ModelDeployed(model_id="m2", model_name="wine-clf", version=2, replaces_model_id="m1")],
    )
    [e["m1_staging_retired"]] = store.append(
        "deployments:wine-clf",
        [ModelRetired(model_id="m1", model_name="wine-clf", version=1, environment="staging")],
    )
    e["inference_2"] = _predict(store, "inf-2", "m2", 2, "b", "a")
    return e


def _predict(
    store: es.EventStore, inference_id: str, model: str, version: int, prediction: Any,
    actual: Any,
) -> es.RecordedEvent:
    _requested, completed = store.append(
        inference_id,
        [InferenceRequested(model_id=model, model_version=version, inputs={"a": 1.0}),
         InferenceCompleted(model_id=model, model_version=version, prediction=prediction)],
        stream_type="inference", correlation_id=inference_id,
    )
    store.append(
        inference_id,
        [InferenceFeedback(inference_id=inference_id, model_id=model, model_version=version,
                           actual=actual, correct=prediction == actual)],
        correlation_id=inference_id, causation_id=completed.id,
    )
    return completed
