"""The features asset: a scikit-learn feature pipeline applied to the newest validated dataset.

Appends feature_computed and feature_versioned; feature version = sha256(feature code + data).
"""

import hashlib

import dagster as dg
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import FunctionTransformer

import event_sourcing as es
from event_sourcing.artifacts import ArtifactStore
from event_sourcing.catalog import FeatureComputed, FeatureVersioned
from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource
from event_sourcing.training.reproducibility import source_sha256
from pipelines.assets.validation import validated_data
from pipelines.dataset import FEATURE_COLUMNS, ID_COLUMN, TARGET_COLUMN
from pipelines.state import (
    FEATURE_SET,
    FEATURE_STREAM,
    FEATURE_STREAM_TYPE,
    dataset_history,
    event_summary,
)

__all__ = [
    "FEATURE_CODE_SHA256",
    "build_feature_pipeline",
    "compute_features",
    "feature_version_of",
    "features",
]


def build_feature_pipeline() -> ColumnTransformer:
    """The feature code: log-scale the size measurements, keep the shape measurements.

    Stateless and built from scikit-learn and NumPy parts only, so a model that embeds it
    unpickles anywhere those libraries are installed.
    """
    size = [c for c in FEATURE_COLUMNS if any(k in c for k in ("radius", "perimeter", "area"))]
    shape = [c for c in FEATURE_COLUMNS if c not in size]
    return ColumnTransformer(
        [
            ("log", FunctionTransformer(np.log1p, feature_names_out="one-to-one"), size),
            ("raw", "passthrough", shape),
        ]
    ).set_output(transform="pandas")


FEATURE_CODE_SHA256 = source_sha256(build_feature_pipeline) or hashlib.sha256(b"?").hexdigest()
"""sha256 of the feature code's source: half of every feature version."""


def feature_version_of(dataset_version: str, code_sha256: str = FEATURE_CODE_SHA256) -> str:
    """The feature version: sha256 over the feature code hash and the input dataset version."""
    return hashlib.sha256(f"{code_sha256}:{dataset_version}".encode()).hexdigest()


def compute_features(dataset: pd.DataFrame) -> pd.DataFrame:
    """The feature table of a dataset: sample id, computed features, target."""
    transformed = build_feature_pipeline().fit_transform(dataset[list(FEATURE_COLUMNS)])
    assert isinstance(transformed, pd.DataFrame)
    table = transformed.reset_index(drop=True)
    table.insert(0, ID_COLUMN, dataset[ID_COLUMN].to_numpy())
    table[TARGET_COLUMN] = dataset[TARGET_COLUMN].to_numpy()
    return table


def _feature_events(store: es.EventStore, feature_version: str) -> list[es.RecordedEvent]:
    return [
        event
        for event in store.read_stream(FEATURE_STREAM)
        if event.payload.get("feature_version") == feature_version
    ]


@dg.asset(
    deps=[validated_data],
    group_name="features",
    code_version=FEATURE_CODE_SHA256,
    kinds={"scikitlearn", "pandas"},
    description="Features of the newest dataset version that passed validation "
    "(feature_computed + feature_versioned; version = sha256(feature code + dataset version)).",
)
def features(
    context: dg.AssetExecutionContext,
    event_store: EventStoreResource,
    artifact_store: ArtifactStoreResource,
) -> dg.MaterializeResult:
    store = event_store.store
    artifacts: ArtifactStore = artifact_store.store
    dataset = dataset_history(store).latest_passed()
    if dataset is None or dataset.ingested.artifact is None:
        raise dg.Failure(
            "no dataset version has passed validation yet: materialize raw_data and "
            "validated_data first (drop batch CSVs in the landing folder if it is empty)"
        )
    feature_version = feature_version_of(dataset.version)
    recorded = _feature_events(store, feature_version)
    if recorded:
        context.log.info(f"feature version {feature_version[:12]} exists already; reusing it")
        new_events: list[es.RecordedEvent] = []
        computed = next(e for e in recorded if e.event_type == "feature_computed")
        feature_names = list(computed.payload["features"])
        rows = int(computed.payload["rows"])
        artifact_uri = computed.payload.get("artifact", {}).get("uri")
    else:
        table = artifacts.get_table(dataset.ingested.artifact)
        assert isinstance(table, pd.DataFrame)
        feature_table = compute_features(table)
        ref = artifacts.put_table(feature_table)
        feature_names = [c for c in feature_table.columns if c not in (ID_COLUMN, TARGET_COLUMN)]
        rows = len(feature_table)
        artifact_uri = ref.uri
        events = [
            FeatureComputed(
                feature_set=FEATURE_SET,
                feature_version=feature_version,
                dataset_version=dataset.version,
                features=feature_names,
                rows=rows,
                artifact=ref,
            ),
            FeatureVersioned(
                feature_set=FEATURE_SET,
                feature_version=feature_version,
                dataset_version=dataset.version,
                code_sha256=FEATURE_CODE_SHA256,
                features=feature_names,
            ),
        ]
        assert dataset.validated_event is not None
        new_events = event_store.emit(
            context,
            FEATURE_STREAM,
            events,
            stream_type=FEATURE_STREAM_TYPE,
            causation_id=dataset.validated_event.id,
            metadata={"dataset_id": dataset.ingested.dataset_id},
            key=f"features:{feature_version}",
        )
        recorded = new_events
    return dg.MaterializeResult(
        metadata={
            "feature_version": feature_version,
            "dataset_version": dataset.version,
            "feature_code_sha256": FEATURE_CODE_SHA256,
            "feature_set": FEATURE_SET,
            "features": dg.MetadataValue.int(len(feature_names)),
            "rows": dg.MetadataValue.int(rows),
            "artifact": artifact_uri or "",
            "new_events": dg.MetadataValue.int(len(new_events)),
            "events": dg.MetadataValue.json(event_summary(recorded)),
        },
        data_version=dg.DataVersion(feature_version),
    )
