"""This repository's Dagster resources: the integration's, re-exported for the code location.

The resources live in `event_sourcing.dagster`; swap any of them in `Definitions(resources=...)`.
"""

from event_sourcing.dagster import (
    ArtifactStoreResource,
    EventStoreResource,
    LandingFolderResource,
    default_artifacts_root,
    default_landing_folder,
    default_store_url,
    idempotency_scope,
    keyed_event_id,
    mlevents_home,
    run_metadata,
)

__all__ = [
    "ArtifactStoreResource",
    "EventStoreResource",
    "LandingFolderResource",
    "default_artifacts_root",
    "default_landing_folder",
    "default_store_url",
    "idempotency_scope",
    "keyed_event_id",
    "mlevents_home",
    "run_metadata",
]
