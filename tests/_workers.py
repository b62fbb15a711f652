"""Writer processes for the concurrency tests (a module of its own so `spawn` can import it)."""

from __future__ import annotations

import random
import time

import event_sourcing as es


def write_for(url: str, writer: int, seconds: float, max_events: int) -> list[str]:
    """Append events (singles and small batches, shared and own streams) until time or count
    runs out; return the ids written."""
    rng = random.Random(writer)
    written: list[str] = []
    deadline = time.monotonic() + seconds
    with es.connect(url, validate=False) as store:
        while time.monotonic() < deadline and len(written) < max_events:
            size = 1 if rng.random() < 0.7 else rng.randint(2, 5)
            stream = f"shared-{rng.randint(0, 3)}" if rng.random() < 0.5 else f"own-{writer}"
            batch = [es.NewEvent("tick", {"writer": writer, "n": len(written) + i})
                     for i in range(size)]
            written.extend(event.id for event in store.append(stream, batch))
    return written
