"""What an mlevents ML pipeline is made of: a tabular dataset and a model spec (name, data,
features, training function, metrics, promotion policy, environment). No dagster.
"""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from event_sourcing.errors import ConfigurationError
from event_sourcing.ml.promotion import PromotionPolicy
from event_sourcing.privacy.redaction import dataset_stream
from event_sourcing.training.reproducibility import source_sha256

__all__ = ["MetricsFn", "ModelSpec", "TabularDataset", "TrainFn"]

TrainFn = Callable[[pd.DataFrame, dict[str, Any], int | None], Any]
"""(training rows, hyper-parameters, seed) -> a fitted model with `predict`."""
MetricsFn = Callable[[Any, pd.DataFrame], dict[str, float]]
"""(fitted model, labelled rows) -> held-out metrics."""


@dataclass(frozen=True)
class TabularDataset:
    """A labelled table arriving in batches: its id, columns and held-out rows.

    `reference` (optional) returns a table the value-range check compares batches with.
    One row in `holdout_buckets` (by a hash of its id) is held out of training, the same
    rows in every dataset version, so a champion and a candidate never saw them.
    """

    dataset_id: str
    feature_columns: tuple[str, ...]
    target_column: str = "target"
    id_column: str = "sample_id"
    labels: tuple[int, ...] = (0, 1)
    holdout_buckets: int = 5
    reference: Callable[[], pd.DataFrame] | None = None
    subject_column: str | None = None
    """The column naming each row's data subject (e.g. a customer id; any text, not a
    feature). Each version's subjects are recorded as keyed hashes, so `forget` finds the
    versions, models and rows involved, and the pipeline redacts them (docs/privacy.md)."""

    @property
    def stream(self) -> str:
        """The dataset stream: one data_ingested per version, then its data_validated (and
        dataset_redacted when an erasure removed rows from a version)."""
        return dataset_stream(self.dataset_id)

    @property
    def feature_set(self) -> str:
        return f"{self.dataset_id}_features"

    @property
    def feature_stream(self) -> str:
        return f"feature-set:{self.feature_set}"

    def expected_columns(self) -> list[str]:
        """The columns every batch must have, in order."""
        subject = [self.subject_column] if self.subject_column not in (None, self.id_column) else []
        return [self.id_column, *subject, *self.feature_columns, self.target_column]

    def reference_maxima(self) -> dict[str, float]:
        """Largest value of each feature in the reference table (empty without one)."""
        if self.reference is None:
            return {}
        frame = self.reference()
        return {name: float(frame[name].max()) for name in self.feature_columns}

    def is_holdout(self, ids: pd.Series) -> pd.Series:
        """True for rows held out of training, decided by a hash of the row id."""

        def bucket(value: Any) -> int:
            digest = hashlib.sha256(str(int(value)).encode()).digest()
            return digest[0] % self.holdout_buckets

        return ids.map(bucket).eq(0)

    def split_holdout(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows, held-out rows) of a dataset table."""
        mask = self.is_holdout(frame[self.id_column])
        return frame.loc[~mask].reset_index(drop=True), frame.loc[mask].reset_index(drop=True)


@dataclass(frozen=True)
class ModelSpec:
    """One model of an ML pipeline: everything the pipeline needs to know about it.

    `train` gets the whole dataset version (it splits off the held-out rows itself with
    `dataset.split_holdout`) and must be registered with `@training_function` so a training
    run can be replayed. `metrics(model, rows)` scores held-out rows; the promotion policy
    names one of its metrics. `features` (optional) is the feature code: a function returning
    an unfitted scikit-learn transformer; its source hash is half of every feature version.
    """

    name: str
    dataset: TabularDataset
    train: TrainFn
    metrics: MetricsFn
    features: Callable[[], Any] | None = None
    promotion: PromotionPolicy = field(default_factory=PromotionPolicy)
    environment: str = "production"
    description: str = ""
    training_config: Mapping[str, Any] = field(default_factory=dict)
    """Recorded in training_started.config (estimator, hold-out rule...)."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigurationError(
                f"model name {self.name!r}: use letters, digits, '_' or '-' (it names streams "
                "and Dagster assets)"
            )

    @property
    def deployment_stream(self) -> str:
        """The model's stream of model_evaluated / model_deployed / model_retired in its
        environment: a verdict and the deployment it decides are appended at consecutive
        versions of it, so two models never invalidate each other's verdicts."""
        return f"deployment:{self.environment}:{self.name}"

    @property
    def feature_code_sha256(self) -> str:
        """sha256 of the feature code's source (of the training function without one)."""
        code = self.features if self.features is not None else self.train
        return source_sha256(code) or hashlib.sha256(b"?").hexdigest()

    @property
    def training_code_sha256(self) -> str:
        return source_sha256(self.train) or "unknown"

    def feature_version_of(self, dataset_version: str) -> str:
        """sha256 over the feature code hash and the input dataset version."""
        return hashlib.sha256(f"{self.feature_code_sha256}:{dataset_version}".encode()).hexdigest()
