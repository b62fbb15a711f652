"""The validation asset: schema, missing-value and range checks on each new dataset version.

Appends data_validated per version; failed checks become failing Dagster asset checks.
"""

from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import DataValidated, QualityCheck
from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource
from event_sourcing.training.reproducibility import source_sha256
from pipelines.assets.ingestion import raw_data
from pipelines.dataset import (
    DATASET_ID,
    FEATURE_COLUMNS,
    ID_COLUMN,
    TARGET_COLUMN,
    expected_columns,
    reference_maxima,
)
from pipelines.state import DATASET_STREAM, DATASET_STREAM_TYPE, dataset_history, event_summary

__all__ = ["CHECK_NAMES", "RANGE_FACTOR", "check_table", "validated_data"]

RANGE_FACTOR = 5.0
"""A feature may be at most this many times the largest value in the bundled reference data."""
CHECK_NAMES = ("schema", "no_missing_values", "value_ranges")


def check_table(table: pd.DataFrame) -> list[QualityCheck]:
    """Run the three data checks on a dataset table; each says what failed and where."""
    checks: list[QualityCheck] = []
    expected = expected_columns()
    missing = [c for c in expected if c not in table.columns]
    extra = [c for c in table.columns if c not in expected]
    non_numeric = [
        c for c in expected if c in table.columns and not pd.api.types.is_numeric_dtype(table[c])
    ]
    problems = []
    if missing:
        problems.append(f"missing columns {missing[:5]}")
    if extra:
        problems.append(f"unexpected columns {extra[:5]}")
    if non_numeric:
        problems.append(f"non-numeric columns {non_numeric[:5]}")
    if table.empty:
        problems.append("no rows")
    checks.append(
        QualityCheck(
            name="schema",
            passed=not problems,
            detail="; ".join(problems) or f"{len(expected)} expected numeric columns present",
        )
    )

    present = [c for c in expected if c in table.columns]
    nulls = table[present].isna().sum()
    nulls = nulls[nulls > 0]
    checks.append(
        QualityCheck(
            name="no_missing_values",
            passed=nulls.empty,
            detail=(
                "no missing values"
                if nulls.empty
                else "missing values in " + ", ".join(f"{c} ({n})" for c, n in nulls.items())
            ),
        )
    )

    range_problems = []
    maxima = reference_maxima()
    for column in FEATURE_COLUMNS:
        if column not in table.columns or column in non_numeric:
            continue
        values = table[column].dropna().to_numpy(dtype=float)
        limit = maxima[column] * RANGE_FACTOR
        bad = int(((values < 0) | (values > limit) | ~np.isfinite(values)).sum())
        if bad:
            range_problems.append(f"{column}: {bad} value(s) outside [0, {limit:g}]")
    if TARGET_COLUMN in table.columns and TARGET_COLUMN not in non_numeric:
        labels = table[TARGET_COLUMN].dropna()
        bad_labels = int((~labels.isin([0, 1])).sum())
        if bad_labels:
            range_problems.append(f"{TARGET_COLUMN}: {bad_labels} label(s) not 0 or 1")
    if ID_COLUMN in table.columns:
        duplicated = int(table[ID_COLUMN].duplicated().sum())
        if duplicated:
            range_problems.append(f"{ID_COLUMN}: {duplicated} duplicate id(s)")
    checks.append(
        QualityCheck(
            name="value_ranges",
            passed=not range_problems,
            detail="; ".join(range_problems[:6]) or "all values in range, labels 0/1, ids unique",
        )
    )
    return checks


def validate_pending(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    artifacts: ArtifactStore,
) -> list[es.RecordedEvent]:
    """Validate every dataset version not validated yet; append their data_validated events."""
    store = event_store.store
    history = dataset_history(store)
    pending = history.pending()
    if not pending:
        return []
    new_events = []
    for version in pending:
        if version.ingested.artifact is None:
            checks = [QualityCheck(name="schema", passed=False, detail="no snapshot artifact")]
            rows = version.ingested.rows
        else:
            table = artifacts.get_table(version.ingested.artifact)
            assert isinstance(table, pd.DataFrame)
            checks = check_table(table)
            rows = len(table)
        passed = all(check.passed for check in checks)
        event = DataValidated(
            dataset_id=DATASET_ID,
            dataset_version=version.version,
            passed=passed,
            checks=checks,
            rows=rows,
        )
        new_events.append(
            es.NewEvent(
                event.event_type,
                event.model_dump(mode="json"),
                metadata={"ingested_event_id": version.ingested_event.id},
            )
        )
        if not passed:
            failed = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.passed)
            context.log.warning(
                f"dataset version {version.version[:12]} ({version.ingested.batch_id}) failed "
                f"validation: {failed}"
            )
    # One batch at the version the decision was made on: a concurrent validator loses cleanly.
    return event_store.emit(
        context,
        DATASET_STREAM,
        new_events,
        expected_version=history.stream_version,
        stream_type=DATASET_STREAM_TYPE,
        causation_id=pending[-1].ingested_event.id,
        # One verdict per dataset version per run family, however often the step is retried.
        key="data_validated:" + ",".join(version.version for version in pending),
    )


VALIDATION_CODE_VERSION = source_sha256(check_table) or "unknown"


@dg.asset(
    deps=[raw_data],
    group_name="data",
    code_version=VALIDATION_CODE_VERSION,
    kinds={"pandas"},
    check_specs=[
        dg.AssetCheckSpec("schema", asset="validated_data", description="expected columns"),
        dg.AssetCheckSpec(
            "no_missing_values", asset="validated_data", description="no missing values"
        ),
        dg.AssetCheckSpec(
            "value_ranges",
            asset="validated_data",
            description=f"features in [0, {RANGE_FACTOR:g} x reference max], labels 0/1, "
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
    recorded = validate_pending(context, event_store, artifact_store.store)
    history = dataset_history(event_store.store)
    judged = [v for v in history.versions if v.validated is not None]
    # The checks speak for the versions validated in this run; with none new, for the latest.
    this_run = {e.payload["dataset_version"] for e in recorded}
    subject = [v for v in judged if v.version in this_run] or judged[-1:]
    check_results = []
    for name in CHECK_NAMES:
        failures = []
        details = {}
        for version in subject:
            assert version.validated is not None
            result = next((c for c in version.validated.checks if c.name == name), None)
            details[version.version[:12]] = result.detail if result else "not run"
            if result is None or not result.passed:
                failures.append(
                    f"{version.ingested.batch_id} (version {version.version[:12]}): "
                    f"{result.detail if result else 'check not run'}"
                )
        check_results.append(
            dg.AssetCheckResult(
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
        )
    latest_passed = history.latest_passed()
    metadata: dict[str, Any] = {
        "validated_versions": dg.MetadataValue.json(
            [
                {
                    "dataset_version": e.payload["dataset_version"],
                    "passed": e.payload["passed"],
                    "rows": e.payload["rows"],
                    "failed_checks": [c["name"] for c in e.payload["checks"] if not c["passed"]],
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
            {
                "dataset_version": latest_passed.version,
                "rows": dg.MetadataValue.int(latest_passed.ingested.rows),
                "event_id": latest_passed.validated_event.id,
                "event_position": dg.MetadataValue.int(latest_passed.validated_event.position),
            }
        )
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=check_results,
        data_version=dg.DataVersion(latest_passed.version) if latest_passed else None,
    )
