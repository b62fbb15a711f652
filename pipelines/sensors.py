"""Sensors: the event store and the landing folder drive retraining and provenance refreshes.

Store sensors keep the last global position they processed as their cursor (O(new events)).

Every RunRequest's run_key is the id of the event that caused it (or, for the landing folder,
a hash of the new files), so a tick that is evaluated again never launches a second run. A
store sensor ignores events written by a run that itself covers the assets it would launch
(a full pipeline run retrains and refreshes provenance on its own), unless that run failed.
"""

import hashlib
import json
import os
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster import (
    CAUSE_TAG,
    EventStoreResource,
    LandingFolderResource,
    QualityPolicy,
    event_sensor,
    orphan_sensors,
    quality_sensor,
)
from pipelines.jobs import (
    PROVENANCE_ASSETS,
    RETRAIN_ASSETS,
    ingestion_job,
    provenance_job,
    retrain_job,
)
from pipelines.state import dataset_history

__all__ = [
    "CAUSE_TAG",
    "DEFAULT_INTERVAL_SECONDS",
    "PROVENANCE_TRIGGERS",
    "QualityPolicy",
    "build_quality_sensor",
    "landing_folder_sensor",
    "quality_policy_from_env",
    "refresh_provenance",
    "retrain_on_new_data",
    "retrain_on_quality_drop",
    "sensors",
]

DEFAULT_INTERVAL_SECONDS = int(os.environ.get("MLEVENTS_SENSOR_INTERVAL", "10"))


def _passed(event: es.RecordedEvent) -> bool:
    return bool(event.payload.get("passed"))


def _dataset_versions(causes: list[es.RecordedEvent]) -> dict[str, str]:
    versions = ",".join(e.payload["dataset_version"][:12] for e in causes)
    return {"mlevents/dataset_versions": versions}


retrain_on_new_data = event_sensor(
    "retrain_on_new_data",
    [EventTypes.DATA_VALIDATED],
    job=retrain_job,
    filter=_passed,
    tags=_dataset_versions,
    covers=RETRAIN_ASSETS,
    interval_seconds=DEFAULT_INTERVAL_SECONDS,
    description="data_validated (passed) for a new dataset version -> features, training, "
    "evaluation, deployment. One run per tick, keyed by the newest such event.",
)

PROVENANCE_TRIGGERS = (
    EventTypes.TRAINING_COMPLETED,
    EventTypes.MODEL_EVALUATED,
    EventTypes.MODEL_DEPLOYED,
    EventTypes.MODEL_RETIRED,
)

refresh_provenance = event_sensor(
    "refresh_provenance",
    PROVENANCE_TRIGGERS,
    job=provenance_job,
    covers=PROVENANCE_ASSETS,
    interval_seconds=DEFAULT_INTERVAL_SECONDS,
    description="training_completed / model_deployed / model_retired -> refresh the read "
    "models and the deployed model's lineage.",
)


def quality_policy_from_env() -> QualityPolicy:
    """From $MLEVENTS_QUALITY_THRESHOLD, _WINDOW and _MIN_FEEDBACK (defaults otherwise)."""
    default = QualityPolicy()
    return QualityPolicy(
        threshold=float(os.environ.get("MLEVENTS_QUALITY_THRESHOLD", default.threshold)),
        window=int(os.environ.get("MLEVENTS_QUALITY_WINDOW", default.window)),
        min_feedback=int(os.environ.get("MLEVENTS_QUALITY_MIN_FEEDBACK", default.min_feedback)),
    )


def build_quality_sensor(
    policy: QualityPolicy | None = None, name: str = "retrain_on_quality_drop"
) -> dg.SensorDefinition:
    """The quality sensor on the retrain job (default policy: `quality_policy_from_env()`)."""
    return quality_sensor(
        retrain_job,
        policy or quality_policy_from_env(),
        name=name,
        interval_seconds=DEFAULT_INTERVAL_SECONDS,
    )


retrain_on_quality_drop = build_quality_sensor()


# -- landing folder ------------------------------------------------------------------------------


def _sha256_file(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dg.sensor(
    name="landing_folder_sensor",
    jobs=[ingestion_job],
    minimum_interval_seconds=DEFAULT_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="New batch CSVs in the landing folder (by content hash, skipping any already "
    "ingested) -> ingest and validate them.",
)
def landing_folder_sensor(
    context: dg.SensorEvaluationContext,
    landing: LandingFolderResource,
    event_store: EventStoreResource,
) -> dg.SensorResult:
    seen: list[str] = json.loads(context.cursor) if context.cursor else []
    known = set(seen)
    ingested = dataset_history(event_store.store).ingested_hashes()
    new: dict[str, str] = {}
    for path in landing.batch_files():
        digest = _sha256_file(path)
        if digest not in known and digest not in ingested:
            new.setdefault(digest, path.name)
        known.add(digest)
    requests = []
    if new:
        key = hashlib.sha256(",".join(sorted(new)).encode()).hexdigest()
        requests.append(
            dg.RunRequest(
                run_key=f"landing:{key}",
                job_name=ingestion_job.name,
                tags={"mlevents/batch_files": ",".join(sorted(new.values()))[:1000]},
            )
        )
        context.log.info(f"new batch files: {sorted(new.values())}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(sorted(known)))


sensors = [
    retrain_on_new_data,
    retrain_on_quality_drop,
    refresh_provenance,
    landing_folder_sensor,
    *orphan_sensors(DEFAULT_INTERVAL_SECONDS),
]
