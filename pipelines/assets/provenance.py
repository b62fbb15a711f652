"""Provenance assets: the read models caught up with the log, and the deployed model's lineage.

Lineage is published as a text tree (and Mermaid source) in the materialization metadata.
"""

import hashlib
from typing import Any

import dagster as dg

from event_sourcing.dagster import EventStoreResource
from event_sourcing.projections import ProjectionRunner, builtin_projections
from event_sourcing.serving import current_deployment
from pipelines.assets.deployment import deployed_model
from pipelines.code_versions import module_code_version
from pipelines.state import ENVIRONMENT, MODEL_NAME

__all__ = ["deployed_model_lineage", "read_models"]

CODE_VERSION = module_code_version(__file__)
_COUNTED_TABLES = ("training_summaries", "model_catalog", "model_provenance", "deployments")


@dg.asset(
    deps=[deployed_model],
    group_name="provenance",
    code_version=CODE_VERSION,
    description="The built-in read models (training summaries, model catalog, provenance, "
    "deployments, inference quality) caught up with the log.",
)
def read_models(
    context: dg.AssetExecutionContext, event_store: EventStoreResource
) -> dg.MaterializeResult:
    store = event_store.store
    runner = ProjectionRunner(store, builtin_projections())
    stats = runner.run()
    status = {s.name: s.to_dict() for s in runner.status()}
    counts: dict[str, Any] = {}
    with store.transaction() as tx:
        for table in _COUNTED_TABLES:
            counts[table] = int(tx.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    head = store.head_position()
    serving = current_deployment(store, ENVIRONMENT, MODEL_NAME)
    for name, stat in stats.items():
        context.log.info(f"{name}: applied {stat.applied}, parked {stat.parked}")
    return dg.MaterializeResult(
        metadata={
            "head_position": dg.MetadataValue.int(head),
            "applied": dg.MetadataValue.json({n: s.applied for n, s in stats.items()}),
            "dead_letters": dg.MetadataValue.int(sum(s["dead_letters"] for s in status.values())),
            "max_lag": dg.MetadataValue.int(max((s["lag"] for s in status.values()), default=0)),
            "rows": dg.MetadataValue.json(counts),
            "projections": dg.MetadataValue.json(status),
            "deployed_model": serving.model_id if serving else "",
        },
        data_version=dg.DataVersion(str(head)),
    )


@dg.asset(
    deps=[deployed_model, read_models],
    group_name="provenance",
    code_version=CODE_VERSION,
    description="Lineage of the deployed model (model <- training run <- features <- dataset "
    "<- ingestion batches), from the event log, as a tree (and a Mermaid diagram).",
)
def deployed_model_lineage(
    context: dg.AssetExecutionContext, event_store: EventStoreResource
) -> dg.MaterializeResult:
    from event_sourcing.cli.render import graph_text
    from event_sourcing.provenance import lineage

    store = event_store.store
    serving = current_deployment(store, ENVIRONMENT, MODEL_NAME)
    if serving is None:
        raise dg.Failure("no model is deployed yet: materialize deployed_model first")
    graph = lineage(store, serving.model_id)
    mermaid = graph.to_mermaid()
    return dg.MaterializeResult(
        metadata={
            "model_id": serving.model_id,
            "model_version": dg.MetadataValue.int(serving.version),
            # Dagster's Markdown shows Mermaid as source; a text tree reads as lineage.
            "lineage": dg.MetadataValue.md(f"```text\n{graph_text(graph)}```"),
            "mermaid": dg.MetadataValue.text(mermaid),
        },
        data_version=dg.DataVersion(hashlib.sha256(mermaid.encode()).hexdigest()),
    )
