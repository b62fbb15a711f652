"""What an erasure led to beyond the log's own events, for the erasure report: the dataset
versions redacted (old -> new), and the models flagged, retrained, retired and deployed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from event_sourcing.catalog import EventTypes
from event_sourcing.events import RecordedEvent

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

__all__ = ["erasure_consequences"]


def _of_type(store: EventStore, event_type: str) -> list[RecordedEvent]:
    return list(store.read_all(event_types=[event_type]))


def erasure_consequences(store: EventStore, erasure: RecordedEvent) -> dict[str, Any]:
    """redactions, flagged_models, retrained_models, retired_models, deployed_models of one
    subject_erased (JSON-ready, each with its event ids)."""
    redactions = [
        {
            "event_id": e.id,
            "position": e.position,
            "redacted_at": e.payload.get("redacted_at") or e.created_at.isoformat(),
            **{key: e.payload[key] for key in (
                "dataset_id", "old_version", "new_version", "subject_column", "rows_removed",
                "rows_out", "deleted_artifacts",
            )},
        }
        for e in _of_type(store, EventTypes.DATASET_REDACTED)
        if e.payload["erasure_event_id"] == erasure.id
    ]
    old = {r["old_version"] for r in redactions} | set(erasure.payload["dataset_versions"])
    new = {r["new_version"] for r in redactions}
    data_of = {
        e.stream_id: e.payload["dataset_version"]
        for e in _of_type(store, EventTypes.TRAINING_STARTED)
    }
    flagged = dict.fromkeys(erasure.payload["model_ids"])
    retrained: list[dict[str, Any]] = []
    for event in _of_type(store, EventTypes.TRAINING_COMPLETED):
        version = data_of.get(event.stream_id)
        if version in old:
            flagged.setdefault(event.payload["model_id"])
        elif version in new:
            retrained.append({
                "model_id": event.payload["model_id"], "model_name": event.payload.get(
                    "model_name"), "training_id": event.stream_id, "dataset_version": version,
                "training_completed_event_id": event.id,
            })
    retrained_ids = {m["model_id"] for m in retrained}
    retired = [
        {
            "model_id": e.payload["model_id"], "event_id": e.id,
            "environment": e.payload["environment"],
            "retired_at": e.payload.get("retired_at") or e.created_at.isoformat(),
            "replaced_by_model_id": e.payload.get("replaced_by_model_id"),
            "reason": e.payload.get("reason"),
        }
        for e in _of_type(store, EventTypes.MODEL_RETIRED) if e.payload["model_id"] in flagged
    ]
    deployed = [
        {
            "model_id": e.payload["model_id"], "event_id": e.id,
            "environment": e.payload["environment"],
            "replaces_model_id": e.payload.get("replaces_model_id"),
            "deployed_at": e.payload.get("deployed_at") or e.created_at.isoformat(),
        }
        for e in _of_type(store, EventTypes.MODEL_DEPLOYED)
        if e.payload["model_id"] in retrained_ids
    ]
    return {
        "redactions": redactions,
        "flagged_models": list(flagged),
        "retrained_models": retrained,
        "retired_models": retired,
        "deployed_models": deployed,
    }
