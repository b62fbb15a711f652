"""A pipeline's state, read back from the event store: dataset versions, feature versions, models.

Pipelines keep no state of their own; each step decides from the log what to do next.
"""

from dataclasses import dataclass, field
from typing import Any

import event_sourcing as es
from event_sourcing.catalog import (
    DataIngested,
    DatasetRedacted,
    DataValidated,
    EventTypes,
    FeatureVersioned,
)
from event_sourcing.privacy.redaction import DATASET_STREAM_TYPE
from event_sourcing.training import model_name_stream

__all__ = [
    "DATASET_STREAM_TYPE",
    "DEPLOYMENT_STREAM_TYPE",
    "FEATURE_STREAM_TYPE",
    "DatasetHistory",
    "DatasetVersion",
    "ModelRecord",
    "dataset_history",
    "event_summary",
    "latest_feature_version",
    "latest_model",
    "model_record",
]

FEATURE_STREAM_TYPE = "feature_set"
DEPLOYMENT_STREAM_TYPE = "deployment"


@dataclass
class DatasetVersion:
    """One version of the dataset: the data_ingested that made it and its validation, if any."""

    ingested: DataIngested
    ingested_event: es.RecordedEvent
    validated: DataValidated | None = None
    validated_event: es.RecordedEvent | None = None
    redacted_from: str | None = None
    """The version this one redacted (dataset_redacted): its rows minus an erased subject's."""

    @property
    def version(self) -> str:
        return self.ingested.dataset_version

    @property
    def status(self) -> str:
        """'pending' (not validated yet), 'passed' or 'failed'."""
        if self.validated is None:
            return "pending"
        return "passed" if self.validated.passed else "failed"


@dataclass
class DatasetHistory:
    """The dataset stream folded: versions in ingestion order, and the stream's version."""

    versions: list[DatasetVersion] = field(default_factory=list)
    """Live versions: a redacted version takes the place of the one it redacted."""
    stream_version: int = 0
    redacted: dict[str, es.RecordedEvent] = field(default_factory=dict)
    """Old version -> the dataset_redacted that replaced it (its bytes are deleted)."""

    def by_version(self, version: str) -> DatasetVersion | None:
        return next((v for v in self.versions if v.version == version), None)

    def ingested_hashes(self) -> set[str]:
        """sha256 of every batch file ingested so far."""
        return {v.ingested.content_sha256 for v in self.versions}

    def latest_passed(self) -> DatasetVersion | None:
        return next((v for v in reversed(self.versions) if v.status == "passed"), None)

    def pending(self) -> list[DatasetVersion]:
        return [v for v in self.versions if v.status == "pending"]

    def ingestion_parent(self) -> DatasetVersion | None:
        """The version a new batch is appended to: the newest one not known to be bad."""
        return next((v for v in reversed(self.versions) if v.status != "failed"), None)


def dataset_history(store: es.EventStore, stream: str) -> DatasetHistory:
    """Fold a dataset stream (one data_ingested per version, then its data_validated)."""
    history = DatasetHistory()
    for event in store.read_stream(stream):
        history.stream_version = event.version
        if event.event_type == EventTypes.DATA_INGESTED:
            history.versions.append(
                DatasetVersion(DataIngested.model_validate(event.payload), event)
            )
        elif event.event_type == EventTypes.DATASET_REDACTED:
            _fold_redaction(history, event)
        elif event.event_type == EventTypes.DATA_VALIDATED:
            validated = DataValidated.model_validate(event.payload)
            target = history.by_version(validated.dataset_version)
            if target is not None:
                target.validated, target.validated_event = validated, event
    return history


def _fold_redaction(history: DatasetHistory, event: es.RecordedEvent) -> None:
    """The redacted version replaces the old one, in its place, pending validation (or with
    the verdict of an identical version, when the redacted rows are one); it keeps the old
    one's batch hash, so the batch file is not ingested again."""
    redacted = DatasetRedacted.model_validate(event.payload)
    history.redacted[redacted.old_version] = event
    same = history.by_version(redacted.new_version)
    for index, old in enumerate(history.versions):
        if old.version == redacted.old_version:
            ingested = old.ingested.model_copy(update={
                "dataset_version": redacted.new_version, "rows": redacted.rows_out,
                "artifact": redacted.artifact,
            })
            history.versions[index] = DatasetVersion(
                ingested, event, same.validated if same else None,
                same.validated_event if same else None, redacted_from=redacted.old_version,
            )


def latest_feature_version(
    store: es.EventStore, stream: str
) -> tuple[FeatureVersioned, es.RecordedEvent] | None:
    """The newest feature_versioned of a feature-set stream, or None."""
    for event in reversed(store.read_stream(stream)):
        if event.event_type == EventTypes.FEATURE_VERSIONED:
            return FeatureVersioned.model_validate(event.payload), event
    return None


@dataclass(frozen=True)
class ModelRecord:
    """A model version as the catalog events describe it."""

    model_id: str
    model_name: str
    version: int
    training_id: str
    artifact: Any
    metrics: dict[str, float]
    versioned_event: es.RecordedEvent


def latest_model(store: es.EventStore, model_name: str) -> ModelRecord | None:
    """The newest version of `model_name` (the last model_versioned of its stream)."""
    stream = model_name_stream(model_name)
    version = store.stream_version(stream)
    if version == 0:
        return None
    event = store.read_stream(stream, version, version)[0]
    return _record(event)


def model_record(store: es.EventStore, model_id: str, model_name: str) -> ModelRecord | None:
    """The catalog record of one model id, or None."""
    for event in reversed(store.read_stream(model_name_stream(model_name))):
        if event.payload.get("model_id") == model_id:
            return _record(event)
    return None


def _record(event: es.RecordedEvent) -> ModelRecord:
    payload = event.payload
    return ModelRecord(
        model_id=payload["model_id"],
        model_name=payload["model_name"],
        version=int(payload["version"]),
        training_id=payload["training_id"],
        artifact=payload["artifact"],
        metrics=dict(payload.get("metrics") or {}),
        versioned_event=event,
    )


def event_summary(events: list[es.RecordedEvent]) -> list[dict[str, Any]]:
    """Event id, type, stream and position of each event: what materialization metadata shows."""
    return [
        {
            "event_id": event.id,
            "event_type": event.event_type,
            "stream_id": event.stream_id,
            "position": event.position,
        }
        for event in events
    ]
