"""The Dagster asset graph run for real with dg.materialize() against a temporary event store.

Checks the events each asset appends, their order and correlation, and that Dagster's data and
code versions are the same hashes the events carry.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

import event_sourcing as es
from event_sourcing import cli
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import EventTypes
from event_sourcing.catalog.ml_events import ModelEvaluated
from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource
from event_sourcing.serving import current_deployment, load_deployed_model
from pipelines.dataset import (
    expected_columns,
    seed_landing,
    write_drifted_batch,
    write_invalid_batch,
    write_new_batch,
)
from pipelines.definitions import all_assets, defs, make_resources
from pipelines.inference import inference_job
from pipelines.jobs import FULL_PIPELINE_ASSETS, INGESTION_ASSETS, RETRAIN_ASSETS
from pipelines.models import BREAST_CANCER_MODEL
from pipelines.state import DATASET_STREAM, MODEL_NAME, dataset_history

INGESTION_TYPES = [
    EventTypes.DATA_INGESTED,
    *[EventTypes.DATA_INGESTED, EventTypes.DATA_PREPROCESSED] * 2,
]
FULL_RUN_TYPES = [
    *INGESTION_TYPES,
    *[EventTypes.DATA_VALIDATED] * 3,
    EventTypes.FEATURE_COMPUTED,
    EventTypes.FEATURE_VERSIONED,
    EventTypes.TRAINING_STARTED,
    *[EventTypes.TRAINING_PROGRESS] * 3,
    EventTypes.TRAINING_COMPLETED,
    EventTypes.MODEL_CREATED,
    EventTypes.MODEL_VERSIONED,
    EventTypes.MODEL_EVALUATED,
    EventTypes.MODEL_DEPLOYED,
]


class Pipeline:
    """One pipeline installation in a temporary folder: store, artifacts, landing folder."""

    def __init__(self, url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
        self.url = url
        self.landing = tmp_path / "landing"
        self.artifacts = tmp_path / "artifacts"
        self.instance = instance
        self.resources = make_resources(url, str(self.artifacts), str(self.landing))

    def materialize(
        self, keys: list[dg.AssetKey] | None = None, **kwargs: Any
    ) -> dg.ExecuteInProcessResult:
        selection = None if keys is None else dg.AssetSelection.assets(*keys)
        return dg.materialize(
            all_assets,
            selection=selection,
            resources=self.resources,
            instance=self.instance,
            **kwargs,
        )

    def events(self) -> list[es.RecordedEvent]:
        with es.connect(self.url) as store:
            return list(store.read_all())


@pytest.fixture
def instance() -> Any:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def sqlite_pipeline(tmp_path: Path, instance: dg.DagsterInstance) -> Pipeline:
    pipeline = Pipeline(f"sqlite:///{tmp_path / 'events.db'}", tmp_path, instance)
    seed_landing(pipeline.landing, batches=3, seed=0)
    return pipeline


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Asset key -> its AssetMaterialization (typed Any: metadata values are a wide union)."""
    return {
        event.asset_key.to_user_string(): event.materialization  # type: ignore[union-attr]
        for event in result.get_asset_materialization_events()
    }


def test_definitions_load_with_the_documented_resource_keys() -> None:
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    assert {"event_store", "artifact_store", "landing"} <= set(repository.get_top_level_resources())
    breast_cancer = {key.to_user_string() for key in FULL_PIPELINE_ASSETS}
    # The second model of the demo, from the same factory, under wine/ (read_models is shared).
    wine = {f"wine/{key}" for key in breast_cancer - {"read_models"}}
    assert {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()} == (
        breast_cancer | wine | {"relayed_events", "log_integrity"}  # relay.py, integrity.py
    )
    for sensor in repository.sensor_defs:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name
    for schedule in repository.schedule_defs:
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING, schedule.name
    assert {job.name for job in repository.get_all_jobs()} >= {
        "ingest_and_validate",
        "retrain",
        "refresh_provenance",
        "full_pipeline",
        "inference_job",
        "wine_retrain",
    }


def test_event_store_resource_defaults_and_lifecycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance
) -> None:
    monkeypatch.delenv("MLEVENTS_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert EventStoreResource().resolved_url() == f"sqlite:///{tmp_path}/.mlevents/events.db"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert EventStoreResource().resolved_url() == (f"sqlite:///{tmp_path}/home/mlevents/events.db")
    assert ArtifactStoreResource().resolved_root() == tmp_path / "home" / "mlevents" / "artifacts"
    monkeypatch.setenv("MLEVENTS_URL", "sqlite:///elsewhere.db")
    assert EventStoreResource().resolved_url() == "sqlite:///elsewhere.db"
    with pytest.raises(es.ConfigurationError, match="not open"):
        _ = EventStoreResource().store

    # One store per run, opened at setup and closed at teardown, however many steps use it.
    opened: list[es.EventStore] = []
    real_connect = es.connect

    def counting_connect(url: str, **kwargs: Any) -> es.EventStore:
        store = real_connect(url, **kwargs)
        opened.append(store)
        return store

    monkeypatch.setattr("event_sourcing.dagster.event_store.es.connect", counting_connect)
    pipeline = Pipeline(f"sqlite:///{tmp_path / 'events.db'}", tmp_path, instance)
    seed_landing(pipeline.landing, batches=1)
    assert pipeline.materialize().success
    assert len(opened) == 1


def test_whole_graph_materializes_and_the_log_tells_the_same_story(
    store_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    pipeline = Pipeline(store_url, tmp_path, instance)
    seed_landing(pipeline.landing, batches=3, seed=0)

    result = pipeline.materialize()

    assert result.success
    events = pipeline.events()
    assert [e.event_type for e in events] == FULL_RUN_TYPES
    assert [e.position for e in events] == sorted(e.position for e in events)
    # One run, one correlation id: the Dagster run id.
    assert {e.correlation_id for e in events} == {result.run_id}
    # Every event, the training service's included, carries the run's ids in its metadata.
    asset_of = {"data": {"raw_data", "validated_data"}, "feature": {"features"}}
    asset_of["training"] = asset_of["model"] = {"trained_model"}
    for event in events:
        assert event.metadata["dagster_run_id"] == result.run_id, event.event_type
        assert "partition_key" in event.metadata
        if event.event_type not in {EventTypes.MODEL_EVALUATED, EventTypes.MODEL_DEPLOYED}:
            assert event.metadata["asset_key"] in asset_of[event.event_type.split("_")[0]]
    evaluated, deployed = events[-2:]
    assert evaluated.metadata["asset_key"] == "model_evaluation"
    assert deployed.metadata["asset_key"] == "deployed_model"

    by_type: dict[str, list[es.RecordedEvent]] = {}
    for event in events:
        by_type.setdefault(event.event_type, []).append(event)
    ingested = by_type[EventTypes.DATA_INGESTED]
    assert [e.payload["batch_id"] for e in ingested] == [
        "batch_000.csv",
        "batch_001.csv",
        "batch_002.csv",
    ]
    assert [e.payload["rows"] for e in ingested] == [190, 380, 569]
    assert ingested[0].payload["columns"] == expected_columns()
    assert ingested[0].payload["source_uri"].startswith("file://")
    assert ingested[1].metadata["parent_dataset_version"] == ingested[0].payload["dataset_version"]
    appended = by_type[EventTypes.DATA_PREPROCESSED]
    assert [(e.payload["input_version"], e.payload["output_version"]) for e in appended] == [
        (ingested[0].payload["dataset_version"], ingested[1].payload["dataset_version"]),
        (ingested[1].payload["dataset_version"], ingested[2].payload["dataset_version"]),
    ]
    assert all(e.payload["passed"] for e in by_type[EventTypes.DATA_VALIDATED])

    dataset_version = ingested[-1].payload["dataset_version"]
    versioned = by_type[EventTypes.FEATURE_VERSIONED][0].payload
    assert versioned["dataset_version"] == dataset_version
    assert versioned["code_sha256"] == BREAST_CANCER_MODEL.feature_code_sha256
    assert versioned["feature_version"] == BREAST_CANCER_MODEL.feature_version_of(dataset_version)
    started = by_type[EventTypes.TRAINING_STARTED][0].payload
    assert started["dataset_version"] == dataset_version
    assert started["feature_version"] == versioned["feature_version"]
    assert started["code_version"]["source_sha256"] == BREAST_CANCER_MODEL.training_code_sha256
    assert [e.payload["step"] for e in by_type[EventTypes.TRAINING_PROGRESS]] == [1, 2, 3]
    completed = by_type[EventTypes.TRAINING_COMPLETED][0].payload
    assert completed["final_metrics"]["accuracy"] > 0.9
    assert deployed.payload["model_id"] == completed["model_id"]
    assert deployed.payload["version"] == 1
    # The promotion verdict is in the log, and the deployment names it as its cause.
    assert evaluated.payload["model_id"] == completed["model_id"]
    assert (evaluated.payload["promoted"], evaluated.payload["reason"]) == (
        True,
        "no model is deployed yet",
    )
    assert evaluated.payload["champion_model_id"] is None
    assert evaluated.payload["champion_metrics"] is None
    assert evaluated.payload["dataset_version"] == dataset_version
    assert evaluated.payload["metrics"]["accuracy"] == completed["final_metrics"]["accuracy"]
    assert evaluated.causation_id == by_type[EventTypes.MODEL_VERSIONED][0].id
    assert deployed.causation_id == evaluated.id
    assert evaluated.stream_id == deployed.stream_id

    # Dagster's versions are the event store's hashes.
    mats = materializations(result)
    assert mats["raw_data"].tags["dagster/data_version"] == dataset_version
    assert mats["validated_data"].tags["dagster/data_version"] == dataset_version
    assert mats["features"].tags["dagster/data_version"] == versioned["feature_version"]
    assert mats["features"].tags["dagster/code_version"] == BREAST_CANCER_MODEL.feature_code_sha256
    assert mats["trained_model"].tags["dagster/data_version"] == completed["model_fingerprint"]
    assert (
        mats["trained_model"].tags["dagster/code_version"]
        == BREAST_CANCER_MODEL.training_code_sha256
    )
    assert (
        mats["trained_model"].tags["dagster/input_data_version/features"]
        == versioned["feature_version"]
    )
    assert mats["deployed_model"].tags["dagster/data_version"] == completed["model_id"]
    # Metadata a user clicks on: event ids and positions, versions, metrics.
    assert mats["raw_data"].metadata["event_id"].value == ingested[-1].id
    assert mats["raw_data"].metadata["event_position"].value == ingested[-1].position
    assert mats["trained_model"].metadata["model_id"].value == completed["model_id"]
    assert mats["deployed_model"].metadata["deployed_event_id"].value == deployed.id
    assert mats["model_evaluation"].metadata["evaluated_event_id"].value == evaluated.id
    tree = mats["deployed_model_lineage"].metadata["lineage"].value  # readable in the UI
    assert tree.startswith("```text\n") and f"· {completed['model_id']}\n" in tree
    assert "└── training " in tree and "(trained_on)" in tree
    assert completed["model_id"] in mats["deployed_model_lineage"].metadata["mermaid"].value
    assert mats["read_models"].metadata["rows"].value["deployments"] == 1
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_ingestion_is_idempotent_per_file_content(sqlite_pipeline: Pipeline) -> None:
    first = sqlite_pipeline.materialize(INGESTION_ASSETS)
    before = sqlite_pipeline.events()
    second = sqlite_pipeline.materialize(INGESTION_ASSETS)

    assert first.success and second.success
    assert sqlite_pipeline.events() == before
    version = materializations(first)["raw_data"].tags["dagster/data_version"]
    assert materializations(second)["raw_data"].tags["dagster/data_version"] == version
    assert materializations(second)["raw_data"].metadata["new_batches"].value == []


def test_a_bad_batch_fails_the_checks_and_is_not_built_upon(sqlite_pipeline: Pipeline) -> None:
    assert sqlite_pipeline.materialize(INGESTION_ASSETS).success
    good_version = [
        e.payload["dataset_version"]
        for e in sqlite_pipeline.events()
        if e.event_type == EventTypes.DATA_INGESTED
    ][-1]
    write_invalid_batch(sqlite_pipeline.landing, name="zz_invalid")

    result = sqlite_pipeline.materialize(INGESTION_ASSETS)

    assert result.success  # checks fail; the run records that and goes on
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["no_missing_values"].passed
    assert "mean_radius (1)" in (checks["no_missing_values"].description or "")
    assert not checks["value_ranges"].passed
    assert "mean_area" in (checks["value_ranges"].description or "")
    assert "target" in (checks["value_ranges"].description or "")
    assert checks["schema"].passed
    verdict = sqlite_pipeline.events()[-1]
    assert verdict.event_type == EventTypes.DATA_VALIDATED
    assert verdict.payload["passed"] is False
    failed = {c["name"]: c["detail"] for c in verdict.payload["checks"] if not c["passed"]}
    assert set(failed) == {"no_missing_values", "value_ranges"}
    # The validated dataset is still the last good version.
    assert materializations(result)["validated_data"].tags["dagster/data_version"] == good_version

    # The next good batch builds on the last good version, not on the bad one.
    write_new_batch(sqlite_pipeline.landing, name="zzz_new", rows=30, seed=5)
    assert sqlite_pipeline.materialize(INGESTION_ASSETS).success
    with es.connect(sqlite_pipeline.url) as store:
        history = dataset_history(store)
    assert [v.status for v in history.versions] == ["passed"] * 3 + ["failed", "passed"]
    newest = history.versions[-1]
    assert newest.ingested_event.metadata["parent_dataset_version"] == good_version
    assert newest.ingested.rows == 569 + 30


def test_a_failing_training_run_is_recorded_as_training_failed(
    sqlite_pipeline: Pipeline,
) -> None:
    assert sqlite_pipeline.materialize([*INGESTION_ASSETS, dg.AssetKey("features")]).success

    result = sqlite_pipeline.materialize(
        [dg.AssetKey("trained_model")],
        run_config={"ops": {"trained_model": {"config": {"C": -1.0}}}},
        raise_on_error=False,
    )

    assert not result.success
    run_events = [e for e in sqlite_pipeline.events() if e.correlation_id == result.run_id]
    assert [e.event_type for e in run_events] == [
        EventTypes.TRAINING_STARTED,
        EventTypes.TRAINING_FAILED,
    ]
    failed = run_events[-1].payload
    assert failed["error_type"] == "InvalidParameterError"
    assert "'C' parameter" in failed["error"]


def test_retraining_promotes_only_a_better_model(sqlite_pipeline: Pipeline) -> None:
    assert sqlite_pipeline.materialize().success
    first_model = sqlite_pipeline.events()[-1].payload["model_id"]

    # Same data again: the new model is identical, so it is not promoted, and the check warns.
    same = sqlite_pipeline.materialize(RETRAIN_ASSETS)
    evaluation = materializations(same)["model_evaluation"].metadata
    assert evaluation["promote"].value is False
    assert "identical" in evaluation["reason"].value
    (check,) = same.get_asset_check_evaluations()
    assert check.check_name == "candidate_promoted" and not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert [e.event_type for e in sqlite_pipeline.events()].count(EventTypes.MODEL_DEPLOYED) == 1
    # ... and the log, not only Dagster, says so and why.
    rejected = sqlite_pipeline.events()[-1]
    assert rejected.event_type == EventTypes.MODEL_EVALUATED
    assert rejected.payload["promoted"] is False
    assert rejected.payload["reason"] == evaluation["reason"].value
    assert "identical" in rejected.payload["reason"]
    assert rejected.payload["champion_model_id"] == first_model != rejected.payload["model_id"]
    assert rejected.payload["champion_metrics"] == rejected.payload["metrics"]
    assert rejected.correlation_id == same.run_id
    assert rejected.metadata["dagster_run_id"] == same.run_id

    # New (drifted) data: the candidate beats the champion on the new held-out rows.
    write_drifted_batch(sqlite_pipeline.landing, rows=150, seed=2)
    result = sqlite_pipeline.materialize([*INGESTION_ASSETS, *RETRAIN_ASSETS])
    evaluation = materializations(result)["model_evaluation"].metadata["evaluation"].value
    candidate, champion = evaluation["candidate"], evaluation["champion"]
    assert champion["model_id"] == first_model
    assert evaluation["promote"] is (
        candidate["metrics"]["accuracy"] > champion["metrics"]["accuracy"]
    )
    assert evaluation["promote"], "the drift-trained candidate should win on drifted held-out rows"
    tail = sqlite_pipeline.events()[-3:]
    assert [e.event_type for e in tail] == [
        EventTypes.MODEL_EVALUATED,
        EventTypes.MODEL_RETIRED,
        EventTypes.MODEL_DEPLOYED,
    ]
    verdict, retired, deployed = tail
    assert (verdict.payload["promoted"], verdict.payload["reason"]) == (
        True,
        evaluation["reason"],
    )
    assert verdict.payload["model_id"] == candidate["model_id"]
    assert verdict.payload["champion_model_id"] == first_model
    assert verdict.payload["metrics"] == candidate["metrics"]
    assert verdict.payload["champion_metrics"] == champion["metrics"]
    assert retired.causation_id == deployed.causation_id == verdict.id
    assert retired.payload["model_id"] == first_model
    assert retired.payload["replaced_by_model_id"] == candidate["model_id"]
    assert deployed.payload["replaces_model_id"] == first_model
    assert deployed.payload["version"] == candidate["version"] == 3
    assert {verdict.correlation_id, retired.correlation_id, deployed.correlation_id} == {
        result.run_id
    }
    with es.connect(sqlite_pipeline.url) as store:
        serving = current_deployment(store, model_name=MODEL_NAME)
    assert serving is not None and serving.model_id == candidate["model_id"]


def test_a_verdict_is_only_carried_out_if_the_deployment_stream_did_not_move(
    sqlite_pipeline: Pipeline,
) -> None:
    evaluate = [*INGESTION_ASSETS, *RETRAIN_ASSETS[:-1]]
    assert sqlite_pipeline.materialize(evaluate).success
    verdict = sqlite_pipeline.events()[-1]
    assert verdict.event_type == EventTypes.MODEL_EVALUATED and verdict.payload["promoted"]
    # Another run records a verdict of its own before this one is carried out.
    with es.connect(sqlite_pipeline.url) as store:
        store.append(verdict.stream_id, [ModelEvaluated(**{**verdict.payload, "promoted": False})])

    result = sqlite_pipeline.materialize([dg.AssetKey("deployed_model")], raise_on_error=False)

    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "changed since the evaluation" in str(failure.step_failure_data.error)
    assert EventTypes.MODEL_DEPLOYED not in [e.event_type for e in sqlite_pipeline.events()]


def test_inference_job_and_predict_command_log_predictions_and_feedback(
    sqlite_pipeline: Pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sqlite_pipeline.materialize().success
    batch = write_drifted_batch(tmp_path / "scoring", rows=40, seed=4)
    before = len(sqlite_pipeline.events())

    result = inference_job.execute_in_process(
        run_config={"ops": {"score_batch_op": {"config": {"path": str(batch)}}}},
        resources=sqlite_pipeline.resources,
        instance=sqlite_pipeline.instance,
    )

    assert result.success
    summary = result.output_for_node("score_batch_op")
    assert summary["rows"] == summary["predictions_logged"] == summary["feedback_logged"] == 40
    new = sqlite_pipeline.events()[before:]
    assert [e.event_type for e in new[:3]] == [
        EventTypes.INFERENCE_REQUESTED,
        EventTypes.INFERENCE_COMPLETED,
        EventTypes.INFERENCE_FEEDBACK,
    ]
    assert len(new) == 120
    assert {e.correlation_id for e in new} == {result.run_id}
    assert all(e.metadata["dagster_run_id"] == result.run_id for e in new)
    # Each prediction names the environment whose deployment served it.
    requested = [e for e in new if e.event_type == EventTypes.INFERENCE_REQUESTED]
    assert {e.payload["environment"] for e in requested} == {"production"}
    feedback = [e for e in new if e.event_type == EventTypes.INFERENCE_FEEDBACK]
    accuracy = sum(e.payload["correct"] for e in feedback) / len(feedback)
    assert accuracy == pytest.approx(summary["accuracy"])
    assert accuracy < 0.8  # the drifted batch fools the model trained before the drift

    # The same path from the command line, without labels.
    frame = pd.read_csv(batch).drop(columns=["target"])
    unlabelled = tmp_path / "unlabelled.csv"
    frame.to_csv(unlabelled, index=False)
    status = cli.main(
        [
            *("predict", sqlite_pipeline.url, "--csv", str(unlabelled)),
            *("--artifacts", str(sqlite_pipeline.artifacts), "--json"),
        ]
    )
    assert status == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 40
    with es.connect(sqlite_pipeline.url) as store:
        loaded = load_deployed_model(store, ArtifactStore(sqlite_pipeline.artifacts))
        expected = loaded.model.predict(frame[loaded.feature_columns])
        counts = store.counts_by_type()
    assert [int(line.split('"prediction":')[1].split(",")[0]) for line in lines] == list(expected)
    assert counts[EventTypes.INFERENCE_COMPLETED] == 80
    assert counts[EventTypes.INFERENCE_FEEDBACK] == 40


def test_dataset_stream_is_the_ingestion_record(sqlite_pipeline: Pipeline) -> None:
    assert sqlite_pipeline.materialize(INGESTION_ASSETS).success
    with es.connect(sqlite_pipeline.url) as store:
        stream = store.read_stream(DATASET_STREAM)
    assert [e.event_type for e in stream] == INGESTION_TYPES + [EventTypes.DATA_VALIDATED] * 3
    assert [e.version for e in stream] == list(range(1, 9))
