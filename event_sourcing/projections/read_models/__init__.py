"""The built-in read models, one module each (its tables, the handlers that keep them, its
queries). Times stored are event times by business time (the payload's own time when it
has one, e.g. deployed_at, else the event's occurred_at, which is its created_at unless
given: docs/temporal.md), so a rebuild or an as-of evaluation reproduces the same rows;
JSON columns are TEXT.
"""

from event_sourcing.projections.read_models.common import Queryable, query_read_model
from event_sourcing.projections.read_models.deployments import (
    current_deployment,
    deployments_projection,
    list_deployments,
)
from event_sourcing.projections.read_models.inference_quality import (
    DEFAULT_INFERENCE_WINDOW,
    get_inference_quality,
    inference_quality_projection,
)
from event_sourcing.projections.read_models.model_catalog import (
    get_model,
    list_models,
    model_catalog_projection,
)
from event_sourcing.projections.read_models.model_provenance import (
    get_model_provenance,
    model_provenance_projection,
)
from event_sourcing.projections.read_models.training_summaries import (
    get_training_summary,
    list_trainings,
    training_summaries_projection,
)
from event_sourcing.projections.runner import Projection

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


def builtin_projections(inference_window: int = DEFAULT_INFERENCE_WINDOW) -> list[Projection]:
    """Every built-in read model, ready for `ProjectionRunner(store, builtin_projections())`."""
    return [
        training_summaries_projection(),
        model_catalog_projection(),
        model_provenance_projection(),
        deployments_projection(),
        inference_quality_projection(inference_window),
    ]
