"""inference_quality: per model version, predictions, feedback and rolling quality; its
handlers and query.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from event_sourcing.catalog import DomainEvent, InferenceCompleted, InferenceFeedback
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.projection import insert_rows
from event_sourcing.projections.read_models.common import (
    Queryable,
    query_read_model,
    to_json,
)
from event_sourcing.projections.runner import Projection, ProjectionError, iso
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


Pair = tuple[RecordedEvent, DomainEvent | None]
_CHUNK = 500


@dataclass
class _Quality:
    """One model version's row, loaded once per batch and written once."""

    predictions: int = 0
    feedback: int = 0
    window_size: int = 0
    rolling_accuracy: float | None = None
    rolling_mae: float | None = None
    last_prediction_at: str | None = None
    last_feedback_at: str | None = None
    judged: list[tuple[int, int | None, float | None]] | None = None  # (seq, correct, error)
    first_new_seq: int = 0


def _mean(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return sum(known) / len(known) if known else None


class _Batch:
    """A batch of predictions and feedback folded in memory over the rows it touches, then
    written once: each quality row once, the prediction and window rows in bulk."""

    def __init__(self, tx: SqlTransaction, window: int) -> None:
        self.tx, self.window = tx, window
        self.rows: dict[tuple[str, int], _Quality] = {}
        self.predictions: dict[str, tuple[str, int, str | None]] = {}
        self.stored: dict[str, tuple[str, int, str | None]] = {}
        self.windows: dict[tuple[str, int], list[tuple[int, Any, Any]]] = {}

    def _in(self, sql: str, ids: list[str]) -> list[Any]:
        """The rows of `sql` (ending in ``IN``) for `ids`, a chunk of ids per statement."""
        rows: list[Any] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows += self.tx.execute(f"{sql} ({','.join('?' * len(chunk))})", chunk).fetchall()
        return rows

    def load(self, pairs: Sequence[Pair]) -> None:
        """Read at once what the page's events will touch: the stored predictions its
        feedback judges, then the quality rows and windows of every model they name (every
        model a prediction or feedback of the page can be counted against)."""
        feedback = [t for _, t in pairs if isinstance(t, InferenceFeedback)]
        inference_ids = sorted({t.inference_id for t in feedback})
        for inference_id, model_id, version, prediction in self._in(
            "SELECT inference_id, model_id, model_version, prediction FROM "
            "inference_quality_predictions WHERE inference_id IN",
            inference_ids,
        ):
            self.stored[inference_id] = (model_id, int(version), prediction)
        models = {t.model_id for _, t in pairs if isinstance(t, InferenceCompleted)}
        models |= {t.model_id for t in feedback if t.model_id}
        models |= {model_id for model_id, _, _ in self.stored.values()}
        for model_id, version, *found in self._in(
            "SELECT model_id, model_version, predictions, feedback, window_size, "
            "rolling_accuracy, rolling_mae, last_prediction_at, last_feedback_at "
            "FROM inference_quality WHERE model_id IN",
            sorted(models),
        ):
            self.rows[(model_id, int(version))] = _Quality(*found)
        for model_id, version, seq, correct, error in sorted(
            self._in(
                "SELECT model_id, model_version, seq, correct, abs_error "
                "FROM inference_quality_window WHERE model_id IN",
                sorted(models),
            ),
            key=lambda found: int(found[2]),
        ):
            self.windows.setdefault((model_id, int(version)), []).append(
                (int(seq), correct, error)
            )

    def row(self, key: tuple[str, int]) -> _Quality:
        """The quality row of a model version (`load` read every one the page names)."""
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = _Quality(window_size=self.window)
        return row

    def judged(self, key: tuple[str, int], row: _Quality) -> list[tuple[int, Any, Any]]:
        if row.judged is None:
            row.judged = self.windows.get(key, [])
            row.first_new_seq = row.feedback + 1
        return row.judged

    def completed(self, e: RecordedEvent, t: InferenceCompleted) -> None:
        row = self.row((t.model_id, t.model_version))
        row.predictions += 1
        row.last_prediction_at = iso(e.occurred_at)
        self.predictions[e.stream_id] = (t.model_id, t.model_version, to_json(t.prediction))

    def feedback(self, e: RecordedEvent, t: InferenceFeedback) -> None:
        seen = self.predictions.get(t.inference_id) or self.stored.get(t.inference_id)
        if seen is not None:
            model_id, version, prediction = seen[0], seen[1], json.loads(seen[2] or "null")
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
        key = (model_id, version)
        row = self.row(key)
        judged = self.judged(key, row)
        row.feedback += 1
        row.last_feedback_at = iso(e.occurred_at)
        judged.append((row.feedback, None if t.correct is None else int(t.correct), abs_error))
        del judged[: max(0, len(judged) - self.window)]
        row.rolling_accuracy = _mean([correct for _, correct, _ in judged])
        row.rolling_mae = _mean([error for _, _, error in judged])

    def write(self) -> None:
        tx = self.tx
        insert_rows(
            tx, "inference_quality_predictions (inference_id, model_id, model_version, "
            "prediction)",
            [(inference_id, *seen) for inference_id, seen in self.predictions.items()],
            "ON CONFLICT (inference_id) DO UPDATE SET model_id = excluded.model_id, "
            "model_version = excluded.model_version, prediction = excluded.prediction",
        )
        # Rows whose window was loaded have their new window_count; others keep theirs.
        for judged in (True, False):
            keep = "window_count = excluded.window_count, " if judged else ""
            insert_rows(
                tx, "inference_quality (model_id, model_version, predictions, feedback, "
                "window_size, window_count, rolling_accuracy, rolling_mae, last_prediction_at, "
                "last_feedback_at)",
                [
                    (
                        model_id, version, row.predictions, row.feedback, row.window_size,
                        len(row.judged) if row.judged is not None else 0,
                        row.rolling_accuracy, row.rolling_mae, row.last_prediction_at,
                        row.last_feedback_at,
                    )
                    for (model_id, version), row in self.rows.items()
                    if (row.judged is not None) == judged
                ],
                "ON CONFLICT (model_id, model_version) DO UPDATE SET "
                f"predictions = excluded.predictions, feedback = excluded.feedback, {keep}"
                "rolling_accuracy = excluded.rolling_accuracy, "
                "rolling_mae = excluded.rolling_mae, "
                "last_prediction_at = excluded.last_prediction_at, "
                "last_feedback_at = excluded.last_feedback_at",
            )
        windowed = [(key, row) for key, row in self.rows.items() if row.judged is not None]
        if windowed:
            tx.executemany(
                "DELETE FROM inference_quality_window WHERE model_id = ? AND model_version = ? "
                "AND seq <= ?",
                [(*key, row.feedback - self.window) for key, row in windowed],
            )
        window: list[tuple[Any, ...]] = []
        for (model_id, version), row in windowed:
            assert row.judged is not None
            window.extend(
                (model_id, version, *j) for j in row.judged if j[0] >= row.first_new_seq
            )
        insert_rows(
            tx, "inference_quality_window (model_id, model_version, seq, correct, abs_error)",
            window,
        )


def _apply(tx: SqlTransaction, pairs: Sequence[Pair], window: int) -> None:
    batch = _Batch(tx, window)
    batch.load(pairs)
    for e, t in pairs:
        if isinstance(t, InferenceCompleted):
            batch.completed(e, t)
        elif isinstance(t, InferenceFeedback):
            batch.feedback(e, t)
        else:
            raise ProjectionError(
                f"event {e.id} ({e.event_type}) did not parse as an inference event; is the "
                "event type registered in the store's registry?"
            )
    batch.write()


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
        handlers=dict.fromkeys(
            (InferenceCompleted.event_type, InferenceFeedback.event_type),
            lambda tx, e, t: _apply(tx, [(e, t)], window),
        ),
        batch=lambda tx, pairs: _apply(tx, pairs, window),
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
