"""The pipeline's assets, from landed batch files to a deployed model and its lineage.

One module per stage; `all_assets` lists them for Definitions.
"""

from pipelines.assets.deployment import deployed_model, model_evaluation
from pipelines.assets.features import features
from pipelines.assets.ingestion import raw_data
from pipelines.assets.provenance import deployed_model_lineage, read_models
from pipelines.assets.training import trained_model
from pipelines.assets.validation import validated_data

all_assets = [
    raw_data,
    validated_data,
    features,
    trained_model,
    model_evaluation,
    deployed_model,
    read_models,
    deployed_model_lineage,
]

__all__ = [
    "all_assets",
    "deployed_model",
    "deployed_model_lineage",
    "features",
    "model_evaluation",
    "raw_data",
    "read_models",
    "trained_model",
    "validated_data",
]
