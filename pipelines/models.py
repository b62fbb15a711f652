"""The demo's two models, from the same factory: a breast cancer classifier and a wine
classifier (two data sets scikit-learn ships). Each is a `ModelSpec`.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from event_sourcing.ml import ModelSpec, PromotionPolicy, TabularDataset
from event_sourcing.training import training_function
from pipelines.dataset import BREAST_CANCER, FEATURE_COLUMNS, WINE

__all__ = [
    "BREAST_CANCER_MODEL",
    "MODELS",
    "WINE_MODEL",
    "breast_cancer_features",
    "score_model",
    "train_breast_cancer",
    "train_wine",
]


def breast_cancer_features() -> ColumnTransformer:
    """The feature code: log-scale the size measurements, keep the shape measurements.

    Stateless and built from scikit-learn and NumPy parts only, so a model that embeds it
    unpickles anywhere those libraries are installed.
    """
    size = [c for c in FEATURE_COLUMNS if any(k in c for k in ("radius", "perimeter", "area"))]
    shape = [c for c in FEATURE_COLUMNS if c not in size]
    return ColumnTransformer(
        [
            ("log", FunctionTransformer(np.log1p, feature_names_out="one-to-one"), size),
            ("raw", "passthrough", shape),
        ]
    ).set_output(transform="pandas")


def _logistic_regression(
    dataset: TabularDataset,
    features: Callable[[], Any] | None,
    table: pd.DataFrame,
    hyperparameters: dict[str, Any],
    seed: int | None,
) -> Any:
    """Fit feature code + scaler + logistic regression on the non-held-out rows."""
    train, _holdout = dataset.split_holdout(table)
    steps: list[tuple[str, Any]] = [("features", features())] if features else []
    model = Pipeline(
        [
            *steps,
            ("scale", StandardScaler()),
            (
                "classifier",
                LogisticRegression(
                    C=float(hyperparameters.get("C", 1.0)),
                    max_iter=int(hyperparameters.get("max_iter", 500)),
                    random_state=seed,
                ),
            ),
        ]
    )
    return model.fit(train[list(dataset.feature_columns)], train[dataset.target_column])


@training_function
def train_breast_cancer(table: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
    """The breast cancer classifier: log-scaled size features, logistic regression."""
    return _logistic_regression(
        BREAST_CANCER, breast_cancer_features, table, hyperparameters, seed
    )


@training_function
def train_wine(table: Any, hyperparameters: dict[str, Any], seed: int | None) -> Any:
    """The wine classifier (three cultivars): scaled features, logistic regression."""
    return _logistic_regression(WINE, None, table, hyperparameters, seed)


def _scorer(dataset: TabularDataset) -> Callable[[Any, pd.DataFrame], dict[str, float]]:
    def score(model: Any, rows: pd.DataFrame) -> dict[str, float]:
        """accuracy, f1, log_loss (and roc_auc for two classes) on labelled rows."""
        inputs, labels = rows[list(dataset.feature_columns)], rows[dataset.target_column]
        predicted = model.predict(inputs)
        probability = model.predict_proba(inputs)
        binary = len(dataset.labels) == 2
        metrics = {
            "accuracy": float(accuracy_score(labels, predicted)),
            "f1": float(
                f1_score(
                    labels, predicted, zero_division=0, average="binary" if binary else "macro"
                )
            ),
            "log_loss": float(
                log_loss(labels, probability[:, 1] if binary else probability,
                         labels=list(dataset.labels))
            ),
            "rows": float(len(rows)),
        }
        if binary and labels.nunique() == 2:
            metrics["roc_auc"] = float(roc_auc_score(labels, probability[:, 1]))
        return metrics

    return score


score_model = _scorer(BREAST_CANCER)
"""accuracy, f1, roc_auc and log_loss of a fitted breast cancer classifier on labelled rows."""

BREAST_CANCER_MODEL = ModelSpec(
    name="breast_cancer_classifier",
    dataset=BREAST_CANCER,
    train=train_breast_cancer,
    metrics=score_model,
    features=breast_cancer_features,
    promotion=PromotionPolicy(metric="accuracy", strictly_better=True),
    environment="production",
    training_config={"estimator": "StandardScaler+LogisticRegression"},
)
WINE_MODEL = ModelSpec(
    name="wine_classifier",
    dataset=WINE,
    train=train_wine,
    metrics=_scorer(WINE),
    promotion=PromotionPolicy(metric="accuracy", strictly_better=True),
    environment="production",
    training_config={"estimator": "StandardScaler+LogisticRegression"},
)
MODELS = (BREAST_CANCER_MODEL, WINE_MODEL)
