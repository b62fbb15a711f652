"""The ML decisions of an mlevents pipeline, as plain services over the event store:
dataset history, evaluation, promotion and retirement, and the model spec. No dagster.
"""

from event_sourcing.ml.promotion import Decision, PromotionPolicy
from event_sourcing.ml.spec import MetricsFn, ModelSpec, TabularDataset, TrainFn

__all__ = ["Decision", "MetricsFn", "ModelSpec", "PromotionPolicy", "TabularDataset", "TrainFn"]
