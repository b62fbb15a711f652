"""The inference job: score a batch CSV with the deployed model, logging every prediction.

When the batch has labels, each prediction's feedback is logged too (feeding quality sensors).
"""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource, run_metadata
from event_sourcing.serving import score_batch
from pipelines.dataset import ID_COLUMN, TARGET_COLUMN
from pipelines.state import ENVIRONMENT, MODEL_NAME

__all__ = ["ScoringConfig", "inference_job", "score_batch_op"]


class ScoringConfig(dg.Config):
    """Which batch to score, with which deployed model."""

    path: str = Field(description="CSV file of rows to score (the batch schema)")
    label_column: str | None = Field(
        default=TARGET_COLUMN,
        description="column with true labels; when present, feedback is logged per row",
    )
    id_column: str | None = Field(default=ID_COLUMN, description="row id column (not an input)")
    environment: str = ENVIRONMENT
    model_name: str = MODEL_NAME


@dg.op(description="Score a CSV batch with the deployed model and log predictions/feedback.")
def score_batch_op(
    context: dg.OpExecutionContext,
    config: ScoringConfig,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
) -> dg.Output[dict[str, object]]:
    path = Path(config.path)
    if not path.is_file():
        raise dg.Failure(f"no batch file at {path}: give the path of a CSV in the batch schema")
    frame = pd.read_csv(path)
    result = score_batch(
        event_store.store,
        artifact_store.store,
        frame,
        environment=config.environment,
        model_name=config.model_name,
        label_column=config.label_column,
        id_column=config.id_column,
        correlation_id=context.run.run_id,
        metadata={**run_metadata(context), "batch_file": path.name},
    )
    summary: dict[str, object] = {
        "model_id": result.model_id,
        "model_version": result.model_version,
        "rows": len(result.predictions),
        "predictions_logged": len(result.inference_ids),
        "feedback_logged": result.feedback,
        "accuracy": result.accuracy,
    }
    context.log.info(f"scored {path.name}: {summary}")
    metadata: dict[str, Any] = {
        **{k: v for k, v in summary.items() if v is not None},
        "batch_file": str(path),
        "first_inference_id": result.inference_ids[0] if result.inference_ids else "",
    }
    return dg.Output(summary, metadata=metadata)


@dg.job(
    description="Score a batch with the deployed model (run config: ops.score_batch_op.config.path)"
)
def inference_job() -> None:
    score_batch_op()
