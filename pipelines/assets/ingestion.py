"""The ingestion asset: new batch files in the landing folder become dataset versions.

Each new file (by sha256) appends data_ingested (and data_preprocessed: parent + batch).

A dataset version is the newest version not known to be bad plus the new batch's rows: the
training data grows batch by batch, and a batch that fails validation does not poison later
ones. The version is the sha256 of the snapshot's canonical bytes, so the event, the artifact
and Dagster's data version are one hash.
"""

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore, sha256_hex
from event_sourcing.catalog import DataIngested, DataPreprocessed, EventTypes
from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource, LandingFolderResource
from event_sourcing.training.reproducibility import source_sha256
from pipelines.dataset import DATASET_ID, read_batch
from pipelines.state import (
    DATASET_STREAM,
    DATASET_STREAM_TYPE,
    DatasetHistory,
    dataset_history,
    event_summary,
)

__all__ = ["ingest_batches", "raw_data"]

# Fixed namespace: the data_ingested of a given file content always gets the same event id, so
# two runs racing to ingest one file write it once (the loser's retry sees it recorded).
_INGEST_NAMESPACE = uuid.UUID("0b7f6c4e-3f0d-4d55-9a1e-6d6c6576656e")
_ATTEMPTS = 3


def _combine(parent: pd.DataFrame | None, batch: pd.DataFrame) -> pd.DataFrame:
    if parent is None:
        return batch.reset_index(drop=True)
    return pd.concat([parent, batch], ignore_index=True)


EmitFn = Callable[[list[es.NewEvent], int], list[es.RecordedEvent]]
"""Appends prepared events to the dataset stream at an expected stream version."""


def ingest_batches(
    store: es.EventStore,
    artifacts: ArtifactStore,
    files: list[Path],
    emit: EmitFn,
) -> tuple[list[es.RecordedEvent], list[str], DatasetHistory]:
    """Record each file not ingested yet as a new dataset version; return (events, skipped,
    history).

    Per file: data_ingested, plus data_preprocessed (parent version + batch -> new version)
    when the version builds on an earlier one.

    Files already ingested (same sha256) are skipped: ingestion is idempotent per content.
    All new versions of one call are appended in one batch, at the stream version the
    decision was based on; if another run got there first, the stream is folded again.
    """
    for attempt in range(_ATTEMPTS):
        history = dataset_history(store)
        seen = history.ingested_hashes()
        parent = history.ingestion_parent()
        parent_version = parent.version if parent is not None else None
        parent_table: pd.DataFrame | None = None
        if parent is not None and parent.ingested.artifact is not None:
            loaded = artifacts.get_table(parent.ingested.artifact)
            assert isinstance(loaded, pd.DataFrame)
            parent_table = loaded
        pending: list[es.NewEvent] = []
        skipped: list[str] = []
        for path in files:
            raw = path.read_bytes()
            content_sha = sha256_hex(raw)
            if content_sha in seen:
                skipped.append(path.name)
                continue
            seen.add(content_sha)
            batch = read_batch(path)
            table = _combine(parent_table, batch)
            ref = artifacts.put_table(table)
            event = DataIngested(
                dataset_id=DATASET_ID,
                dataset_version=ref.sha256,
                source_uri=path.absolute().as_uri(),
                rows=len(table),
                columns=[str(c) for c in table.columns],
                content_sha256=content_sha,
                artifact=ref,
                batch_id=path.name,
                ingested_at=store.clock(),
            )
            pending.append(
                es.NewEvent(
                    event.event_type,
                    event.model_dump(mode="json"),
                    id=str(uuid.uuid5(_INGEST_NAMESPACE, f"{DATASET_ID}/{content_sha}")),
                    metadata={
                        "batch_file": path.name,
                        "batch_rows": len(batch),
                        "parent_dataset_version": parent_version,
                    },
                )
            )
            if parent_version is not None:
                # The new version is the parent plus this batch: say so, so lineage walks
                # from the newest version back through every batch it contains.
                appended = DataPreprocessed(
                    dataset_id=DATASET_ID,
                    input_version=parent_version,
                    output_version=ref.sha256,
                    steps=[f"append {path.name} (sha256 {content_sha[:12]})"],
                    rows_in=len(table) - len(batch),
                    rows_out=len(table),
                    artifact=ref,
                )
                pending.append(
                    es.NewEvent(
                        appended.event_type,
                        appended.model_dump(mode="json"),
                        id=str(uuid.uuid5(_INGEST_NAMESPACE, f"{DATASET_ID}/{content_sha}/append")),
                    )
                )
            # Later files of this call build on the version just made.
            parent_table, parent_version = table, ref.sha256
        if not pending:
            return [], skipped, history
        try:
            recorded = emit(pending, history.stream_version)
        except es.ConcurrencyError:
            if attempt == _ATTEMPTS - 1:
                raise
            continue  # another run ingested meanwhile: fold the stream again and rebuild
        return recorded, skipped, dataset_history(store)
    raise AssertionError("unreachable")


INGESTION_CODE_VERSION = source_sha256(ingest_batches) or "unknown"


@dg.asset(
    group_name="data",
    code_version=INGESTION_CODE_VERSION,
    kinds={"pandas", "csv"},
    description="New batch CSVs from the landing folder, ingested as dataset versions "
    "(one data_ingested each; the snapshot is an artifact, its sha256 the version).",
)
def raw_data(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
    landing: LandingFolderResource,
) -> dg.MaterializeResult:
    store = event_store.store
    files = landing.batch_files()

    def emit(events: list[es.NewEvent], expected_version: int) -> list[es.RecordedEvent]:
        return event_store.emit(
            context,
            DATASET_STREAM,
            events,
            expected_version=expected_version,
            stream_type=DATASET_STREAM_TYPE,
        )

    recorded, skipped, history = ingest_batches(store, artifact_store.store, files, emit)
    latest = history.versions[-1] if history.versions else None
    ingested = [e for e in recorded if e.event_type == EventTypes.DATA_INGESTED]
    for event in ingested:
        context.log.info(
            f"ingested {event.payload['batch_id']}: dataset version "
            f"{event.payload['dataset_version'][:12]} ({event.payload['rows']} rows)"
        )
    metadata: dict[str, Any] = {
        "landing_folder": dg.MetadataValue.path(str(landing.folder())),
        "new_batches": [e.payload["batch_id"] for e in ingested],
        "skipped_batches (already ingested)": skipped,
        "events": dg.MetadataValue.json(event_summary(recorded)),
        "dataset_versions": len(history.versions),
    }
    if latest is not None:
        metadata.update(
            {
                "dataset_version": latest.version,
                "rows": dg.MetadataValue.int(latest.ingested.rows),
                "columns": dg.MetadataValue.int(len(latest.ingested.columns)),
                "source_uri": dg.MetadataValue.url(latest.ingested.source_uri),
                "content_sha256": latest.ingested.content_sha256,
                "event_id": latest.ingested_event.id,
                "event_position": dg.MetadataValue.int(latest.ingested_event.position),
            }
        )
    return dg.MaterializeResult(
        metadata=metadata,
        data_version=dg.DataVersion(latest.version) if latest is not None else None,
    )
