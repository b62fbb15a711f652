"""Forgetting a data subject (crypto-shredding) and the erasure report an auditor reads.

forget destroys the subject's key and records `subject_erased`; no event row is ever changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from event_sourcing.catalog.ml_events import EventTypes, SubjectErased
from event_sourcing.errors import EventValidationError
from event_sourcing.events import NewEvent, RecordedEvent
from event_sourcing.privacy.consequences import erasure_consequences
from event_sourcing.privacy.impact import datasets_of, downstream
from event_sourcing.privacy.keys import TABLE, check_subject_id
from event_sourcing.stores.sqlite_schema import id_text
from event_sourcing.stores.sqlite_texts import text_of

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

MAX_LISTED_EVENTS = 10_000
"""At most this many affected event ids are listed in one subject_erased (all are counted)."""


def erasure_stream(subject_hash: str) -> str:
    return f"subject-erasure-{subject_hash[:32]}"


def sealed_events(store: EventStore, key_ids: list[str]) -> list[tuple[str, str]]:
    """(event id, type) of every event sealed under one of `key_ids` (one scan of the log;
    on PostgreSQL, also of the archive's files: docs/archive.md), for each key in position
    order."""
    sqlite = store.dialect == "sqlite"  # (ids as the UUID's bytes, shared texts numbered)
    text = "payload" if sqlite else "payload::text"
    meta = text_of("metadata") if sqlite else "metadata::text"
    id_ = "id" if sqlite else "id::text"
    type_ = text_of("event_type") if sqlite else "event_type"
    by_key: list[list[tuple[int, str, str]]] = []
    for key_id in key_ids:
        pattern = f'%"{key_id}.%'  # the envelope's text begins with its key id
        by_key.append([
            (int(position), id_text(event_id), event_type)
            for position, event_id, event_type in store.recorder.query(
                f"SELECT position, {id_}, {type_} FROM event_store WHERE {text} LIKE ? "
                f"OR {meta} LIKE ? ORDER BY position",
                [pattern, pattern],
            )
        ])
    if key_ids:
        # Read after the table's scans: a partition archived since is in both (once here).
        in_files = store.recorder.archived_containing([f'"{key_id}.' for key_id in key_ids])
        by_key = [
            sorted({row[1]: row for row in (*hot, *in_files[f'"{key_id}.'])}.values())
            for key_id, hot in zip(key_ids, by_key, strict=True)
        ]
    return [(event_id, event_type) for rows in by_key for _, event_id, event_type in rows]


def forget(store: EventStore, subject_id: str, *, reason: str) -> RecordedEvent:
    """Destroy the subject's data key and append `subject_erased` (no personal data)."""
    if not isinstance(reason, str) or not reason.strip():
        raise EventValidationError(
            f"forget needs a reason (e.g. 'GDPR art. 17 request #123'), got {reason!r}"
        )
    keys = store.privacy.keys
    subject_hash = keys.subject_hash(subject_id)
    held = [row[0] for row in store.recorder.query(
        f"SELECT key_id FROM {TABLE} WHERE subject_hash = ?", [subject_hash]
    )]
    affected = sealed_events(store, held)
    destroyed = keys.destroy(subject_hash)
    # Events sealed between the scan and the delete are unreadable too, just not listed.
    affected += sealed_events(store, [k for k in destroyed if k not in held])
    datasets = datasets_of(store, subject_hash)
    models = downstream(store, list(datasets))["model"]
    types: dict[str, int] = {}
    for _, event_type in affected:
        types[event_type] = types.get(event_type, 0) + 1
    event = SubjectErased(
        subject_hash=subject_hash,
        reason=reason,
        keys_destroyed=len(destroyed),
        affected_count=len(affected),
        affected_types=types,
        affected_events=[event_id for event_id, _ in affected[:MAX_LISTED_EVENTS]],
        dataset_versions=list(datasets),
        dataset_ids=sorted(set(datasets.values())),
        model_ids=models,
        erased_at=store.clock(),
    )
    [recorded] = store.append(
        erasure_stream(subject_hash), [NewEvent.of(event)], stream_type="subject_erasure"
    )
    return recorded


def erasure_report(store: EventStore, subject_id: str) -> dict[str, Any]:
    """What was erased of a subject, when and why, and what followed (dataset versions
    redacted, models flagged, retrained, retired, deployed), with event ids (JSON-ready)."""
    keys = store.privacy.keys
    if not keys.holds_any():  # nothing was ever sealed or forgotten here
        check_subject_id(subject_id)
        return {"subject_hash": None, "erasures": [], "holds_live_key": False}
    subject_hash = keys.subject_hash(subject_id)
    erasures = [
        {
            "event_id": event.id,
            "position": event.position,
            "erased_at": event.payload.get("erased_at") or event.created_at.isoformat(),
            "reason": event.payload["reason"],
            "keys_destroyed": event.payload["keys_destroyed"],
            "affected_count": event.payload["affected_count"],
            "affected_types": event.payload["affected_types"],
            "affected_events": event.payload["affected_events"],
            "dataset_versions": event.payload["dataset_versions"],
            **erasure_consequences(store, event),
        }
        for event in store.read_stream(erasure_stream(subject_hash))
        if event.event_type == EventTypes.SUBJECT_ERASED
    ]
    held = store.recorder.query(
        f"SELECT count(*) FROM {TABLE} WHERE subject_hash = ?", [subject_hash]
    )[0][0]
    return {
        "subject_hash": subject_hash,
        "erasures": erasures,
        "holds_live_key": bool(held),
    }
