"""What every built-in read model shares: JSON columns, query helpers, and the rule that an
UPDATE must hit its row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from event_sourcing.projections.runner import ProjectionError, ReadModelMissingError
from event_sourcing.stores.recorder import SqlTransaction
from event_sourcing.stores.store import EventStore

__all__ = ["JSON_COLUMNS", "Queryable", "query_read_model"]

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


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def update_one(tx: SqlTransaction, sql: str, params: Sequence[Any], missing: str) -> None:
    """An UPDATE that must hit a row: otherwise an earlier event was not applied, so fail
    (the runner parks the event, visibly, instead of silently dropping its change)."""
    if tx.execute(sql, params).rowcount == 0:
        raise ProjectionError(missing)


def no_run(training_id: str, what: str = "summary") -> str:
    return (
        f"training run {training_id!r} has no {what} row: its training_started was not "
        "applied (see the projection's dead letters)"
    )


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
        with source.transaction(read_only=True) as tx:
            if not tx.table_exists(table):
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


def one(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None
