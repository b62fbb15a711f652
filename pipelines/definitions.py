"""The Dagster code location of mlevents: `defs`, loaded by workspace.yaml.

Resource keys: `event_store`, `artifact_store`, `landing`; swap any of them to point elsewhere.
"""

import dagster as dg

from event_sourcing.dagster import ArtifactStoreResource, EventStoreResource, LandingFolderResource
from pipelines.assets import all_assets
from pipelines.jobs import jobs
from pipelines.relay import relay_defs
from pipelines.schedules import schedules
from pipelines.sensors import sensors

__all__ = ["defs", "make_resources"]


def make_resources(
    url: str | None = None, artifacts_root: str | None = None, landing_path: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """The three resources, on the given locations or the defaults (env vars, DAGSTER_HOME)."""
    return {
        "event_store": EventStoreResource(url=url),
        "artifact_store": ArtifactStoreResource(root=artifacts_root),
        "landing": LandingFolderResource(path=landing_path),
    }


defs = dg.Definitions(
    assets=all_assets,
    jobs=jobs,
    sensors=sensors,
    schedules=schedules,
    resources=make_resources(),
    # The graph is a chain of small steps: one process per run is faster than one per step,
    # and it opens the event store once per run.
    executor=dg.in_process_executor,
)
defs = dg.Definitions.merge(defs, relay_defs)  # the relay to NATS: pipelines/relay.py
