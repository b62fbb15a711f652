"""The ML pipeline factory: `model_pipeline(spec)` builds one model's assets, jobs, sensors
and schedules; `mlevents_definitions([...])` puts several in one code location.
"""

from event_sourcing.dagster.ml.model import TrainingConfig, compute_features
from event_sourcing.dagster.ml.names import Names
from event_sourcing.dagster.ml.pipeline import (
    PROVENANCE_TRIGGERS,
    READ_MODELS_KEY,
    SERIAL_TAG,
    ModelPipeline,
    mlevents_definitions,
    model_pipeline,
)

__all__ = [
    "PROVENANCE_TRIGGERS",
    "READ_MODELS_KEY",
    "SERIAL_TAG",
    "ModelPipeline",
    "Names",
    "TrainingConfig",
    "compute_features",
    "mlevents_definitions",
    "model_pipeline",
]
