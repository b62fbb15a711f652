"""Which dataset versions hold a subject's rows (keyed hashes), and what depends on them:
feature versions, training runs, models, deployments, and the subject's own predictions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from event_sourcing.catalog.ml_events import DatasetSubjectsRecorded, EventTypes
from event_sourcing.errors import EventValidationError
from event_sourcing.events import RecordedEvent
from event_sourcing.privacy.keys import TABLE, check_subject_id

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

_INFERENCE_TYPES = (
    EventTypes.INFERENCE_REQUESTED, EventTypes.INFERENCE_COMPLETED, EventTypes.INFERENCE_FEEDBACK
)


def subjects_stream(dataset_version: str) -> str:
    return f"dataset-subjects-{dataset_version[:32]}"


def record_dataset_subjects(
    store: EventStore,
    dataset_id: str,
    dataset_version: str,
    subject_ids: Iterable[Any],
    *,
    subject_column: str | None = None,
) -> RecordedEvent:
    """Record which subjects have rows in a dataset version (e.g. its customer id column),
    as keyed hashes of `str(value)`; call it when the version is ingested.

    `subject_column` (default: the name of `subject_ids` when it is a pandas Series) is the
    snapshot's column the ids come from: redaction finds a forgotten subject's rows there.
    """
    if isinstance(subject_ids, str):
        raise EventValidationError("subject_ids must be a collection of ids, not one string")
    if subject_column is None and isinstance(getattr(subject_ids, "name", None), str):
        subject_column = subject_ids.name  # type: ignore[attr-defined]
    keys = store.privacy.keys
    hashes = sorted({keys.subject_hash(str(subject)) for subject in subject_ids})
    [event] = store.append(
        subjects_stream(dataset_version),
        [DatasetSubjectsRecorded(
            dataset_id=dataset_id, dataset_version=dataset_version, subject_hashes=hashes,
            subject_column=subject_column,
        )],
        stream_type="dataset_subjects",
    )
    return event


def datasets_of(store: EventStore, subject_hash: str) -> dict[str, str]:
    """Dataset versions recorded as holding rows of the subject, in log order: version ->
    dataset id."""
    found: dict[str, str] = {}
    for event in store.read_all(event_types=[EventTypes.DATASET_SUBJECTS_RECORDED]):
        if subject_hash in event.payload["subject_hashes"]:
            found[event.payload["dataset_version"]] = event.payload["dataset_id"]
    return found


def downstream(store: EventStore, dataset_versions: list[str]) -> dict[str, list[str]]:
    """Node ids by kind (feature_version, training_run, model, deployment) downstream of the
    dataset versions, from the provenance index."""
    from event_sourcing.provenance.lineage import ProvenanceError, impact

    kinds: dict[str, dict[str, None]] = {
        kind: {} for kind in ("feature_version", "training_run", "model", "deployment")
    }
    for version in dataset_versions:
        try:
            graph = impact(store, version)
        except ProvenanceError:  # recorded subjects, but nothing built on it yet
            continue
        for node in graph.nodes.values():
            if node.kind in kinds:
                kinds[node.kind][node.id.partition(":")[2]] = None
    return {kind: list(ids) for kind, ids in kinds.items()}


def subject_impact(store: EventStore, subject_id: str) -> dict[str, Any]:
    """What involves a subject: the dataset versions holding their rows, the feature
    versions, training runs, models and deployments built on those, and their own
    prediction events (readable now, or erased)."""
    from event_sourcing.privacy.forget import erasure_report, sealed_events

    keys = store.privacy.keys
    if not keys.holds_any():
        check_subject_id(subject_id)
        return {"subject_hash": None, "dataset_versions": [], "predictions": [],
                **downstream(store, [])}
    subject_hash = keys.subject_hash(subject_id)
    versions = list(datasets_of(store, subject_hash))
    live = [row[0] for row in store.recorder.query(
        f"SELECT key_id FROM {TABLE} WHERE subject_hash = ?", [subject_hash]
    )]
    predictions = {
        event_id: None for event_id, event_type in sealed_events(store, live)
        if event_type in _INFERENCE_TYPES
    }
    for erasure in erasure_report(store, subject_id)["erasures"]:
        predictions.update(dict.fromkeys(erasure["affected_events"]))
    kept = {e.id for e in _events(store, list(predictions)) if e.event_type in _INFERENCE_TYPES}
    return {
        "subject_hash": subject_hash,
        "dataset_versions": versions,
        **downstream(store, versions),
        "predictions": [event_id for event_id in predictions if event_id in kept],
    }


def _events(store: EventStore, ids: list[str]) -> list[RecordedEvent]:
    return [event for event_id in ids if (event := store.get_event(event_id)) is not None]
