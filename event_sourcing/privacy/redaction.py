"""Carrying an erasure into the artifact store: dataset snapshots without the subject's rows.

A `subject_erased` names the dataset versions recorded (`dataset_subjects_recorded`) as
holding the subject's rows. `redact_erased` gives each such version a redacted version (the
rows whose subject column hashes, under the store's keyed hash, to the erased subject
removed), records `dataset_redacted` (old -> new) on the dataset's stream, and deletes the
old snapshot and the artifacts computed from it (feature tables, evaluation sets).

Which versions: those the erasure names, and every version derived from one of them (a
later batch appended to it, another erasure's redaction of it) that still holds the
subject's rows. A version built on one that no longer holds them is a new generation
(the same subject's new data after the erasure): kept, and forgettable by another forget.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from event_sourcing.artifacts import ArtifactNotFoundError, ArtifactStore
from event_sourcing.catalog import DatasetRedacted, EventTypes
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.privacy.impact import record_dataset_subjects, subjects_stream

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

__all__ = [
    "DATASET_STREAM_TYPE",
    "Redaction",
    "dataset_stream",
    "erased_versions",
    "redact_erased",
    "redaction_of",
]

DATASET_STREAM_TYPE = "dataset"
# Fixed namespace: one dataset_redacted per (erasure, old version), however often it runs.
_NAMESPACE = uuid.UUID("5c0f3f8e-6a43-4c36-9d4f-726564616374")


def dataset_stream(dataset_id: str) -> str:
    """The stream of a dataset's versions (data_ingested, data_validated, dataset_redacted)."""
    return f"dataset:{dataset_id}"


@dataclass
class Redaction:
    """What `redact_erased` did: the dataset_redacted events it recorded, the bytes it
    deleted, and the versions it could not redact (and why)."""

    events: list[RecordedEvent] = field(default_factory=list)
    deleted_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    """Versions whose rows cannot be found: the erasure is not carried out there."""
    missing: list[str] = field(default_factory=list)
    """Versions whose snapshot is not in the artifact store: nothing to delete there."""


def _payloads(store: EventStore, event_type: str) -> list[RecordedEvent]:
    return list(store.read_all(event_types=[event_type]))


def redaction_of(store: EventStore, dataset_version: str) -> RecordedEvent | None:
    """The dataset_redacted that removed `dataset_version`'s bytes, or None."""
    return next(
        (e for e in _payloads(store, EventTypes.DATASET_REDACTED)
         if e.payload["old_version"] == dataset_version),
        None,
    )


def erased_versions(store: EventStore) -> dict[str, str]:
    """Dataset version -> the subject_erased event id that made it hold erased data (the
    versions erasures named, and those their redactions removed)."""
    found: dict[str, str] = {}
    for event in _payloads(store, EventTypes.SUBJECT_ERASED):
        for version in event.payload.get("dataset_versions") or []:
            found.setdefault(version, event.id)
    for event in _payloads(store, EventTypes.DATASET_REDACTED):
        found.setdefault(event.payload["old_version"], event.payload["erasure_event_id"])
    return found


def redact_erased(
    store: EventStore, artifacts: ArtifactStore, *, dataset_id: str | None = None
) -> Redaction:
    """Carry out every erasure on the dataset versions holding the subject's rows (only
    `dataset_id`'s, if given). Idempotent. A crash between a dataset_redacted and its deletes
    leaves bytes behind: `mlevents artifacts gc` deletes them (event_sourcing.artifact_gc)."""
    outcome = Redaction()
    recorded: dict[str, dict[str, Any]] = {}  # version -> its dataset_subjects_recorded
    for event in _payloads(store, EventTypes.DATASET_SUBJECTS_RECORDED):
        recorded[event.payload["dataset_version"]] = event.payload
    edges: dict[str, set[str]] = {}  # version -> versions made from it
    for event in _payloads(store, EventTypes.DATA_PREPROCESSED):
        edges.setdefault(event.payload["input_version"], set()).add(
            event.payload["output_version"]
        )
    redactions = _payloads(store, EventTypes.DATASET_REDACTED)
    gone = {e.payload["old_version"] for e in redactions}
    for redaction in redactions:
        edges.setdefault(redaction.payload["old_version"], set()).add(
            redaction.payload["new_version"]
        )
    for erasure in _payloads(store, EventTypes.SUBJECT_ERASED):
        subject_hash = erasure.payload["subject_hash"]
        for version in _affected(erasure.payload["dataset_versions"], edges, recorded,
                                 subject_hash):
            subjects = recorded[version]
            if version in gone or (dataset_id and subjects["dataset_id"] != dataset_id):
                continue
            done = _redact(store, artifacts, erasure, subjects, recorded, outcome)
            if done is not None:
                gone.add(version)
                edges.setdefault(version, set()).add(done.payload["new_version"])
    return outcome


def _affected(
    named: list[str], edges: dict[str, set[str]], recorded: dict[str, dict[str, Any]],
    subject_hash: str,
) -> list[str]:
    """The named versions and those derived from them, walking only through versions that
    hold the subject's rows."""
    found: dict[str, None] = {}
    todo = list(named)
    while todo:
        version = todo.pop(0)
        if version in found or subject_hash not in (recorded.get(version) or {}).get(
            "subject_hashes", ()
        ):
            continue
        found[version] = None
        todo += sorted(edges.get(version, ()))
    return list(found)


def _redact(
    store: EventStore,
    artifacts: ArtifactStore,
    erasure: RecordedEvent,
    subjects: dict[str, Any],
    recorded: dict[str, dict[str, Any]],
    outcome: Redaction,
) -> RecordedEvent | None:
    version, dataset = subjects["dataset_version"], subjects["dataset_id"]
    column = subjects.get("subject_column")
    if not column:
        outcome.problems.append(
            f"dataset {dataset!r} version {version[:12]}: no subject column was recorded "
            "(record_dataset_subjects(..., subject_column=...)), so its rows cannot be found"
        )
        return None
    try:
        table = artifacts.get_table(version)
    except ArtifactNotFoundError:
        outcome.missing.append(
            f"dataset {dataset!r} version {version[:12]}: the snapshot is not in the artifact "
            f"store at {artifacts.root}; nothing to redact there"
        )
        return None
    if not isinstance(table, pd.DataFrame) or column not in table.columns:
        outcome.problems.append(
            f"dataset {dataset!r} version {version[:12]}: the snapshot has no column {column!r}"
        )
        return None
    keys = store.privacy.keys
    subject_hash = erasure.payload["subject_hash"]
    theirs = table[column].map(lambda value: keys.subject_hash(str(value)) == subject_hash)
    if not theirs.any():
        outcome.problems.append(
            f"dataset {dataset!r} version {version[:12]}: no value of column {column!r} is "
            "the erased subject's (record and forget the id as the same text)"
        )
        return None
    kept = table.loc[~theirs].reset_index(drop=True)
    ref = artifacts.put_table(kept)
    if ref.sha256 not in recorded:  # the other subjects: later erasures redact it too
        recorded[ref.sha256] = (
            store.read_stream(subjects_stream(ref.sha256))
            or [record_dataset_subjects(store, dataset, ref.sha256, kept[column],
                                        subject_column=column)]
        )[-1].payload
    derived = [d for d in _derived_artifacts(store, version) if d != ref.sha256]
    redacted = DatasetRedacted(
        dataset_id=dataset,
        old_version=version,
        new_version=ref.sha256,
        artifact=ref,
        erasure_event_id=erasure.id,
        subject_column=column,
        rows_removed=int(theirs.sum()),
        rows_out=len(kept),
        deleted_artifacts=[version, *derived],
        redacted_at=store.clock(),
    )
    [event] = store.append(
        dataset_stream(dataset),
        [NewEvent(redacted.event_type, redacted.model_dump(mode="json"),
                  id=str(uuid.uuid5(_NAMESPACE, f"{erasure.id}/{version}")))],
        stream_type=DATASET_STREAM_TYPE,
        causation_id=erasure.id,
        on_duplicate="return_existing",
    )
    for digest in event.payload["deleted_artifacts"]:
        outcome.deleted_bytes += artifacts.delete(digest)
    outcome.events.append(event)
    return event


def _derived_artifacts(store: EventStore, version: str) -> list[str]:
    """Artifacts computed from a dataset version's rows: its feature tables, and the
    evaluation sets of the training runs on it."""
    found: dict[str, None] = {}
    for event in _payloads(store, EventTypes.FEATURE_COMPUTED):
        if event.payload["dataset_version"] == version and event.payload.get("artifact"):
            found[event.payload["artifact"]["sha256"]] = None
    trainings = {
        e.stream_id for e in _payloads(store, EventTypes.TRAINING_STARTED)
        if e.payload["dataset_version"] == version
    }
    for event in _payloads(store, EventTypes.TRAINING_COMPLETED):
        if event.stream_id in trainings and event.payload.get("eval_set"):
            found[event.payload["eval_set"]["sha256"]] = None
    return list(found)
