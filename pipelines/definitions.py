"""This repository's Dagster code location, built from the integration: two models from the
same factory (breast cancer, wine), the relay, and `defs` (loaded by workspace.yaml).

Settings come from the environment when the location loads (MLEVENTS_SENSOR_INTERVAL,
MLEVENTS_QUALITY_*, MLEVENTS_INGEST_CRON / _RETRAIN_CRON); the resources read theirs (store
URL, artifact and landing folders) when a run or tick opens them.
"""

import os

import dagster as dg

from event_sourcing.dagster import (
    ArtifactStoreResource,
    EventStoreResource,
    LandingFolderResource,
    ModelPipeline,
    QualityPolicy,
    mlevents_definitions,
    model_pipeline,
)
from event_sourcing.dagster.health import read_models_asset
from pipelines.inference import inference_job
from pipelines.integrity import integrity_defs
from pipelines.models import BREAST_CANCER_MODEL, WINE_MODEL
from pipelines.relay import relay_defs

__all__ = [
    "DEFAULT_INGEST_CRON",
    "DEFAULT_RETRAIN_CRON",
    "SENSOR_INTERVAL",
    "all_assets",
    "breast_cancer",
    "build_pipelines",
    "defs",
    "make_resources",
    "quality_policy_from_env",
    "wine",
]

SENSOR_INTERVAL = int(os.environ.get("MLEVENTS_SENSOR_INTERVAL", "10"))
DEFAULT_INGEST_CRON = "0 6 * * *"
"""06:00 UTC every day."""
DEFAULT_RETRAIN_CRON = "0 3 * * 0"
"""03:00 UTC every Sunday."""


def make_resources(
    url: str | None = None, artifacts_root: str | None = None, landing_path: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """The three resources, on the given locations or the defaults (env vars, DAGSTER_HOME)."""
    return {
        "event_store": EventStoreResource(url=url),
        "artifact_store": ArtifactStoreResource(root=artifacts_root),
        "landing": LandingFolderResource(path=landing_path),
    }


def quality_policy_from_env() -> QualityPolicy:
    """From $MLEVENTS_QUALITY_THRESHOLD, _WINDOW and _MIN_FEEDBACK (defaults otherwise)."""
    default = QualityPolicy()
    return QualityPolicy(
        threshold=float(os.environ.get("MLEVENTS_QUALITY_THRESHOLD", default.threshold)),
        window=int(os.environ.get("MLEVENTS_QUALITY_WINDOW", default.window)),
        min_feedback=int(os.environ.get("MLEVENTS_QUALITY_MIN_FEEDBACK", default.min_feedback)),
    )


def build_pipelines(
    ingest_cron: str | None = None, retrain_cron: str | None = None
) -> tuple[ModelPipeline, ModelPipeline]:
    """The breast cancer pipeline (plain names, the landing folder itself) and the wine one
    (under `wine/`, the landing folder's `wine/` subfolder)."""
    quality = quality_policy_from_env()
    ingest = ingest_cron or os.environ.get("MLEVENTS_INGEST_CRON") or DEFAULT_INGEST_CRON
    retrain = retrain_cron or os.environ.get("MLEVENTS_RETRAIN_CRON") or DEFAULT_RETRAIN_CRON
    return (
        model_pipeline(
            BREAST_CANCER_MODEL, quality=quality, interval_seconds=SENSOR_INTERVAL,
            ingest_cron=ingest, retrain_cron=retrain,
        ),
        model_pipeline(
            WINE_MODEL, prefix="wine", landing_subfolder="wine", quality=quality,
            interval_seconds=SENSOR_INTERVAL, ingest_cron=ingest, retrain_cron=retrain,
        ),
    )


breast_cancer, wine = build_pipelines()
defs = dg.Definitions.merge(
    mlevents_definitions(
        [breast_cancer, wine],
        resources=make_resources(),
        interval_seconds=SENSOR_INTERVAL,
        jobs=[inference_job],
    ),
    relay_defs,  # the relay to NATS: pipelines/relay.py
    integrity_defs,  # seal + verify the log: pipelines/integrity.py (docs/integrity.md)
)
all_assets = [
    read_models_asset(deps=[breast_cancer.names.key("deployed_model")]),
    *breast_cancer.assets,
]
"""The breast cancer model's assets and the read models: what tests materialize."""
