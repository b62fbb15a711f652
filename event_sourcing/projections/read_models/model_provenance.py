"""model_provenance: for each model, the run, data, features, code and environment it came
from; its handlers and query.
"""

from __future__ import annotations

from typing import Any

from event_sourcing.catalog import TrainingCompleted, TrainingStarted
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models.common import (
    Queryable,
    no_run,
    one,
    query_read_model,
    to_json,
)
from event_sourcing.projections.runner import Projection, ProjectionError, iso, on
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["get_model_provenance", "model_provenance_projection"]

_PROVENANCE_DDL = (
    """CREATE TABLE IF NOT EXISTS model_provenance (
        model_id             TEXT PRIMARY KEY,
        training_run_id      TEXT NOT NULL,
        dataset_id           TEXT,
        dataset_version      TEXT NOT NULL,
        feature_version      TEXT,
        code_version         TEXT,
        hyperparameters      TEXT NOT NULL,
        seed                 BIGINT,
        training_environment TEXT,
        created_at           TEXT NOT NULL,
        position             BIGINT NOT NULL
    )""",
    # What each run recorded at its start, until its training_completed names the model.
    """CREATE TABLE IF NOT EXISTS model_provenance_runs (
        training_id          TEXT PRIMARY KEY,
        dataset_id           TEXT,
        dataset_version      TEXT NOT NULL,
        feature_version      TEXT,
        code_version         TEXT,
        hyperparameters      TEXT NOT NULL,
        seed                 BIGINT,
        training_environment TEXT
    )""",
)


def _provenance_started(tx: SqlTransaction, e: RecordedEvent, t: TrainingStarted) -> None:
    tx.execute(
        "INSERT INTO model_provenance_runs (training_id, dataset_id, dataset_version, "
        "feature_version, code_version, hyperparameters, seed, training_environment) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (training_id) DO UPDATE SET "
        "dataset_id = excluded.dataset_id, dataset_version = excluded.dataset_version, "
        "feature_version = excluded.feature_version, code_version = excluded.code_version, "
        "hyperparameters = excluded.hyperparameters, seed = excluded.seed, "
        "training_environment = excluded.training_environment",
        (
            e.stream_id, t.dataset_id, t.dataset_version, t.feature_version,
            to_json(t.code_version.model_dump(mode="json") if t.code_version else None),
            to_json(t.hyperparameters), t.seed,
            to_json(t.environment.model_dump(mode="json") if t.environment else None),
        ),
    )


def _provenance_completed(tx: SqlTransaction, e: RecordedEvent, t: TrainingCompleted) -> None:
    run = tx.execute(
        "SELECT dataset_id, dataset_version, feature_version, code_version, hyperparameters, "
        "seed, training_environment FROM model_provenance_runs WHERE training_id = ?",
        (e.stream_id,),
    ).fetchone()
    if run is None:
        raise ProjectionError(no_run(e.stream_id, "provenance"))
    tx.execute(
        "INSERT INTO model_provenance (model_id, training_run_id, dataset_id, dataset_version, "
        "feature_version, code_version, hyperparameters, seed, training_environment, "
        "created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (model_id) DO NOTHING",
        (t.model_id, e.stream_id, *run, iso(t.completed_at or e.occurred_at), e.position),
    )


def model_provenance_projection() -> Projection:
    """model_provenance: for each model, the run, data, features, code and environment."""
    return Projection(
        name="model_provenance",
        version=1,
        ddl=_PROVENANCE_DDL,
        tables=("model_provenance", "model_provenance_runs"),
        handlers=dict(
            (
                on(TrainingStarted, _provenance_started),
                on(TrainingCompleted, _provenance_completed),
            )
        ),
        description="model -> training run, dataset/feature/code version, hyper-parameters",
    )


def get_model_provenance(source: EventStore | Queryable, model_id: str) -> dict[str, Any] | None:
    return one(
        query_read_model(
            source, "model_provenance",
            "SELECT * FROM model_provenance WHERE model_id = ?", (model_id,),
        )
    )
