"""The retrain job on the multiprocess executor, with steps that die after they append.

A module of its own so the executor's child processes can reconstruct the job. Configured by
environment variables (the children inherit them):

- MLEVENTS_CRASH_AFTER: event types, comma-separated; the first step process that appends one
  of them exits with `os._exit(1)` right after the append (once per type: a marker file in
  MLEVENTS_CRASH_DIR remembers it), as a process killed before Dagster saw its success.
"""

import os
from pathlib import Path
from typing import Any

import dagster as dg

import event_sourcing as es
from event_sourcing.dagster import EventStoreResource
from pipelines.definitions import all_assets, make_resources
from pipelines.jobs import RETRAIN_ASSETS


class CrashingEventStoreResource(EventStoreResource):
    """EventStoreResource whose store kills the process after appending chosen event types."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        super().setup_for_execution(context)
        store = self.store
        append = store.append
        crash_after = {t for t in os.environ.get("MLEVENTS_CRASH_AFTER", "").split(",") if t}
        markers = Path(os.environ.get("MLEVENTS_CRASH_DIR", "."))

        def append_then_die(*args: Any, **kwargs: Any) -> list[es.RecordedEvent]:
            recorded = append(*args, **kwargs)
            for event in recorded:
                marker = markers / f"crashed-{event.event_type}"
                if event.event_type in crash_after and not marker.exists():
                    marker.write_text(event.id)
                    os._exit(1)  # no exception, no cleanup: the process is just gone
            return recorded

        store.append = append_then_die  # type: ignore[method-assign]


def crashing_retrain_job(retries: int = 0) -> dg.JobDefinition:
    """The retrain job; `retries`: the RetryPolicy's max_retries of every step."""
    name = f"crashing_retrain_{retries}"
    job = dg.define_asset_job(
        name,
        selection=dg.AssetSelection.assets(*RETRAIN_ASSETS),
        executor_def=dg.multiprocess_executor,
        op_retry_policy=dg.RetryPolicy(max_retries=retries) if retries else None,
    )
    resources: dict[str, Any] = make_resources()
    resources["event_store"] = CrashingEventStoreResource()
    defs = dg.Definitions(assets=all_assets, jobs=[job], resources=resources)
    return defs.resolve_job_def(name)
