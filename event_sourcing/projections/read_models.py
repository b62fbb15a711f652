"""The built-in read models (training summaries, model catalog, provenance, deployments,
inference quality): their tables, the handlers that keep them, and query helpers.

Times stored are event times (payload time if given, else the event's created_at), so a
rebuild or an as-of evaluation reproduces the same rows. JSON columns are TEXT.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from event_sourcing.catalog import (
    DomainEvent,
    EventTypes,
    InferenceCompleted,
    InferenceFeedback,
    ModelCreated,
    ModelDeployed,
    ModelRetired,
    ModelVersioned,
    TrainingCompleted,
    TrainingFailed,
    TrainingProgress,
    TrainingStarted,
    TrainingVerified,
)
from event_sourcing.catalog.ml_events import ModelEvaluated
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.runner import (
    Handler,
    Projection,
    ProjectionError,
    ReadModelMissingError,
    iso,
    table_exists,
)
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = [
    "DEFAULT_INFERENCE_WINDOW",
    "Queryable",
    "builtin_projections",
    "current_deployment",
    "deployments_projection",
    "get_inference_quality",
    "get_model",
    "get_model_provenance",
    "get_training_summary",
    "inference_quality_projection",
    "list_deployments",
    "list_models",
    "list_trainings",
    "model_catalog_projection",
    "model_provenance_projection",
    "query_read_model",
    "training_summaries_projection",
]

DEFAULT_INFERENCE_WINDOW = 100
E = TypeVar("E", bound=DomainEvent)

# Columns holding JSON text, decoded by the query helpers.
JSON_COLUMNS = frozenset(
    {
        "config", "latest_metrics", "final_metrics", "metrics", "environments", "code_version",
        "hyperparameters", "training_environment", "prediction", "last_evaluation",
    }
)


class Queryable(Protocol):
    """Anything that answers SQL with rows as dicts (e.g. an as-of snapshot)."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _typed(event: RecordedEvent, typed: DomainEvent | None, cls: type[E]) -> E:
    if not isinstance(typed, cls):
        raise ProjectionError(
            f"event {event.id} ({event.event_type}) did not parse as {cls.__name__}; "
            "is the event type registered in the store's registry?"
        )
    return typed


def _update_one(tx: SqlTransaction, sql: str, params: Sequence[Any], missing: str) -> None:
    """An UPDATE that must hit a row: otherwise an earlier event was not applied, so fail
    (the runner parks the event, visibly, instead of silently dropping its change)."""
    if tx.execute(sql, params).rowcount == 0:
        raise ProjectionError(missing)


# -- training_summaries -----------------------------------------------------------------------

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


def _no_run(training_id: str) -> str:
    return (
        f"training run {training_id!r} has no summary row: its training_started was not "
        "applied (see the projection's dead letters)"
    )


def _training_started(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingStarted)
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
            e.stream_id, iso(t.started_at or e.created_at), t.user_id, _json(t.config),
            t.dataset_id, t.dataset_version, t.feature_version, t.model_name,
            iso(e.created_at), e.position,
        ),
    )


def _training_progress(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingProgress)
    metrics: dict[str, Any] = dict(t.metrics)
    if t.loss is not None:
        metrics.setdefault("loss", t.loss)
    if t.learning_rate is not None:
        metrics.setdefault("learning_rate", t.learning_rate)
    _update_one(
        tx,
        "UPDATE training_summaries SET last_step = ?, latest_metrics = ?, updated_at = ?, "
        "position = ? WHERE training_id = ?",
        (t.step, _json(metrics), iso(e.created_at), e.position, e.stream_id),
        _no_run(e.stream_id),
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


def _training_completed(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingCompleted)
    end = iso(t.completed_at or e.created_at)
    duration = t.duration_seconds
    if duration is None:
        duration = _duration(tx, e.stream_id, end)
    name = t.model_name or e.metadata.get("model_name")  # metadata: events before the field
    _update_one(
        tx,
        "UPDATE training_summaries SET status = 'completed', completed_at = ?, "
        "duration_seconds = ?, final_metrics = ?, model_id = ?, "
        "model_name = coalesce(?, model_name), updated_at = ?, position = ? "
        "WHERE training_id = ?",
        (
            end, duration, _json(t.final_metrics), t.model_id,
            name if isinstance(name, str) else None, iso(e.created_at), e.position, e.stream_id,
        ),
        _no_run(e.stream_id),
    )


def _training_failed(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingFailed)
    end = iso(t.failed_at or e.created_at)
    _update_one(
        tx,
        "UPDATE training_summaries SET status = 'failed', completed_at = ?, "
        "duration_seconds = ?, error = ?, last_step = coalesce(?, last_step), updated_at = ?, "
        "position = ? WHERE training_id = ?",
        (
            end, _duration(tx, e.stream_id, end), t.error, t.step, iso(e.created_at),
            e.position, e.stream_id,
        ),
        _no_run(e.stream_id),
    )


def _training_verified(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingVerified)
    _update_one(
        tx,
        "UPDATE training_summaries SET reproducible = ?, updated_at = ?, position = ? "
        "WHERE training_id = ?",
        (int(t.reproducible), iso(e.created_at), e.position, t.training_id),
        _no_run(t.training_id),
    )


def training_summaries_projection() -> Projection:
    """training_summaries: one row per training run (status, times, metrics, last step)."""
    return Projection(
        name="training_summaries",
        version=1,
        ddl=_TRAINING_DDL,
        tables=("training_summaries",),
        handlers={
            EventTypes.TRAINING_STARTED: _training_started,
            EventTypes.TRAINING_PROGRESS: _training_progress,
            EventTypes.TRAINING_COMPLETED: _training_completed,
            EventTypes.TRAINING_FAILED: _training_failed,
            EventTypes.TRAINING_VERIFIED: _training_verified,
        },
        description="one row per training run: status, times, config, metrics, last step",
    )


# -- model_catalog ----------------------------------------------------------------------------

_CATALOG_DDL = (
    """CREATE TABLE IF NOT EXISTS model_catalog (
        model_id        TEXT PRIMARY KEY,
        name            TEXT,
        version         INTEGER,
        training_id     TEXT,
        status          TEXT NOT NULL,
        environments    TEXT NOT NULL,
        metrics         TEXT,
        artifact_uri    TEXT,
        artifact_sha256 TEXT,
        fingerprint     TEXT,
        last_evaluation TEXT,
        created_at      TEXT NOT NULL,
        updated_at      TEXT NOT NULL,
        position        BIGINT NOT NULL
    )""",
)

_CATALOG_UPSERT = (
    "INSERT INTO model_catalog (model_id, name, version, training_id, status, environments, "
    "metrics, artifact_uri, artifact_sha256, fingerprint, created_at, updated_at, position) "
    "VALUES (?, ?, ?, ?, 'ready', '[]', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_id) DO UPDATE "
    "SET name = excluded.name, version = coalesce(excluded.version, model_catalog.version), "
    "training_id = excluded.training_id, metrics = excluded.metrics, "
    "artifact_uri = excluded.artifact_uri, artifact_sha256 = excluded.artifact_sha256, "
    "fingerprint = coalesce(excluded.fingerprint, model_catalog.fingerprint), "
    "updated_at = excluded.updated_at, position = excluded.position"
)


def _model_created(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelCreated)
    at = iso(e.created_at)
    tx.execute(
        _CATALOG_UPSERT,
        (
            t.model_id, t.model_name, None, t.training_id, _json(t.metrics), t.artifact.uri,
            t.artifact.sha256, t.fingerprint, at, at, e.position,
        ),
    )


def _model_versioned(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelVersioned)
    at = iso(e.created_at)
    tx.execute(
        _CATALOG_UPSERT,
        (
            t.model_id, t.model_name, t.version, t.training_id, _json(t.metrics),
            t.artifact.uri, t.artifact.sha256, None, at, at, e.position,
        ),
    )


def _set_environments(
    tx: SqlTransaction, model_id: str, environments: list[str], e: RecordedEvent
) -> None:
    # deployed while serving somewhere; retired once it served and no longer does.
    status = "deployed" if environments else "retired"
    tx.execute(
        "UPDATE model_catalog SET environments = ?, status = ?, updated_at = ?, position = ? "
        "WHERE model_id = ?",
        (_json(sorted(environments)), status, iso(e.created_at), e.position, model_id),
    )


def _catalog_deployed(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelDeployed)
    at = iso(e.created_at)
    # A model deployed without passing through model_created (trained elsewhere) still gets
    # a row, so the catalog never hides what serves.
    tx.execute(
        "INSERT INTO model_catalog (model_id, name, version, status, environments, created_at, "
        "updated_at, position) VALUES (?, ?, ?, 'ready', '[]', ?, ?, ?) "
        "ON CONFLICT (model_id) DO NOTHING",
        (t.model_id, t.model_name, t.version, at, at, e.position),
    )
    # The same name has one serving model per environment: the previous one is replaced.
    rows = tx.execute(
        "SELECT model_id, environments FROM model_catalog WHERE model_id <> ? "
        "AND (name = ? OR model_id = ?)",
        (t.model_id, t.model_name, t.replaces_model_id or ""),
    ).fetchall()
    for other_id, environments in rows:
        envs = json.loads(environments)
        if t.environment in envs:
            _set_environments(tx, other_id, [env for env in envs if env != t.environment], e)
    row = tx.execute(
        "SELECT environments FROM model_catalog WHERE model_id = ?", (t.model_id,)
    ).fetchone()
    envs = set(json.loads(row[0])) | {t.environment}
    _set_environments(tx, t.model_id, list(envs), e)


def _catalog_retired(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelRetired)
    row = tx.execute(
        "SELECT environments FROM model_catalog WHERE model_id = ?", (t.model_id,)
    ).fetchone()
    if row is None:
        raise ProjectionError(
            f"model {t.model_id!r} was retired but the catalog has no row for it: its "
            "model_created/model_deployed was not applied (see dead letters)"
        )
    remaining = [env for env in json.loads(row[0]) if env != t.environment]
    _set_environments(tx, t.model_id, remaining, e)


def _catalog_evaluated(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelEvaluated)
    at = iso(e.created_at)
    tx.execute(
        "INSERT INTO model_catalog (model_id, name, version, status, environments, created_at, "
        "updated_at, position) VALUES (?, ?, ?, 'ready', '[]', ?, ?, ?) "
        "ON CONFLICT (model_id) DO NOTHING",
        (t.model_id, t.model_name, t.version, at, at, e.position),
    )
    evaluation = {
        "event_id": e.id,
        "evaluated_at": iso(t.evaluated_at or e.created_at),
        "environment": t.environment,
        "promoted": t.promoted,
        "reason": t.reason,
        "champion_model_id": t.champion_model_id,
        "dataset_version": t.dataset_version,
        "metrics": t.metrics,
        "champion_metrics": t.champion_metrics,
    }
    tx.execute(
        "UPDATE model_catalog SET last_evaluation = ?, updated_at = ?, position = ? "
        "WHERE model_id = ?",
        (_json(evaluation), at, e.position, t.model_id),
    )


def model_catalog_projection() -> Projection:
    """model_catalog: one row per model (name, version, status, metrics, artifact, and its
    last promotion verdict)."""
    return Projection(
        name="model_catalog",
        # 2: last_evaluation (model_evaluated) added.
        version=2,
        ddl=_CATALOG_DDL,
        tables=("model_catalog",),
        handlers={
            EventTypes.MODEL_CREATED: _model_created,
            EventTypes.MODEL_VERSIONED: _model_versioned,
            EventTypes.MODEL_EVALUATED: _catalog_evaluated,
            EventTypes.MODEL_DEPLOYED: _catalog_deployed,
            EventTypes.MODEL_RETIRED: _catalog_retired,
        },
        description="one row per model: name, version, status ready/deployed/retired, "
        "artifact, last evaluation",
    )


# -- model_provenance -------------------------------------------------------------------------

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


def _provenance_started(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, TrainingStarted)
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
            _json(t.code_version.model_dump(mode="json") if t.code_version else None),
            _json(t.hyperparameters), t.seed,
            _json(t.environment.model_dump(mode="json") if t.environment else None),
        ),
    )


def _provenance_completed(
    tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None
) -> None:
    t = _typed(e, typed, TrainingCompleted)
    run = tx.execute(
        "SELECT dataset_id, dataset_version, feature_version, code_version, hyperparameters, "
        "seed, training_environment FROM model_provenance_runs WHERE training_id = ?",
        (e.stream_id,),
    ).fetchone()
    if run is None:
        raise ProjectionError(_no_run(e.stream_id).replace("summary", "provenance"))
    tx.execute(
        "INSERT INTO model_provenance (model_id, training_run_id, dataset_id, dataset_version, "
        "feature_version, code_version, hyperparameters, seed, training_environment, "
        "created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (model_id) DO NOTHING",
        (t.model_id, e.stream_id, *run, iso(t.completed_at or e.created_at), e.position),
    )


def model_provenance_projection() -> Projection:
    """model_provenance: for each model, the run, data, features, code and environment."""
    return Projection(
        name="model_provenance",
        version=1,
        ddl=_PROVENANCE_DDL,
        tables=("model_provenance", "model_provenance_runs"),
        handlers={
            EventTypes.TRAINING_STARTED: _provenance_started,
            EventTypes.TRAINING_COMPLETED: _provenance_completed,
        },
        description="model -> training run, dataset/feature/code version, hyper-parameters",
    )


# -- deployments ------------------------------------------------------------------------------

_DEPLOYMENTS_DDL = (
    """CREATE TABLE IF NOT EXISTS deployments (
        deployment_id        TEXT PRIMARY KEY,
        model_id             TEXT NOT NULL,
        model_name           TEXT NOT NULL,
        version              INTEGER NOT NULL,
        environment          TEXT NOT NULL,
        deployed_at          TEXT NOT NULL,
        retired_at           TEXT,
        reason               TEXT,
        retired_reason       TEXT,
        replaced_by_model_id TEXT,
        position             BIGINT NOT NULL
    )""",
)


def _deployed(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelDeployed)
    at = iso(t.deployed_at or e.created_at)
    # One serving deployment per model name (and per replaced model) in an environment.
    tx.execute(
        "UPDATE deployments SET retired_at = ?, replaced_by_model_id = ?, "
        "retired_reason = 'replaced' WHERE environment = ? "
        "AND retired_at IS NULL AND (model_name = ? OR model_id = ? OR model_id = ?)",
        (at, t.model_id, t.environment, t.model_name, t.model_id, t.replaces_model_id or ""),
    )
    tx.execute(
        "INSERT INTO deployments (deployment_id, model_id, model_name, version, environment, "
        "deployed_at, reason, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (e.id, t.model_id, t.model_name, t.version, t.environment, at, t.reason, e.position),
    )


def _retired(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
    t = _typed(e, typed, ModelRetired)
    # Nothing open is fine: a later deployment may already have replaced it.
    tx.execute(
        "UPDATE deployments SET retired_at = ?, retired_reason = ?, "
        "replaced_by_model_id = coalesce(?, replaced_by_model_id) "
        "WHERE model_id = ? AND environment = ? AND retired_at IS NULL",
        (
            iso(t.retired_at or e.created_at), t.reason or "retired", t.replaced_by_model_id,
            t.model_id, t.environment,
        ),
    )


def deployments_projection() -> Projection:
    """deployments: the serving history, one row per deployment (open while retired_at is
    NULL). Deploying a model closes the open deployment of the same name in that environment."""
    return Projection(
        name="deployments",
        version=1,
        ddl=_DEPLOYMENTS_DDL,
        tables=("deployments",),
        handlers={EventTypes.MODEL_DEPLOYED: _deployed, EventTypes.MODEL_RETIRED: _retired},
        description="serving history: model, version, environment, deployed_at, retired_at",
    )


# -- inference_quality ------------------------------------------------------------------------

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
    def completed(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
        t = _typed(e, typed, InferenceCompleted)
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
            (e.stream_id, t.model_id, t.model_version, _json(t.prediction)),
        )

    def feedback(tx: SqlTransaction, e: RecordedEvent, typed: DomainEvent | None) -> None:
        t = _typed(e, typed, InferenceFeedback)
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

    return {EventTypes.INFERENCE_COMPLETED: completed, EventTypes.INFERENCE_FEEDBACK: feedback}


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


def builtin_projections(inference_window: int = DEFAULT_INFERENCE_WINDOW) -> list[Projection]:
    """Every built-in read model, ready for `ProjectionRunner(store, builtin_projections())`."""
    return [
        training_summaries_projection(),
        model_catalog_projection(),
        model_provenance_projection(),
        deployments_projection(),
        inference_quality_projection(inference_window),
    ]


# -- queries ----------------------------------------------------------------------------------

def _decode(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    out = {}
    for name, value in zip(columns, row, strict=True):
        out[name] = json.loads(value) if name in JSON_COLUMNS and isinstance(value, str) else value
    return out


def query_read_model(
    source: EventStore | Queryable, table: str, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """Rows of `sql` (which reads `table`) as dicts with JSON columns decoded, from the live
    read models of a store or from an as-of snapshot."""
    if isinstance(source, EventStore):
        with source.transaction() as tx:
            if not table_exists(tx, table):
                raise ReadModelMissingError(
                    f"read model {table!r} does not exist in {source!r} yet; run the "
                    "projections first (`mlevents project`, or "
                    "ProjectionRunner(store, builtin_projections()).run())"
                )
            cursor = tx.execute(sql, params)
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        return [_decode(columns, row) for row in rows]
    return [
        {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in r.items()}
        for r in source.query(sql, params)
    ]


def _one(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


def get_training_summary(source: EventStore | Queryable, training_id: str) -> dict[str, Any] | None:
    return _one(
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


def get_model(source: EventStore | Queryable, model_id: str) -> dict[str, Any] | None:
    return _one(
        query_read_model(
            source, "model_catalog", "SELECT * FROM model_catalog WHERE model_id = ?", (model_id,)
        )
    )


def list_models(
    source: EventStore | Queryable, name: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Catalog rows by name then version; filter by `name` and `status` (ready/deployed/retired)."""
    where, params = [], []
    if name:
        where.append("name = ?")
        params.append(name)
    if status:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return query_read_model(
        source, "model_catalog",
        f"SELECT * FROM model_catalog {clause}ORDER BY name, version, created_at", params,
    )


def get_model_provenance(source: EventStore | Queryable, model_id: str) -> dict[str, Any] | None:
    return _one(
        query_read_model(
            source, "model_provenance",
            "SELECT * FROM model_provenance WHERE model_id = ?", (model_id,),
        )
    )


def current_deployment(
    source: EventStore | Queryable, model_name: str, environment: str = "production"
) -> dict[str, Any] | None:
    """The open deployment of `model_name` in `environment` (None if nothing serves)."""
    return _one(
        query_read_model(
            source, "deployments",
            "SELECT * FROM deployments WHERE model_name = ? AND environment = ? "
            "AND retired_at IS NULL ORDER BY deployed_at DESC, position DESC",
            (model_name, environment),
        )
    )


def list_deployments(
    source: EventStore | Queryable,
    model_name: str | None = None,
    environment: str | None = None,
    active_only: bool = False,
) -> list[dict[str, Any]]:
    """The serving history, oldest first."""
    where, params = [], []
    if model_name:
        where.append("model_name = ?")
        params.append(model_name)
    if environment:
        where.append("environment = ?")
        params.append(environment)
    if active_only:
        where.append("retired_at IS NULL")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    return query_read_model(
        source, "deployments", f"SELECT * FROM deployments {clause}ORDER BY position", params
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
