"""The read models as an asset, with the log's health: numeric metadata Dagster plots over
time (head position, events/s, lag, dead letters) and asset checks on lag and dead letters.
"""

import time
from collections.abc import Sequence
from typing import Any

import dagster as dg

from event_sourcing.dagster.event_store import EventStoreResource
from event_sourcing.projections import ProjectionRunner, builtin_projections

__all__ = ["DEFAULT_MAX_LAG", "read_models_asset"]

DEFAULT_MAX_LAG = 0
"""Positions a read model may trail the head by right after it was caught up."""
_COUNTED_TABLES = ("training_summaries", "model_catalog", "model_provenance", "deployments")


def read_models_asset(
    deps: Sequence[Any] = (),
    key: str = "read_models",
    group_name: str = "provenance",
    max_lag: int = DEFAULT_MAX_LAG,
) -> dg.AssetsDefinition:
    """The built-in read models caught up with the log, and two checks: `projection_lag`
    (every read model within `max_lag` positions of the head) and `no_dead_letters` (no
    event parked by a projection; `mlevents dead-letters` lists and retries them)."""

    @dg.asset(
        key=key,
        deps=list(deps),
        group_name=group_name,
        check_specs=[
            dg.AssetCheckSpec(
                "projection_lag",
                asset=key,
                description=f"every read model within {max_lag} position(s) of the log's head",
            ),
            dg.AssetCheckSpec(
                "no_dead_letters",
                asset=key,
                description="no event parked by a projection (mlevents dead-letters)",
            ),
        ],
        description="The built-in read models (training summaries, model catalog, provenance, "
        "deployments, inference quality) caught up with the log; their lag, dead letters and "
        "throughput, plotted over time.",
    )
    def read_models(
        context: dg.AssetExecutionContext, event_store: EventStoreResource
    ) -> dg.MaterializeResult:
        store = event_store.store
        runner = ProjectionRunner(store, builtin_projections())
        started = time.monotonic()
        stats = runner.run()
        seconds = max(time.monotonic() - started, 1e-9)
        status = {s.name: s.to_dict() for s in runner.status()}
        with store.transaction(read_only=True) as tx:
            counts = {
                table: int(tx.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in _COUNTED_TABLES
                if tx.table_exists(table)
            }
        for name, stat in stats.items():
            context.log.info(f"{name}: applied {stat.applied}, parked {stat.parked}")
        lag = max((s["lag"] for s in status.values()), default=0)
        dead = sum(s["dead_letters"] for s in status.values())
        behind = {n: s["lag"] for n, s in status.items() if s["lag"] > max_lag}
        parked = {n: s["dead_letters"] for n, s in status.items() if s["dead_letters"]}
        read = sum(s.read for s in stats.values())
        return dg.MaterializeResult(
            metadata={
                "head_position": dg.MetadataValue.int(status_head(status, store)),
                "events_applied": dg.MetadataValue.int(sum(s.applied for s in stats.values())),
                "events_per_second": dg.MetadataValue.float(round(read / seconds, 1)),
                "max_lag": dg.MetadataValue.int(lag),
                "dead_letters": dg.MetadataValue.int(dead),
                "applied": dg.MetadataValue.json({n: s.applied for n, s in stats.items()}),
                "rows": dg.MetadataValue.json(counts),
                "projections": dg.MetadataValue.json(status),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="projection_lag",
                    passed=not behind,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=f"behind the head: {behind}" if behind else "all caught up",
                    metadata={"max_lag": dg.MetadataValue.int(lag)},
                ),
                dg.AssetCheckResult(
                    check_name="no_dead_letters",
                    passed=not parked,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=f"parked events: {parked}; `mlevents dead-letters` lists and "
                    "retries them"
                    if parked
                    else "no parked events",
                    metadata={"dead_letters": dg.MetadataValue.int(dead)},
                ),
            ],
            data_version=dg.DataVersion(str(status_head(status, store))),
        )

    return read_models


def status_head(status: dict[str, dict[str, Any]], store: Any) -> int:
    """The head position the status was taken at (the store's, without read models)."""
    heads = [int(s["head"]) for s in status.values()]
    return max(heads) if heads else store.head_position()
