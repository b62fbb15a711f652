"""Dagster resources of mlevents: the event store, the artifact store and the landing folder.

Thin adapters over the library; swap any of them in `Definitions(resources=...)`.
"""

from resources.artifact_store import ArtifactStoreResource, default_artifacts_root
from resources.event_store import (
    EventStoreResource,
    default_store_url,
    idempotency_scope,
    keyed_event_id,
    mlevents_home,
    run_metadata,
)
from resources.landing import LandingFolderResource, default_landing_folder

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
