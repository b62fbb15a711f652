"""LandingFolderResource: the folder where new data batches arrive as CSV files.

The ingestion asset and the landing-folder sensor both read it.
"""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from event_sourcing.dagster.event_store import mlevents_home

__all__ = ["LandingFolderResource", "default_landing_folder"]


def default_landing_folder() -> Path:
    """`$MLEVENTS_LANDING`, else `$DAGSTER_HOME/landing`, else `./.mlevents/landing`."""
    configured = os.environ.get("MLEVENTS_LANDING")
    if configured:
        return Path(configured).expanduser().absolute()
    dagster_home = os.environ.get("DAGSTER_HOME")
    if dagster_home:
        return Path(dagster_home).expanduser().absolute() / "landing"
    return mlevents_home() / "landing"


class LandingFolderResource(dg.ConfigurableResource):
    """Where batch CSV files land (`*.csv`; other files and dot-files are ignored)."""

    path: str | None = Field(
        default=None,
        description="Landing folder. Empty: $MLEVENTS_LANDING, then $DAGSTER_HOME/landing, "
        "then ./.mlevents/landing.",
    )

    def folder(self, subfolder: str | None = None) -> Path:
        """The folder (or its `subfolder`: one per model's dataset), created if missing."""
        folder = Path(self.path).expanduser().absolute() if self.path else default_landing_folder()
        if subfolder:
            folder = folder / subfolder
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def batch_files(self, subfolder: str | None = None) -> list[Path]:
        """The batch files present, sorted by name (arrival order for seeded batches)."""
        return sorted(
            p
            for p in self.folder(subfolder).glob("*.csv")
            if p.is_file() and not p.name.startswith(".")
        )
