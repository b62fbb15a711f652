"""The pipeline's jobs: asset jobs for ingestion, retraining, provenance and the full pipeline,
plus the op job that scores a batch with the deployed model.
"""

from typing import Any

import dagster as dg

from pipelines.inference import inference_job

__all__ = [
    "FULL_PIPELINE_ASSETS",
    "INGESTION_ASSETS",
    "PROVENANCE_ASSETS",
    "RETRAIN_ASSETS",
    "SERIAL_TAG",
    "full_pipeline_job",
    "inference_job",
    "ingestion_job",
    "jobs",
    "provenance_job",
    "retrain_job",
]

INGESTION_ASSETS = [dg.AssetKey("raw_data"), dg.AssetKey("validated_data")]
RETRAIN_ASSETS = [
    dg.AssetKey("features"),
    dg.AssetKey("trained_model"),
    dg.AssetKey("model_evaluation"),
    dg.AssetKey("deployed_model"),
]
PROVENANCE_ASSETS = [dg.AssetKey("read_models"), dg.AssetKey("deployed_model_lineage")]
FULL_PIPELINE_ASSETS = [*INGESTION_ASSETS, *RETRAIN_ASSETS, *PROVENANCE_ASSETS]

SERIAL_TAG = {"mlevents/pipeline": "serial"}
"""On every pipeline run. With a run-queue limit of 1 on this tag (dagster.yaml:
`concurrency: runs: tag_concurrency_limits: [{key: mlevents/pipeline, limit: 1}]`), sensor-
and schedule-launched runs queue instead of racing for the dataset and deployment streams
(which would otherwise make the loser fail safely with a concurrency error)."""

ingestion_job = dg.define_asset_job(
    "ingest_and_validate",
    tags=SERIAL_TAG,
    selection=dg.AssetSelection.assets(*INGESTION_ASSETS),
    description="Ingest new landing-folder batches and validate the new dataset versions.",
)
retrain_job = dg.define_asset_job(
    "retrain",
    tags=SERIAL_TAG,
    selection=dg.AssetSelection.assets(*RETRAIN_ASSETS),
    description="Features, training, evaluation and (if at least as good) deployment.",
)
provenance_job = dg.define_asset_job(
    "refresh_provenance",
    tags=SERIAL_TAG,
    selection=dg.AssetSelection.assets(*PROVENANCE_ASSETS),
    description="Catch the read models up with the log and publish the deployed model's lineage.",
)
full_pipeline_job = dg.define_asset_job(
    "full_pipeline",
    tags=SERIAL_TAG,
    selection=dg.AssetSelection.assets(*FULL_PIPELINE_ASSETS),
    description="Everything, from new batches to a deployed model and its lineage.",
)

jobs: list[Any] = [  # JobDefinition or unresolved asset jobs
    ingestion_job,
    retrain_job,
    provenance_job,
    full_pipeline_job,
    inference_job,
]
