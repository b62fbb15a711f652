"""A dataset's history as services: ingesting landed batches as dataset versions, and the
data checks that validate a version. No dagster.

A dataset version is the newest version not known to be bad plus the new batch's rows: the
training data grows batch by batch, and a batch that fails validation does not poison later
ones. The version is the sha256 of the snapshot's canonical bytes.
"""

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore, sha256_hex
from event_sourcing.catalog import DataIngested, DataPreprocessed, DataValidated, QualityCheck
from event_sourcing.ml.history import DatasetHistory, DatasetVersion, dataset_history
from event_sourcing.ml.spec import TabularDataset
from event_sourcing.privacy.impact import record_dataset_subjects, subjects_stream

__all__ = [
    "CHECK_NAMES",
    "RANGE_FACTOR",
    "EmitFn",
    "check_table",
    "ingest_batches",
    "validation_verdict",
]

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
    dataset: TabularDataset,
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
        history = dataset_history(store, dataset.stream)
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
            batch = pd.read_csv(path)
            key = f"{dataset.dataset_id}/{content_sha}"
            table = _combine(parent_table, batch)
            ref = artifacts.put_table(table)
            _record_subjects(store, dataset, ref.sha256, table)
            event = DataIngested(
                dataset_id=dataset.dataset_id,
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
                    id=str(uuid.uuid5(_INGEST_NAMESPACE, key)),
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
                    dataset_id=dataset.dataset_id,
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
                        id=str(uuid.uuid5(_INGEST_NAMESPACE, f"{key}/append")),
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
        return recorded, skipped, dataset_history(store, dataset.stream)
    raise AssertionError("unreachable")


def _record_subjects(
    store: es.EventStore, dataset: TabularDataset, version: str, table: pd.DataFrame
) -> None:
    """Record the version's subjects (before its data_ingested: a version is never ingested
    without them; a version recorded but never ingested is harmless)."""
    column = dataset.subject_column
    if column is None or column not in table.columns:
        return
    if not store.stream_version(subjects_stream(version)):
        record_dataset_subjects(
            store, dataset.dataset_id, version, table[column], subject_column=column
        )


RANGE_FACTOR = 5.0
"""A feature may be at most this many times the largest value in the bundled reference data."""
CHECK_NAMES = ("schema", "no_missing_values", "value_ranges")


def check_table(table: pd.DataFrame, dataset: TabularDataset) -> list[QualityCheck]:
    """Run the three data checks on a dataset table; each says what failed and where."""
    checks: list[QualityCheck] = []
    expected = dataset.expected_columns()
    missing = [c for c in expected if c not in table.columns]
    extra = [c for c in table.columns if c not in expected]
    non_numeric = [
        c for c in expected if c in table.columns and c != dataset.subject_column
        and not pd.api.types.is_numeric_dtype(table[c])
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
    maxima = dataset.reference_maxima()
    for column in dataset.feature_columns:
        if column not in table.columns or column in non_numeric or column not in maxima:
            continue
        values = table[column].dropna().to_numpy(dtype=float)
        limit = maxima[column] * RANGE_FACTOR
        bad = int(((values < 0) | (values > limit) | ~np.isfinite(values)).sum())
        if bad:
            range_problems.append(f"{column}: {bad} value(s) outside [0, {limit:g}]")
    if dataset.target_column in table.columns and dataset.target_column not in non_numeric:
        labels = table[dataset.target_column].dropna()
        bad_labels = int((~labels.isin(list(dataset.labels))).sum())
        if bad_labels:
            allowed = "/".join(str(label) for label in dataset.labels)
            range_problems.append(
                f"{dataset.target_column}: {bad_labels} label(s) not {allowed}"
            )
    if dataset.id_column in table.columns:
        duplicated = int(table[dataset.id_column].duplicated().sum())
        if duplicated:
            range_problems.append(f"{dataset.id_column}: {duplicated} duplicate id(s)")
    checks.append(
        QualityCheck(
            name="value_ranges",
            passed=not range_problems,
            detail="; ".join(range_problems[:6]) or "all values in range, labels known, ids unique",
        )
    )
    return checks



def validation_verdict(
    artifacts: ArtifactStore, dataset: TabularDataset, version: DatasetVersion
) -> DataValidated:
    """The data_validated of one dataset version: every check run on its snapshot."""
    if version.ingested.artifact is None:
        checks = [QualityCheck(name="schema", passed=False, detail="no snapshot artifact")]
        rows = version.ingested.rows
    else:
        table = artifacts.get_table(version.ingested.artifact)
        assert isinstance(table, pd.DataFrame)
        checks = check_table(table, dataset)
        rows = len(table)
    return DataValidated(
        dataset_id=dataset.dataset_id,
        dataset_version=version.version,
        passed=all(check.passed for check in checks),
        checks=checks,
        rows=rows,
    )
