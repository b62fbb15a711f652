"""Reproducible training and inference logging: record, replay, re-run and verify runs.

Training runs and predictions are event streams; datasets and models live in the artifact store.
"""

from event_sourcing.training.errors import (
    InferenceNotFoundError,
    TrainingError,
    TrainingFunctionNotFoundError,
    TrainingNotFoundError,
    TrainingStateError,
)
from event_sourcing.training.inference import INFERENCE_STREAM_TYPE, log_feedback, log_prediction
from event_sourcing.training.reproducibility import (
    TrainFn,
    TrainingFunctionRegistry,
    capture_environment,
    code_version,
    default_training_functions,
    fingerprint_components,
    model_fingerprint,
    training_function,
)
from event_sourcing.training.service import (
    MODEL_STREAM_TYPE,
    TRAINING_STREAM_TYPE,
    TrainingOutcome,
    TrainingService,
    model_name_stream,
)

__all__ = [
    "INFERENCE_STREAM_TYPE",
    "MODEL_STREAM_TYPE",
    "TRAINING_STREAM_TYPE",
    "InferenceNotFoundError",
    "TrainFn",
    "TrainingError",
    "TrainingFunctionNotFoundError",
    "TrainingFunctionRegistry",
    "TrainingNotFoundError",
    "TrainingOutcome",
    "TrainingService",
    "TrainingStateError",
    "capture_environment",
    "code_version",
    "default_training_functions",
    "fingerprint_components",
    "log_feedback",
    "log_prediction",
    "model_fingerprint",
    "model_name_stream",
    "training_function",
]
