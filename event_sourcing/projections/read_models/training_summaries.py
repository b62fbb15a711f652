"""training_summaries: one row per training run (status, times, metrics, last step),
its handlers and queries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from event_sourcing.catalog import (
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models.common import (
    Queryable,
    no_run,
    one,
    query_read_model,
    to_json,
    update_one,
)
from event_sourcing.projections.runner import Projection, iso, on
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["get_training_summary", "list_trainings", "training_summaries_projection"]

_TRAINING_DDL = (
    """CREATE TABLE IF NOT EXISTS training_summaries (
        training_id      TEXT PRIMARY KEY,
        status           TEXT NOT NULL,
        started_at       TEXT,
        completed_at     TEXT,
        duration_seconds DOUBLE PRECISION,
        user_id          TEXT,
        config           TEXT,
        dataset_id       TEXT,
        dataset_version  TEXT,
        feature_version  TEXT,
        model_name       TEXT,
        last_step        BIGINT,
        latest_metrics   TEXT,
        final_metrics    TEXT,
        model_id         TEXT,
        error            TEXT,
        reproducible     INTEGER,
        updated_at       TEXT NOT NULL,
        position         BIGINT NOT NULL
    )""",
)


def _run_of(event: RecordedEvent) -> str:
    return event.stream_id


def _training_started(tx: SqlTransaction, e: RecordedEvent, t: TrainingStarted) -> None:
    tx.execute(
        "INSERT INTO training_summaries (training_id, status, started_at, user_id, config, "
        "dataset_id, dataset_version, feature_version, model_name, updated_at, position) "
        "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (training_id) DO UPDATE "
        "SET started_at = excluded.started_at, user_id = excluded.user_id, "
        "config = excluded.config, dataset_id = excluded.dataset_id, "
        "dataset_version = excluded.dataset_version, "
        "feature_version = excluded.feature_version, model_name = excluded.model_name, "
        "updated_at = excluded.updated_at, position = excluded.position",
        (
            e.stream_id, iso(t.started_at or e.occurred_at), t.user_id, to_json(t.config),
            t.dataset_id, t.dataset_version, t.feature_version, t.model_name,
            iso(e.occurred_at), e.position,
        ),
    )


def _training_progress(tx: SqlTransaction, e: RecordedEvent, t: TrainingProgress) -> None:
    metrics: dict[str, Any] = dict(t.metrics)
    if t.loss is not None:
        metrics.setdefault("loss", t.loss)
    if t.learning_rate is not None:
        metrics.setdefault("learning_rate", t.learning_rate)
    update_one(
        tx,
        "UPDATE training_summaries SET last_step = ?, latest_metrics = ?, updated_at = ?, "
        "position = ? WHERE training_id = ?",
        (t.step, to_json(metrics), iso(e.occurred_at), e.position, e.stream_id),
        no_run(e.stream_id),
    )


def _duration(tx: SqlTransaction, training_id: str, end: str | None) -> float | None:
    row = tx.execute(
        "SELECT started_at FROM training_summaries WHERE training_id = ?", (training_id,)
    ).fetchone()
    if row is None or row[0] is None or end is None:
        return None
    return max(
        0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(row[0])).total_seconds()
    )


def _training_completed(tx: SqlTransaction, e: RecordedEvent, t: TrainingCompleted) -> None:
    end = iso(t.completed_at or e.occurred_at)
    duration = t.duration_seconds
    if duration is None:
        duration = _duration(tx, e.stream_id, end)
    name = t.model_name or e.metadata.get("model_name")  # metadata: events before the field
    update_one(
        tx,
        "UPDATE training_summaries SET status = 'completed', completed_at = ?, "
        "duration_seconds = ?, final_metrics = ?, model_id = ?, "
        "model_name = coalesce(?, model_name), updated_at = ?, position = ? "
        "WHERE training_id = ?",
        (
            end, duration, to_json(t.final_metrics), t.model_id,
            name if isinstance(name, str) else None, iso(e.occurred_at), e.position, e.stream_id,
        ),
        no_run(e.stream_id),
    )


def _training_failed(tx: SqlTransaction, e: RecordedEvent, t: TrainingFailed) -> None:
    end = iso(t.failed_at or e.occurred_at)
    update_one(
        tx,
        "UPDATE training_summaries SET status = 'failed', completed_at = ?, "
        "duration_seconds = ?, error = ?, last_step = coalesce(?, last_step), updated_at = ?, "
        "position = ? WHERE training_id = ?",
        (
            end, _duration(tx, e.stream_id, end), t.error, t.step, iso(e.occurred_at),
            e.position, e.stream_id,
        ),
        no_run(e.stream_id),
    )


def _training_verified(tx: SqlTransaction, e: RecordedEvent, t: TrainingVerified) -> None:
    update_one(
        tx,
        "UPDATE training_summaries SET reproducible = ?, updated_at = ?, position = ? "
        "WHERE training_id = ?",
        (int(t.reproducible), iso(e.occurred_at), e.position, t.training_id),
        no_run(t.training_id),
    )


def training_summaries_projection() -> Projection:
    """training_summaries: one row per training run (status, times, metrics, last step)."""
    return Projection(
        name="training_summaries",
        version=1,
        ddl=_TRAINING_DDL,
        tables=("training_summaries",),
        handlers=dict(
            (
                on(TrainingStarted, _training_started),
                on(TrainingProgress, _training_progress),
                on(TrainingCompleted, _training_completed),
                on(TrainingFailed, _training_failed),
                on(TrainingVerified, _training_verified),
            )
        ),
        description="one row per training run: status, times, config, metrics, last step",
        # A progress event overwrites everything the previous one of its run wrote.
        superseded={TrainingProgress.event_type: _run_of},
    )


def get_training_summary(source: EventStore | Queryable, training_id: str) -> dict[str, Any] | None:
    return one(
        query_read_model(
            source, "training_summaries",
            "SELECT * FROM training_summaries WHERE training_id = ?", (training_id,),
        )
    )


def list_trainings(
    source: EventStore | Queryable, status: str | None = None
) -> list[dict[str, Any]]:
    """Training summaries, newest first; `status`: running, completed or failed."""
    where, params = ("WHERE status = ? ", (status,)) if status else ("", ())
    return query_read_model(
        source, "training_summaries",
        f"SELECT * FROM training_summaries {where}ORDER BY started_at DESC, training_id", params,
    )
