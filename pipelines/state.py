"""The breast cancer pipeline's state, read back from the event store (see event_sourcing.ml).
"""

import event_sourcing as es
from event_sourcing.ml.history import DatasetHistory
from event_sourcing.ml.history import dataset_history as _dataset_history
from pipelines.models import BREAST_CANCER_MODEL

__all__ = ["DATASET_STREAM", "ENVIRONMENT", "MODEL_NAME", "dataset_history"]

DATASET_STREAM = BREAST_CANCER_MODEL.dataset.stream
MODEL_NAME = BREAST_CANCER_MODEL.name
ENVIRONMENT = BREAST_CANCER_MODEL.environment


def dataset_history(store: es.EventStore) -> DatasetHistory:
    """The breast cancer dataset stream, folded."""
    return _dataset_history(store, DATASET_STREAM)
