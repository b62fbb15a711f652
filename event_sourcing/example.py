"""A short tour of the store for `make run`: typed ML events into SQLite, read back three ways.

Run with `python -m event_sourcing.example [URL]`; the default URL is a file under .mlevents/.
"""

from __future__ import annotations

import hashlib
import sys
import uuid

import event_sourcing as es
from event_sourcing.catalog import (
    ArtifactRef,
    TrainingCompleted,
    TrainingProgress,
    TrainingStarted,
)


def main(url: str | None = None) -> None:
    with es.connect(url) as store:
        run = str(uuid.uuid4())
        dataset = hashlib.sha256(b"wine v1").hexdigest()
        store.append(
            run,
            [
                TrainingStarted(
                    config={"estimator": "LogisticRegression", "C": 1.0},
                    dataset_id="wine",
                    dataset_version=dataset,
                    seed=42,
                ),
                *(TrainingProgress(step=s, loss=1.0 / s, metrics={"acc": 0.8 + s / 100})
                  for s in range(1, 4)),
                TrainingCompleted(
                    model_id=f"wine-clf-{run[:8]}",
                    model_artifact=ArtifactRef(uri="artifact://sha256/" + "0" * 64,
                                               sha256="0" * 64),
                    final_metrics={"accuracy": 0.83},
                ),
            ],
            expected_version=0,
            stream_type="training_run",
            correlation_id=run,
        )
        print(f"store: {store!r}  head position: {store.head_position()}")
        print(f"\nstream {run} (version {store.stream_version(run)}):")
        for event in store.read_stream(run):
            print(f"  v{event.version} @{event.position:<5} {event.event_type:<20} {event.payload}")
        print("\nevent counts:", store.counts_by_type())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
