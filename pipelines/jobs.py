"""The breast cancer model's jobs and asset keys (built by the factory in definitions.py),
plus the op job that scores a batch with a deployed model.
"""

from event_sourcing.dagster import SERIAL_TAG
from pipelines.definitions import breast_cancer
from pipelines.inference import inference_job

__all__ = [
    "FULL_PIPELINE_ASSETS",
    "INGESTION_ASSETS",
    "PROVENANCE_ASSETS",
    "RETRAIN_ASSETS",
    "SERIAL_TAG",
    "full_pipeline_job",
    "inference_job",
    "ingestion_job",
    "provenance_job",
    "retrain_job",
]

INGESTION_ASSETS = breast_cancer.ingestion_assets
RETRAIN_ASSETS = breast_cancer.retrain_assets
PROVENANCE_ASSETS = breast_cancer.provenance_assets
FULL_PIPELINE_ASSETS = [*INGESTION_ASSETS, *RETRAIN_ASSETS, *PROVENANCE_ASSETS]
ingestion_job = breast_cancer.jobs["ingest"]
retrain_job = breast_cancer.jobs["retrain"]
provenance_job = breast_cancer.jobs["provenance"]
full_pipeline_job = breast_cancer.jobs["full"]
