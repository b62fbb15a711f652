"""mlevents on Dagster: the event store and artifact resources, store sensors, the no-orphans
run-status sensors, and the factory that builds a model's ML pipeline from a `ModelSpec`.
The only part of `event_sourcing` that imports dagster.

    from event_sourcing.dagster import EventStoreResource, event_sensor, model_pipeline
"""

from event_sourcing.dagster.artifact_store import ArtifactStoreResource, default_artifacts_root
from event_sourcing.dagster.event_store import (
    EventStoreResource,
    default_store_url,
    idempotency_scope,
    keyed_event_id,
    mlevents_home,
    run_metadata,
)
from event_sourcing.dagster.health import read_models_asset
from event_sourcing.dagster.landing import LandingFolderResource, default_landing_folder
from event_sourcing.dagster.ml import (
    SERIAL_TAG,
    ModelPipeline,
    TrainingConfig,
    mlevents_definitions,
    model_pipeline,
)
from event_sourcing.dagster.orphans import close_orphaned_trainings, orphan_sensors
from event_sourcing.dagster.sensors import (
    CAUSE_TAG,
    QualityPolicy,
    cause_run_request,
    covered_by_own_run,
    event_sensor,
    quality_sensor,
)
from event_sourcing.ml import ModelSpec, PromotionPolicy, TabularDataset

__all__ = [
    "CAUSE_TAG",
    "SERIAL_TAG",
    "ArtifactStoreResource",
    "EventStoreResource",
    "LandingFolderResource",
    "ModelPipeline",
    "ModelSpec",
    "PromotionPolicy",
    "QualityPolicy",
    "TabularDataset",
    "TrainingConfig",
    "cause_run_request",
    "close_orphaned_trainings",
    "covered_by_own_run",
    "default_artifacts_root",
    "default_landing_folder",
    "default_store_url",
    "event_sensor",
    "idempotency_scope",
    "keyed_event_id",
    "mlevents_definitions",
    "mlevents_home",
    "model_pipeline",
    "orphan_sensors",
    "quality_sensor",
    "read_models_asset",
    "run_metadata",
]
