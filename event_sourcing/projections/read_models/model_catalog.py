"""model_catalog: one row per model (name, version, status, metrics, artifact, last
promotion verdict), its handlers and queries.
"""

from __future__ import annotations

import json
from typing import Any

from event_sourcing.catalog import (
    ModelCreated,
    ModelDeployed,
    ModelRetired,
    ModelVersioned,
)
from event_sourcing.catalog.ml_events import ModelEvaluated, SubjectErased
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models.common import (
    Queryable,
    one,
    query_read_model,
    to_json,
)
from event_sourcing.projections.runner import Projection, ProjectionError, iso, on
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["get_model", "list_models", "model_catalog_projection"]

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
        erased_by       TEXT,
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


def _model_created(tx: SqlTransaction, e: RecordedEvent, t: ModelCreated) -> None:
    at = iso(e.occurred_at)
    tx.execute(
        _CATALOG_UPSERT,
        (
            t.model_id, t.model_name, None, t.training_id, to_json(t.metrics), t.artifact.uri,
            t.artifact.sha256, t.fingerprint, at, at, e.position,
        ),
    )


def _model_versioned(tx: SqlTransaction, e: RecordedEvent, t: ModelVersioned) -> None:
    at = iso(e.occurred_at)
    tx.execute(
        _CATALOG_UPSERT,
        (
            t.model_id, t.model_name, t.version, t.training_id, to_json(t.metrics),
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
        (to_json(sorted(environments)), status, iso(e.occurred_at), e.position, model_id),
    )


def _catalog_deployed(tx: SqlTransaction, e: RecordedEvent, t: ModelDeployed) -> None:
    at = iso(e.occurred_at)
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


def _catalog_retired(tx: SqlTransaction, e: RecordedEvent, t: ModelRetired) -> None:
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


def _catalog_evaluated(tx: SqlTransaction, e: RecordedEvent, t: ModelEvaluated) -> None:
    at = iso(e.occurred_at)
    tx.execute(
        "INSERT INTO model_catalog (model_id, name, version, status, environments, created_at, "
        "updated_at, position) VALUES (?, ?, ?, 'ready', '[]', ?, ?, ?) "
        "ON CONFLICT (model_id) DO NOTHING",
        (t.model_id, t.model_name, t.version, at, at, e.position),
    )
    evaluation = {
        "event_id": e.id,
        "evaluated_at": iso(t.evaluated_at or e.occurred_at),
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
        (to_json(evaluation), at, e.position, t.model_id),
    )


def _catalog_erased(tx: SqlTransaction, e: RecordedEvent, t: SubjectErased) -> None:
    """Flag the models whose training data held an erased subject (the latest erasure)."""
    if t.model_ids:
        marks = ",".join("?" * len(t.model_ids))
        tx.execute(
            f"UPDATE model_catalog SET erased_by = ?, updated_at = ?, position = ? "
            f"WHERE model_id IN ({marks})",
            (e.id, iso(e.occurred_at), e.position, *t.model_ids),
        )


def model_catalog_projection() -> Projection:
    """model_catalog: one row per model (name, version, status, metrics, artifact, its last
    promotion verdict, and `erased_by`: the subject_erased event whose subject's rows were
    in its training data)."""
    return Projection(
        name="model_catalog",
        # 2: last_evaluation (model_evaluated) added. 3: erased_by (subject_erased).
        version=3,
        ddl=_CATALOG_DDL,
        tables=("model_catalog",),
        handlers=dict(
            (
                on(ModelCreated, _model_created),
                on(ModelVersioned, _model_versioned),
                on(ModelEvaluated, _catalog_evaluated),
                on(ModelDeployed, _catalog_deployed),
                on(ModelRetired, _catalog_retired),
                on(SubjectErased, _catalog_erased),
            )
        ),
        description="one row per model: name, version, status ready/deployed/retired, "
        "artifact, last evaluation",
    )


def get_model(source: EventStore | Queryable, model_id: str) -> dict[str, Any] | None:
    return one(
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
