"""The factory: a model spec in, its Dagster asset graph, jobs, sensors and schedules out;
several models and the shared read models, health checks and no-orphans sensors in one
`Definitions`.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster.event_store import EventStoreResource
from event_sourcing.dagster.health import read_models_asset
from event_sourcing.dagster.landing import LandingFolderResource
from event_sourcing.dagster.ml.data import data_assets
from event_sourcing.dagster.ml.model import model_assets
from event_sourcing.dagster.ml.names import Names
from event_sourcing.dagster.orphans import orphan_sensors
from event_sourcing.dagster.sensors import (
    DEFAULT_INTERVAL_SECONDS,
    QualityPolicy,
    event_sensor,
    quality_sensor,
)
from event_sourcing.ml.history import dataset_history
from event_sourcing.ml.spec import ModelSpec
from event_sourcing.serving import current_deployment

__all__ = [
    "PROVENANCE_TRIGGERS",
    "READ_MODELS_KEY",
    "SERIAL_TAG",
    "ModelPipeline",
    "mlevents_definitions",
    "model_pipeline",
]

SERIAL_TAG = {"mlevents/pipeline": "serial"}
"""On every pipeline run. With a run-queue limit of 1 on this tag (dagster.yaml:
`concurrency: runs: tag_concurrency_limits: [{key: mlevents/pipeline, limit: 1}]`), sensor-
and schedule-launched runs queue instead of racing for the dataset and deployment streams."""
READ_MODELS_KEY = dg.AssetKey("read_models")
PROVENANCE_TRIGGERS = (
    EventTypes.TRAINING_COMPLETED,
    EventTypes.MODEL_EVALUATED,
    EventTypes.MODEL_DEPLOYED,
    EventTypes.MODEL_RETIRED,
)


@dataclass
class ModelPipeline:
    """One model's Dagster objects, as `model_pipeline` built them."""

    names: Names
    assets: list[dg.AssetsDefinition]
    jobs: dict[str, Any]
    """ingest, retrain, provenance, full: asset jobs."""
    sensors: list[dg.SensorDefinition] = field(default_factory=list)
    schedules: list[dg.ScheduleDefinition] = field(default_factory=list)

    @property
    def spec(self) -> ModelSpec:
        return self.names.spec

    def keys(self, *names: str) -> list[dg.AssetKey]:
        return [self.names.key(name) for name in names]

    @property
    def ingestion_assets(self) -> list[dg.AssetKey]:
        """New batches, pending erasures (redacted_data), validation."""
        return self.keys("raw_data", "redacted_data", "validated_data")

    @property
    def retrain_assets(self) -> list[dg.AssetKey]:
        return self.keys("features", "trained_model", "model_evaluation", "deployed_model")

    @property
    def erasure_assets(self) -> list[dg.AssetKey]:
        """Redact, validate the redacted versions, retrain, evaluate, deploy."""
        return [*self.keys("redacted_data", "validated_data"), *self.retrain_assets]

    @property
    def provenance_assets(self) -> list[dg.AssetKey]:
        return [READ_MODELS_KEY, self.names.key("deployed_model_lineage")]


def _lineage_asset(names: Names, deployed: dg.AssetsDefinition) -> dg.AssetsDefinition:
    spec = names.spec

    @dg.asset(
        key=names.key("deployed_model_lineage"),
        deps=[deployed, READ_MODELS_KEY],
        group_name=names.group("provenance"),
        description=f"Lineage of the deployed {spec.name} (model <- training run <- features "
        "<- dataset <- ingestion batches), from the event log, as a tree (and Mermaid).",
    )
    def deployed_model_lineage(
        context: dg.AssetExecutionContext, event_store: EventStoreResource
    ) -> dg.MaterializeResult:
        from event_sourcing.cli.render import graph_text
        from event_sourcing.provenance import lineage

        store = event_store.store
        serving = current_deployment(store, spec.environment, spec.name)
        if serving is None:
            raise dg.Failure(f"no {spec.name} is deployed yet: materialize deployed_model first")
        graph = lineage(store, serving.model_id)
        mermaid = graph.to_mermaid()
        return dg.MaterializeResult(
            metadata={
                "model_id": serving.model_id,
                "model_version": dg.MetadataValue.int(serving.version),
                # Dagster's Markdown shows Mermaid as source; a text tree reads as lineage.
                "lineage": dg.MetadataValue.md(f"```text\n{graph_text(graph)}```"),
                "mermaid": dg.MetadataValue.text(mermaid),
            },
            data_version=dg.DataVersion(hashlib.sha256(mermaid.encode()).hexdigest()),
        )

    return deployed_model_lineage


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _landing_sensor(
    names: Names, job: Any, interval_seconds: int
) -> dg.SensorDefinition:
    stream = names.spec.dataset.stream

    @dg.sensor(
        name=names.job("landing_folder_sensor"),
        jobs=[job],
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="New batch CSVs in the landing folder (by content hash, skipping any "
        "already ingested) -> ingest and validate them.",
    )
    def landing_folder_sensor(
        context: dg.SensorEvaluationContext,
        landing: LandingFolderResource,
        event_store: EventStoreResource,
    ) -> dg.SensorResult:
        seen: list[str] = json.loads(context.cursor) if context.cursor else []
        known = set(seen)
        ingested = dataset_history(event_store.store, stream).ingested_hashes()
        new: dict[str, str] = {}
        for path in landing.batch_files(names.landing_subfolder):
            digest = _sha256_file(path)
            if digest not in known and digest not in ingested:
                new.setdefault(digest, path.name)
            known.add(digest)
        requests = []
        if new:
            key = hashlib.sha256(",".join(sorted(new)).encode()).hexdigest()
            requests.append(
                dg.RunRequest(
                    run_key=f"landing:{key}",
                    job_name=job.name,
                    tags={"mlevents/batch_files": ",".join(sorted(new.values()))[:1000]},
                )
            )
            context.log.info(f"new batch files: {sorted(new.values())}")
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(known)))

    return landing_folder_sensor


def model_pipeline(
    spec: ModelSpec,
    *,
    prefix: str | None = None,
    landing_subfolder: str | None = None,
    quality: QualityPolicy | None = None,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    ingest_cron: str = "0 6 * * *",
    retrain_cron: str = "0 3 * * 0",
) -> ModelPipeline:
    """A model's assets (raw_data -> redacted_data -> validated_data -> features ->
    trained_model -> model_evaluation -> deployed_model -> deployed_model_lineage), its jobs
    (ingest_and_validate, retrain, retrain_after_erasure, refresh_provenance, full_pipeline),
    sensors (landing folder, retrain on new data, retrain on erasure, retrain on quality drop,
    refresh provenance) and schedules (daily ingestion, weekly
    retrain), named under `prefix` (none: plain names). The read models asset
    (`read_models`) is shared: `mlevents_definitions` adds it.
    """
    names = Names(spec, prefix, landing_subfolder)
    raw, redacted, validated = data_assets(names)
    model = model_assets(names, validated)
    lineage = _lineage_asset(names, model[-1])
    pipeline = ModelPipeline(names, [raw, redacted, validated, *model, lineage], {})
    select = dg.AssetSelection.assets

    def job(name: str, keys: list[dg.AssetKey], description: str) -> Any:
        return dg.define_asset_job(
            names.job(name), selection=select(*keys), tags=SERIAL_TAG, description=description
        )

    ingest = job("ingest_and_validate", pipeline.ingestion_assets,
                 f"Ingest new {spec.dataset.dataset_id} batches, carry out pending erasures, "
                 "and validate the new versions.")
    retrain = job("retrain", pipeline.retrain_assets,
                  "Features, training, evaluation and (if the policy says so) deployment.")
    provenance = job("refresh_provenance", pipeline.provenance_assets,
                     "Catch the read models up with the log and publish the deployed model's "
                     "lineage.")
    erasure = job("retrain_after_erasure", pipeline.erasure_assets,
                  f"Redact the {spec.dataset.dataset_id} versions holding forgotten subjects' "
                  "rows, then retrain on the redacted data and replace a model trained on them.")
    full = job("full_pipeline",
               [*pipeline.ingestion_assets, *pipeline.retrain_assets, *pipeline.provenance_assets],
               "Everything, from new batches (and pending erasures) to a deployed model and "
               "its lineage.")
    pipeline.jobs = {"ingest": ingest, "retrain": retrain, "erasure": erasure,
                     "provenance": provenance, "full": full}

    def dataset_versions(causes: list[es.RecordedEvent]) -> dict[str, str]:
        versions = ",".join(e.payload["dataset_version"][:12] for e in causes)
        return {"mlevents/dataset_versions": versions}

    pipeline.sensors = [
        event_sensor(
            names.job("retrain_on_new_data"),
            [EventTypes.DATA_VALIDATED],
            job=retrain,
            filter=lambda e: bool(e.payload.get("passed"))
            and e.payload.get("dataset_id") == spec.dataset.dataset_id,
            tags=dataset_versions,
            covers=pipeline.retrain_assets,
            interval_seconds=interval_seconds,
            description=f"data_validated (passed) for a new {spec.dataset.dataset_id} version "
            "-> features, training, evaluation, deployment. One run per tick, keyed by the "
            "newest such event.",
        ),
        event_sensor(
            names.job("retrain_on_erasure"),
            [EventTypes.SUBJECT_ERASED],
            job=erasure,
            filter=lambda e: spec.dataset.dataset_id in (e.payload.get("dataset_ids") or ()),
            covers=pipeline.erasure_assets,
            interval_seconds=interval_seconds,
            description=f"subject_erased naming a {spec.dataset.dataset_id} version -> redact "
            "the snapshots holding the subject's rows, retrain on the redacted version, and "
            "retire the model trained on the erased data.",
        ),
        event_sensor(
            names.job("refresh_provenance"),
            PROVENANCE_TRIGGERS,
            job=provenance,
            filter=lambda e: e.payload.get("model_name") == spec.name,
            covers=pipeline.provenance_assets,
            interval_seconds=interval_seconds,
            description=f"training_completed / model_deployed / model_retired of {spec.name} "
            "-> refresh the read models and the deployed model's lineage.",
        ),
        quality_sensor(
            retrain,
            quality,
            name=names.job("retrain_on_quality_drop"),
            model_names=[spec.name],
            interval_seconds=interval_seconds,
        ),
        _landing_sensor(names, ingest, interval_seconds),
    ]
    pipeline.schedules = [
        dg.ScheduleDefinition(
            name=names.job("daily_ingestion"),
            job=ingest,
            cron_schedule=ingest_cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Ingest and validate whatever landed since the last run.",
        ),
        dg.ScheduleDefinition(
            name=names.job("weekly_retrain"),
            job=full,
            cron_schedule=retrain_cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="The whole pipeline: ingest, validate, retrain, evaluate, deploy, lineage.",
        ),
    ]
    return pipeline


def mlevents_definitions(
    pipelines: Sequence[ModelPipeline],
    *,
    resources: Mapping[str, Any] | None = None,
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS,
    max_lag: int = 0,
    jobs: Sequence[Any] = (),
) -> dg.Definitions:
    """One `Definitions` for several model pipelines: their assets, jobs, sensors and
    schedules, the shared `read_models` asset (with its lag and dead-letter checks), a sensor
    that refreshes it when inference feedback arrives, and the no-orphans sensors.

    Resources: `event_store`, `artifact_store`, `landing` (pass them, or merge them in later).
    """
    read_models = read_models_asset(
        deps=[p.names.key("deployed_model") for p in pipelines], max_lag=max_lag
    )
    feedback = event_sensor(
        "refresh_read_models_on_feedback",
        [EventTypes.INFERENCE_FEEDBACK, EventTypes.INFERENCE_COMPLETED],
        asset_selection=[READ_MODELS_KEY],
        interval_seconds=interval_seconds,
        description="inference results or feedback logged -> catch the read models up (the "
        "inference_quality read model shows them).",
    )
    return dg.Definitions(
        assets=[read_models, *(a for p in pipelines for a in p.assets)],
        jobs=[*(j for p in pipelines for j in p.jobs.values()), *jobs],
        sensors=[
            *(s for p in pipelines for s in p.sensors),
            feedback,
            *orphan_sensors(interval_seconds),
        ],
        schedules=[s for p in pipelines for s in p.schedules],
        resources=dict(resources or {}),
        # The graph is a chain of small steps: one process per run is faster than one per
        # step, and it opens the event store once per run.
        executor=dg.in_process_executor,
    )
