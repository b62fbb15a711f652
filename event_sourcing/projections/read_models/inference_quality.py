"""inference_quality: per model version, predictions, feedback and rolling quality; its
handlers and query.
"""

from __future__ import annotations

import json
from typing import Any

from event_sourcing.catalog import InferenceCompleted, InferenceFeedback
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models.common import (
    Queryable,
    query_read_model,
    to_json,
)
from event_sourcing.projections.runner import Handler, Projection, ProjectionError, iso, on
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

DEFAULT_INFERENCE_WINDOW = 100

__all__ = [
    "DEFAULT_INFERENCE_WINDOW", "get_inference_quality", "inference_quality_projection"
]

def _quality_ddl() -> tuple[str, ...]:
    return (
        """CREATE TABLE IF NOT EXISTS inference_quality (
            model_id           TEXT NOT NULL,
            model_version      INTEGER NOT NULL,
            predictions        BIGINT NOT NULL,
            feedback           BIGINT NOT NULL,
            window_size        INTEGER NOT NULL,
            window_count       INTEGER NOT NULL,
            rolling_accuracy   DOUBLE PRECISION,
            rolling_mae        DOUBLE PRECISION,
            last_prediction_at TEXT,
            last_feedback_at   TEXT,
            PRIMARY KEY (model_id, model_version)
        )""",
        # Each prediction's model and answer, so feedback can be judged against it.
        """CREATE TABLE IF NOT EXISTS inference_quality_predictions (
            inference_id  TEXT PRIMARY KEY,
            model_id      TEXT NOT NULL,
            model_version INTEGER NOT NULL,
            prediction    TEXT
        )""",
        # The last N feedback judgements per model version (seq = feedback number).
        """CREATE TABLE IF NOT EXISTS inference_quality_window (
            model_id      TEXT NOT NULL,
            model_version INTEGER NOT NULL,
            seq           BIGINT NOT NULL,
            correct       INTEGER,
            abs_error     DOUBLE PRECISION,
            PRIMARY KEY (model_id, model_version, seq)
        )""",
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _ensure_quality_row(
    tx: SqlTransaction, model_id: str, version: int, window: int
) -> None:
    tx.execute(
        "INSERT INTO inference_quality (model_id, model_version, predictions, feedback, "
        "window_size, window_count) VALUES (?, ?, 0, 0, ?, 0) "
        "ON CONFLICT (model_id, model_version) DO NOTHING",
        (model_id, version, window),
    )


def _quality_handlers(window: int) -> dict[str, Handler]:
    def completed(tx: SqlTransaction, e: RecordedEvent, t: InferenceCompleted) -> None:
        _ensure_quality_row(tx, t.model_id, t.model_version, window)
        tx.execute(
            "UPDATE inference_quality SET predictions = predictions + 1, last_prediction_at = ? "
            "WHERE model_id = ? AND model_version = ?",
            (iso(e.created_at), t.model_id, t.model_version),
        )
        tx.execute(
            "INSERT INTO inference_quality_predictions (inference_id, model_id, model_version, "
            "prediction) VALUES (?, ?, ?, ?) ON CONFLICT (inference_id) DO UPDATE SET "
            "model_id = excluded.model_id, model_version = excluded.model_version, "
            "prediction = excluded.prediction",
            (e.stream_id, t.model_id, t.model_version, to_json(t.prediction)),
        )

    def feedback(tx: SqlTransaction, e: RecordedEvent, t: InferenceFeedback) -> None:
        row = tx.execute(
            "SELECT model_id, model_version, prediction FROM inference_quality_predictions "
            "WHERE inference_id = ?",
            (t.inference_id,),
        ).fetchone()
        if row is not None:
            model_id, version, prediction = row[0], int(row[1]), json.loads(row[2] or "null")
        elif t.model_id is not None and t.model_version is not None:
            model_id, version, prediction = t.model_id, t.model_version, None
        else:
            raise ProjectionError(
                f"feedback {e.id} judges inference {t.inference_id!r}, whose prediction was not "
                "seen and the feedback names no model_id/model_version"
            )
        predicted, actual = _number(prediction), _number(t.actual)
        abs_error = None
        if predicted is not None and actual is not None:
            abs_error = abs(predicted - actual)
        _ensure_quality_row(tx, model_id, version, window)
        tx.execute(
            "UPDATE inference_quality SET feedback = feedback + 1, last_feedback_at = ? "
            "WHERE model_id = ? AND model_version = ?",
            (iso(e.created_at), model_id, version),
        )
        seq = int(
            tx.execute(
                "SELECT feedback FROM inference_quality WHERE model_id = ? AND model_version = ?",
                (model_id, version),
            ).fetchone()[0]
        )
        tx.execute(
            "INSERT INTO inference_quality_window (model_id, model_version, seq, correct, "
            "abs_error) VALUES (?, ?, ?, ?, ?)",
            (model_id, version, seq, None if t.correct is None else int(t.correct), abs_error),
        )
        tx.execute(
            "DELETE FROM inference_quality_window WHERE model_id = ? AND model_version = ? "
            "AND seq <= ?",
            (model_id, version, seq - window),
        )
        count, accuracy, mae = tx.execute(
            "SELECT count(*), avg(CAST(correct AS DOUBLE PRECISION)), "
            "avg(CAST(abs_error AS DOUBLE PRECISION)) FROM inference_quality_window "
            "WHERE model_id = ? AND model_version = ?",
            (model_id, version),
        ).fetchone()
        tx.execute(
            "UPDATE inference_quality SET window_count = ?, rolling_accuracy = ?, "
            "rolling_mae = ? WHERE model_id = ? AND model_version = ?",
            (int(count), accuracy, mae, model_id, version),
        )

    return dict((on(InferenceCompleted, completed), on(InferenceFeedback, feedback)))


def inference_quality_projection(window: int = DEFAULT_INFERENCE_WINDOW) -> Projection:
    """inference_quality: per model version, predictions, feedback, and accuracy (labels) or
    mean absolute error (numbers) over the last `window` feedback events."""
    if window < 1:
        raise ProjectionError(f"the inference quality window must be >= 1, got {window}")
    return Projection(
        name="inference_quality",
        # The window is part of the version: changing it rebuilds the rolling figures.
        version=f"1/window={window}",
        ddl=_quality_ddl(),
        tables=("inference_quality", "inference_quality_predictions", "inference_quality_window"),
        handlers=_quality_handlers(window),
        description=f"per model version: predictions, feedback, rolling quality (last {window})",
    )


def get_inference_quality(
    source: EventStore | Queryable, model_id: str | None = None
) -> list[dict[str, Any]]:
    """Quality rows per model version (of `model_id`, or of every model)."""
    where, params = ("WHERE model_id = ? ", (model_id,)) if model_id else ("", ())
    return query_read_model(
        source, "inference_quality",
        f"SELECT * FROM inference_quality {where}ORDER BY model_id, model_version", params,
    )
