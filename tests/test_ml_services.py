"""The ML decisions as library services, exercised without Dagster on both backends: a
dataset's history (ingestion, validation), a recorded training run, the evaluation and the
deployment it decides.
"""

from pathlib import Path

import pytest

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.ml import PromotionPolicy
from event_sourcing.ml.data import ingest_batches, validation_verdict
from event_sourcing.ml.evaluation import (
    NoCandidateError,
    deployment_events,
    evaluate,
    verdict_event,
)
from event_sourcing.ml.history import dataset_history, latest_feature_version
from event_sourcing.ml.training import train_model
from event_sourcing.serving import current_deployment
from event_sourcing.training import TrainingService
from pipelines.dataset import seed_landing, write_invalid_batch
from pipelines.models import BREAST_CANCER_MODEL, WINE_MODEL

SPEC = WINE_MODEL
DATASET = SPEC.dataset


def _ingest(store: es.EventStore, artifacts: ArtifactStore, files: list[Path]) -> None:
    def emit(events: list[es.NewEvent], expected: int) -> list[es.RecordedEvent]:
        return store.append(DATASET.stream, events, expected_version=expected)

    ingest_batches(store, artifacts, DATASET, files, emit)


def _validate(store: es.EventStore, artifacts: ArtifactStore) -> None:
    history = dataset_history(store, DATASET.stream)
    verdicts = [validation_verdict(artifacts, DATASET, v) for v in history.pending()]
    store.append(DATASET.stream, verdicts, expected_version=history.stream_version)


def test_dataset_history_grows_by_batch_and_skips_a_bad_one(
    store: es.EventStore, tmp_path: Path
) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    files = seed_landing(tmp_path / "landing", batches=2, dataset_id="wine")
    _ingest(store, artifacts, files)
    _ingest(store, artifacts, files)  # the same files again: nothing new
    _validate(store, artifacts)
    history = dataset_history(store, DATASET.stream)
    assert [v.status for v in history.versions] == ["passed", "passed"]
    assert history.versions[-1].ingested.rows == 178  # the second version holds both batches

    # A breast cancer batch is not a wine batch: the schema check says which columns differ.
    bad = write_invalid_batch(tmp_path / "bad")
    _ingest(store, artifacts, [bad])
    _validate(store, artifacts)
    history = dataset_history(store, DATASET.stream)
    assert history.versions[-1].status == "failed"
    schema = history.versions[-1].validated.checks[0]  # type: ignore[union-attr]
    assert schema.name == "schema" and "unexpected columns ['mean_radius'" in (schema.detail or "")
    assert history.latest_passed() is history.versions[1]
    assert history.ingestion_parent() is history.versions[1]


def _features(store: es.EventStore, version: str) -> None:
    from event_sourcing.catalog import FeatureVersioned

    store.append(
        DATASET.feature_stream,
        [
            FeatureVersioned(
                feature_set=DATASET.feature_set,
                feature_version=SPEC.feature_version_of(version),
                dataset_version=version,
                code_sha256=SPEC.feature_code_sha256,
                features=list(DATASET.feature_columns),
            )
        ],
    )


def test_train_evaluate_promote_and_retire_without_dagster(
    store: es.EventStore, tmp_path: Path
) -> None:
    artifacts = ArtifactStore(tmp_path / "artifacts")
    with pytest.raises(NoCandidateError, match="no version of wine_classifier"):
        evaluate(store, artifacts, SPEC)
    _ingest(store, artifacts, seed_landing(tmp_path / "landing", batches=1, dataset_id="wine"))
    _validate(store, artifacts)
    _features(store, dataset_history(store, DATASET.stream).versions[-1].version)
    found = latest_feature_version(store, DATASET.feature_stream)
    assert found is not None
    service = TrainingService(store, artifacts)

    first = train_model(service, SPEC, found[0], hyperparameters={"C": 1.0}, seed=7,
                        idempotency_key="k1")
    assert first.metrics["accuracy"] > 0.8 and "cv_accuracy" in first.metrics
    assert not first.resumed
    again = train_model(service, SPEC, found[0], hyperparameters={"C": 1.0}, seed=7,
                        idempotency_key="k1")
    assert (again.training_id, again.model_id, again.reused) == (
        first.training_id, first.model_id, True
    )

    evaluation = evaluate(store, artifacts, SPEC)
    assert evaluation["champion"] is None and evaluation["promote"]
    seen = evaluation.pop("seen_version")
    verdict_now = verdict_event(SPEC, evaluation, store.clock())
    (verdict,) = store.append(SPEC.deployment_stream, [verdict_now], expected_version=seen)
    store.append(SPEC.deployment_stream, deployment_events(SPEC, evaluation, store.clock()),
                 expected_version=verdict.version)
    serving = current_deployment(store, SPEC.environment, SPEC.name)
    assert serving is not None and serving.model_id == first.model_id

    # Another seed trains another model of the same data: better, tied or worse, the default
    # policy promotes it only if strictly better; a min_gain of 1 never does.
    second = train_model(service, SPEC, found[0], hyperparameters={"C": 0.05}, seed=8)
    evaluation = evaluate(store, artifacts, SPEC)
    candidate, champion = evaluation["candidate"], evaluation["champion"]
    assert (candidate["model_id"], champion["model_id"]) == (second.model_id, first.model_id)
    assert evaluation["promote"] is (
        candidate["metrics"]["accuracy"] > champion["metrics"]["accuracy"]
    )
    strict = PromotionPolicy(min_gain=1.0).decide(candidate, champion)
    assert not strict.promote and "minimum 1" in strict.reason
    if evaluation["promote"]:
        retired, deployed = deployment_events(SPEC, evaluation, store.clock())
        assert retired.model_id == first.model_id and deployed.replaces_model_id == first.model_id


def test_a_spec_name_that_cannot_name_streams_is_refused() -> None:
    from dataclasses import replace

    with pytest.raises(es.ConfigurationError, match="model name"):
        replace(BREAST_CANCER_MODEL, name="no spaces please")
