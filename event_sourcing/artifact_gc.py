"""Garbage collection of the artifact store: delete the artifacts no event needs any more.

An artifact is live while an event refers to it: any payload or metadata string that is a
sha256 hex digest or an ``artifact://sha256/`` URI (an over-approximation: keeping too much
is safe). A `dataset_redacted` ends the life of the artifacts it lists as deleted, unless a
later event refers to the same bytes again. Garbage: artifacts erased that way (whatever
their age), and unreferenced artifacts and interrupted writes (``.incoming-*``) older than
`min_age` (younger ones may belong to a run that has stored them but not yet recorded its
event). Behind `mlevents artifacts gc` (a dry run unless `--apply`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from event_sourcing.artifacts import URI_PREFIX, ArtifactStore
from event_sourcing.catalog import EventTypes

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

__all__ = ["DEFAULT_MIN_AGE", "Garbage", "collect_garbage", "live_artifacts"]

DEFAULT_MIN_AGE = timedelta(hours=1)
_HEX = re.compile(r"^[0-9a-f]{64}$")
# Events that name dataset versions as facts about them, not as data a reader needs.
_NOT_REFERENCES = (EventTypes.SUBJECT_ERASED, EventTypes.DATASET_SUBJECTS_RECORDED)


@dataclass
class Garbage:
    """What a collection found (and, with apply, deleted): (name, bytes, why) per file."""

    files: list[tuple[str, int, str]] = field(default_factory=list)
    live: int = 0
    applied: bool = False

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "live_artifacts": self.live,
            "garbage_files": len(self.files),
            "garbage_bytes": self.bytes,
            "files": [{"name": n, "bytes": b, "why": w} for n, b, w in self.files],
        }


def _digests(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        text = value[len(URI_PREFIX):] if value.startswith(URI_PREFIX) else value
        if _HEX.match(text):
            yield text
    elif isinstance(value, dict):
        for item in value.values():
            yield from _digests(item)
    elif isinstance(value, list):
        for item in value:
            yield from _digests(item)


def live_artifacts(store: EventStore) -> tuple[set[str], dict[str, str]]:
    """(digests live, erased digest -> the dataset_redacted event id that ended it)."""
    last_reference: dict[str, int] = {}
    erased: dict[str, tuple[int, str]] = {}
    for event in store.read_all():
        if event.event_type in _NOT_REFERENCES:
            continue
        if event.event_type == EventTypes.DATASET_REDACTED:
            for digest in event.payload["deleted_artifacts"]:
                erased[digest] = (event.position, event.id)
            named = _digests(event.payload["artifact"])
        else:
            named = _digests([event.payload, event.metadata])
        for digest in named:
            last_reference[digest] = event.position
    live = {
        digest for digest, position in last_reference.items()
        if digest not in erased or position > erased[digest][0]
    }
    return live, {digest: event_id for digest, (_, event_id) in erased.items()
                  if digest not in live}


def collect_garbage(
    store: EventStore,
    artifacts: ArtifactStore,
    *,
    apply: bool = False,
    min_age: timedelta = DEFAULT_MIN_AGE,
) -> Garbage:
    """Find (and with `apply`, delete) the artifact store's garbage."""
    live, erased = live_artifacts(store)
    found = Garbage(applied=apply)
    cutoff = time.time() - min_age.total_seconds()
    for digest in artifacts.iter_digests():
        if digest in live:
            found.live += 1
            continue
        stat = artifacts.path_for(digest).stat()
        if digest in erased:
            why = f"erased (dataset_redacted {erased[digest]})"
        elif stat.st_mtime <= cutoff:
            why = "no event refers to it"
        else:
            continue
        found.files.append((digest, stat.st_size, why))
    base = artifacts.root
    if base.is_dir():
        for path in sorted(base.rglob(".incoming-*")):
            stat = path.stat()
            if stat.st_mtime <= cutoff:
                found.files.append(
                    (str(path.relative_to(base)), stat.st_size, "an interrupted write")
                )
    if apply:
        for name, _, _ in found.files:
            if _HEX.match(name):
                artifacts.delete(name)
            else:
                (base / name).unlink(missing_ok=True)
    return found
