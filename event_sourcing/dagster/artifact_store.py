"""ArtifactStoreResource: the content-addressed artifact store (datasets, models) for Dagster.

Its root defaults to `artifacts/` beside the default events database.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from event_sourcing.artifacts import ENV_VAR, ArtifactStore
from event_sourcing.dagster.event_store import mlevents_home

__all__ = ["ArtifactStoreResource", "default_artifacts_root"]


def default_artifacts_root() -> Path:
    """`$MLEVENTS_ARTIFACTS`, else `artifacts/` under `$DAGSTER_HOME/mlevents` or `./.mlevents`."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return Path(configured).expanduser().absolute()
    return mlevents_home() / "artifacts"


class ArtifactStoreResource(dg.ConfigurableResource):
    """The artifact store events refer to by `artifact://sha256/...` URIs.

    Cheap to build (it is a folder), so `store` makes one per call; nothing to tear down.
    """

    root: str | None = Field(
        default=None,
        description="Folder of the artifact store. Empty: $MLEVENTS_ARTIFACTS, then "
        "artifacts/ under $DAGSTER_HOME/mlevents/ (or ./.mlevents/).",
    )

    def resolved_root(self) -> Path:
        return Path(self.root).expanduser().absolute() if self.root else default_artifacts_root()

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.resolved_root())
