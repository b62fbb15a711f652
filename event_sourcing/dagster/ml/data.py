"""A model's data assets: landed batches ingested as dataset versions, then validated.

The decisions live in `event_sourcing.ml.data`; each asset records them and reports.
"""

from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.catalog import EventTypes
from event_sourcing.dagster.artifact_store import ArtifactStoreResource
from event_sourcing.dagster.event_store import EventStoreResource
from event_sourcing.dagster.landing import LandingFolderResource
from event_sourcing.dagster.ml.names import Names
from event_sourcing.ml.data import CHECK_NAMES, RANGE_FACTOR, ingest_batches, validation_verdict
from event_sourcing.ml.history import (
    DATASET_STREAM_TYPE,
    DatasetHistory,
    dataset_history,
    event_summary,
)
from event_sourcing.privacy.redaction import redact_erased
from event_sourcing.training.reproducibility import source_sha256

__all__ = ["data_assets"]


def data_assets(
    names: Names,
) -> tuple[dg.AssetsDefinition, dg.AssetsDefinition, dg.AssetsDefinition]:
    """(raw_data, redacted_data, validated_data) of one model's dataset."""
    dataset = names.spec.dataset

    @dg.asset(
        key=names.key("raw_data"),
        group_name=names.group("data"),
        code_version=source_sha256(ingest_batches) or "unknown",
        kinds={"pandas", "csv"},
        description=f"New {dataset.dataset_id} batch CSVs from the landing folder, ingested as "
        "dataset versions (one data_ingested each; the snapshot is an artifact, its sha256 "
        "the version).",
    )
    def raw_data(
        context: dg.AssetExecutionContext,
        event_store: EventStoreResource,
        artifact_store: ArtifactStoreResource,
        landing: LandingFolderResource,
    ) -> dg.MaterializeResult:
        files = landing.batch_files(names.landing_subfolder)

        def emit(events: list[es.NewEvent], expected_version: int) -> list[es.RecordedEvent]:
            return event_store.emit(
                context, dataset.stream, events,
                expected_version=expected_version, stream_type=DATASET_STREAM_TYPE,
            )

        recorded, skipped, history = ingest_batches(
            event_store.store, artifact_store.store, dataset, files, emit
        )
        ingested = [e for e in recorded if e.event_type == EventTypes.DATA_INGESTED]
        for event in ingested:
            context.log.info(
                f"ingested {event.payload['batch_id']}: dataset version "
                f"{event.payload['dataset_version'][:12]} ({event.payload['rows']} rows)"
            )
        metadata: dict[str, Any] = {
            "landing_folder": dg.MetadataValue.path(str(landing.folder(names.landing_subfolder))),
            "new_batches": [e.payload["batch_id"] for e in ingested],
            "skipped_batches (already ingested)": skipped,
            "events": dg.MetadataValue.json(event_summary(recorded)),
            "dataset_versions": len(history.versions),
        }
        latest = history.versions[-1] if history.versions else None
        if latest is not None:
            metadata.update(
                dataset_version=latest.version,
                rows=dg.MetadataValue.int(latest.ingested.rows),
                columns=dg.MetadataValue.int(len(latest.ingested.columns)),
                source_uri=dg.MetadataValue.url(latest.ingested.source_uri),
                content_sha256=latest.ingested.content_sha256,
                event_id=latest.ingested_event.id,
                event_position=dg.MetadataValue.int(latest.ingested_event.position),
            )
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=dg.DataVersion(latest.version) if latest is not None else None,
        )

    redacted_data = _redacted_data_asset(names, raw_data)
    validated_key = names.key("validated_data")

    @dg.asset(
        key=validated_key,
        deps=[raw_data, redacted_data],
        group_name=names.group("data"),
        code_version=source_sha256(validation_verdict) or "unknown",
        kinds={"pandas"},
        check_specs=[
            dg.AssetCheckSpec("schema", asset=validated_key, description="expected columns"),
            dg.AssetCheckSpec(
                "no_missing_values", asset=validated_key, description="no missing values"
            ),
            dg.AssetCheckSpec(
                "value_ranges",
                asset=validated_key,
                description=f"features in [0, {RANGE_FACTOR:g} x reference max], known labels, "
                "unique ids",
            ),
        ],
        description="Each new dataset version checked (schema, missing values, ranges); the "
        "data version is the newest version that passed.",
    )
    def validated_data(
        context: dg.AssetExecutionContext,
        event_store: EventStoreResource,
        artifact_store: ArtifactStoreResource,
    ) -> dg.MaterializeResult:
        store = event_store.store
        before = dataset_history(store, dataset.stream)
        recorded = _record_verdicts(context, event_store, artifact_store, names, before)
        history = dataset_history(store, dataset.stream)
        judged = [v for v in history.versions if v.validated is not None]
        # The checks speak for the versions validated in this run; with none new, the latest.
        this_run = {e.payload["dataset_version"] for e in recorded}
        subject = [v for v in judged if v.version in this_run] or judged[-1:]
        latest_passed = history.latest_passed()
        metadata: dict[str, Any] = {
            "validated_versions": dg.MetadataValue.json(
                [
                    {
                        "dataset_version": e.payload["dataset_version"],
                        "passed": e.payload["passed"],
                        "rows": e.payload["rows"],
                        "failed_checks": [
                            c["name"] for c in e.payload["checks"] if not c["passed"]
                        ],
                    }
                    for e in recorded
                ]
            ),
            "events": dg.MetadataValue.json(event_summary(recorded)),
            "failed_versions": sum(1 for v in judged if v.status == "failed"),
        }
        if latest_passed is not None:
            assert latest_passed.validated_event is not None
            metadata.update(
                dataset_version=latest_passed.version,
                rows=dg.MetadataValue.int(latest_passed.ingested.rows),
                event_id=latest_passed.validated_event.id,
                event_position=dg.MetadataValue.int(latest_passed.validated_event.position),
            )
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[_check_result(name, subject) for name in CHECK_NAMES],
            data_version=dg.DataVersion(latest_passed.version) if latest_passed else None,
        )

    return raw_data, redacted_data, validated_data


def _redacted_data_asset(names: Names, raw_data: dg.AssetsDefinition) -> dg.AssetsDefinition:
    dataset = names.spec.dataset

    @dg.asset(
        key=names.key("redacted_data"),
        deps=[raw_data],
        group_name=names.group("data"),
        code_version=source_sha256(redact_erased) or "unknown",
        kinds={"pandas"},
        description=f"Erasures carried into the {dataset.dataset_id} snapshots: each version "
        "holding a forgotten subject's rows gets a redacted version (dataset_redacted), and "
        "its bytes, feature tables and evaluation sets are deleted.",
    )
    def redacted_data(
        context: dg.AssetExecutionContext,
        event_store: EventStoreResource,
        artifact_store: ArtifactStoreResource,
    ) -> dg.MaterializeResult:
        outcome = redact_erased(
            event_store.store, artifact_store.store, dataset_id=dataset.dataset_id
        )
        for event in outcome.events:
            payload = event.payload
            context.log.info(
                f"redacted dataset version {payload['old_version'][:12]} -> "
                f"{payload['new_version'][:12]} ({payload['rows_removed']} row(s) removed, "
                f"erasure {payload['erasure_event_id']})"
            )
        for note in outcome.missing:
            context.log.warning(note)
        if outcome.problems:
            raise dg.Failure(
                "some erasures cannot be carried out: " + "; ".join(outcome.problems)
            )
        history = dataset_history(event_store.store, dataset.stream)
        last = max((e.position for e in history.redacted.values()), default=0)
        return dg.MaterializeResult(
            metadata={
                "redactions": dg.MetadataValue.json([
                    {key: e.payload[key] for key in (
                        "old_version", "new_version", "rows_removed", "erasure_event_id"
                    )} | {"event_id": e.id}
                    for e in outcome.events
                ]),
                "deleted_bytes": dg.MetadataValue.int(outcome.deleted_bytes),
                "missing_snapshots": outcome.missing,
                "redacted_versions": dg.MetadataValue.int(len(history.redacted)),
            },
            data_version=dg.DataVersion(str(last)),
        )

    return redacted_data


def _record_verdicts(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
    names: Names,
    history: DatasetHistory,
) -> list[es.RecordedEvent]:
    """One data_validated per pending dataset version, in one keyed batch."""
    pending = history.pending()
    if not pending:
        return []
    dataset = names.spec.dataset
    events = []
    for version in pending:
        verdict = validation_verdict(artifact_store.store, dataset, version)
        redacted = {"redacted_from": version.redacted_from} if version.redacted_from else {}
        events.append(
            es.NewEvent(
                verdict.event_type,
                verdict.model_dump(mode="json"),
                metadata={"ingested_event_id": version.ingested_event.id, **redacted},
            )
        )
        if not verdict.passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in verdict.checks if not c.passed)
            context.log.warning(
                f"dataset version {version.version[:12]} ({version.ingested.batch_id}) failed "
                f"validation: {failed}"
            )
    # One batch at the version the decision was made on: a concurrent validator loses cleanly.
    return event_store.emit(
        context,
        dataset.stream,
        events,
        expected_version=history.stream_version,
        stream_type=DATASET_STREAM_TYPE,
        causation_id=pending[-1].ingested_event.id,
        # One verdict per dataset version per run family, however often the step is retried.
        key="data_validated:" + ",".join(version.version for version in pending),
    )


def _check_result(name: str, subject: list[Any]) -> dg.AssetCheckResult:
    failures = []
    details = {}
    for version in subject:
        result = next((c for c in version.validated.checks if c.name == name), None)
        details[version.version[:12]] = result.detail if result else "not run"
        if result is None or not result.passed:
            failures.append(
                f"{version.ingested.batch_id} (version {version.version[:12]}): "
                f"{result.detail if result else 'check not run'}"
            )
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failures and bool(subject),
        description=(
            "; ".join(failures)
            if subject
            else "no dataset version ingested yet: drop batch CSVs in the landing folder"
        )
        or None,
        metadata={"versions": dg.MetadataValue.json(details)},
    )
