"""deployments: the serving history, one row per deployment; its handlers and queries.
"""

from __future__ import annotations

from typing import Any

from event_sourcing.catalog import DEFAULT_ENVIRONMENT, ModelDeployed, ModelRetired
from event_sourcing.events import RecordedEvent
from event_sourcing.projections.read_models.common import (
    Queryable,
    one,
    query_read_model,
)
from event_sourcing.projections.runner import Projection, iso, on
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["current_deployment", "deployments_projection", "list_deployments"]

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
    # What serves now: deploying closes these, serving reads them.
    "CREATE INDEX IF NOT EXISTS deployments_open ON deployments (environment, model_name) "
    "WHERE retired_at IS NULL",
)


def _deployed(tx: SqlTransaction, e: RecordedEvent, t: ModelDeployed) -> None:
    at = iso(t.deployed_at or e.occurred_at)
    # One serving deployment per model name (and per replaced model) in an environment, by
    # business time: a backfilled deployment replaces those deployed before it (and still
    # serving at its time), and is itself replaced by the first one deployed after it, so
    # recording history late never changes what serves now.
    tx.execute(
        "UPDATE deployments SET retired_at = ?, replaced_by_model_id = ?, "
        "retired_reason = 'replaced' WHERE environment = ? AND deployed_at <= ? "
        "AND (retired_at IS NULL OR retired_at > ?) "
        "AND (model_name = ? OR model_id = ? OR model_id = ?)",
        (at, t.model_id, t.environment, at, at, t.model_name, t.model_id,
         t.replaces_model_id or ""),
    )
    later = tx.execute(
        "SELECT deployed_at, model_id FROM deployments WHERE environment = ? "
        "AND model_name = ? AND deployed_at > ? ORDER BY deployed_at, position LIMIT 1",
        (t.environment, t.model_name, at),
    ).fetchone()
    retired_at, replaced_by = (later[0], later[1]) if later else (None, None)
    tx.execute(
        "INSERT INTO deployments (deployment_id, model_id, model_name, version, environment, "
        "deployed_at, reason, position, retired_at, retired_reason, replaced_by_model_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.id, t.model_id, t.model_name, t.version, t.environment, at, t.reason, e.position,
         retired_at, "replaced" if later else None, replaced_by),
    )


def _retired(tx: SqlTransaction, e: RecordedEvent, t: ModelRetired) -> None:
    # Nothing open is fine: a later deployment may already have replaced it.
    tx.execute(
        "UPDATE deployments SET retired_at = ?, retired_reason = ?, "
        "replaced_by_model_id = coalesce(?, replaced_by_model_id) "
        "WHERE model_id = ? AND environment = ? AND retired_at IS NULL",
        (
            iso(t.retired_at or e.occurred_at), t.reason or "retired", t.replaced_by_model_id,
            t.model_id, t.environment,
        ),
    )


def deployments_projection() -> Projection:
    """deployments: the serving history, one row per deployment (open while retired_at is
    NULL). Deploying a model closes the deployment of the same name in that environment that
    served at its deployed_at (business time: docs/temporal.md)."""
    return Projection(
        name="deployments",
        # 2: the index of open deployments. 3: deployments replace by business time.
        version=3,
        ddl=_DEPLOYMENTS_DDL,
        tables=("deployments",),
        handlers=dict((on(ModelDeployed, _deployed), on(ModelRetired, _retired))),
        description="serving history: model, version, environment, deployed_at, retired_at",
    )


def current_deployment(
    source: EventStore | Queryable, model_name: str, environment: str = DEFAULT_ENVIRONMENT
) -> dict[str, Any] | None:
    """The open deployment of `model_name` in `environment` (None if nothing serves)."""
    return one(
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
