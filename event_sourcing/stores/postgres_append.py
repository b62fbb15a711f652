"""The PostgreSQL append: one statement per batch that locates the stream's head, takes
the in-flight marker (docs/ordering.md), inserts the events with their hashes and registers
a new stream. The marker and the written columns are shared with imports (postgres_import).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from event_sourcing.integrity.hashing import GENESIS, append_hashes, timestamp_text
from event_sourcing.stores.recorder import EventRow

# The stream's head before an append, as (stream type, version, chain hash, time recorded;
# NULL when the caller gives the head, knowing its time; whether its row is in the tables).
# Expecting n >= 1: no row unless the stream has an event n, so a stale expectation inserts
# nothing and a moved-on stream hits UNIQUE (stream_id, version). Expecting a new stream,
# or a version the stream is known to have reached: as given, and the unique index alone
# decides. No expectation: the latest event, if any.
# (Found through event_keys, which knows where a stream's events are: runtime pruning
# leaves one partition's primary key to look in.) A head whose partition was archived has
# a key but no row: nothing is inserted, and the caller reads the head from the archive
# and appends again giving it (postgres_heads).
_HEAD_AT = """
        SELECT e.stream_type, k.version, e.chain_hash, e.created_at, e.position IS NOT NULL
        FROM event_keys AS k LEFT JOIN event_store AS e ON e.position = k.position
        WHERE k.stream_id = %(stream)s AND k.version = %(expected)s::bigint"""
_HEAD_GIVEN = (
    "SELECT %(kind)s::text, %(expected)s::bigint, NULL::bytea, NULL::timestamptz, true"
)
_HEAD_LATEST = """
        SELECT coalesce(h.stream_type, %(kind)s), coalesce(h.version, 0),
            coalesce(h.chain_hash, %(genesis)s::bytea), h.created_at, coalesce(h.hot, true)
        FROM (SELECT 1) AS one LEFT JOIN LATERAL (
            SELECT e.stream_type, k.version, e.chain_hash, e.created_at,
                e.position IS NOT NULL AS hot
            FROM event_keys AS k LEFT JOIN event_store AS e ON e.position = k.position
            WHERE k.stream_id = %(stream)s ORDER BY k.version DESC LIMIT 1
        ) AS h ON true"""

# One batch to one stream, one statement. The in-flight marker is taken before the
# statement's first nextval (the position column's default): the sequence's last value m,
# held as a shared advisory lock until the transaction ends, so every position below it
# is > m. (A subquery with a volatile output is never folded into the outer query.)
# The events: one as scalar parameters (cheaper to send and to plan), or a batch as one
# JSON array of [id, type, schema version, payload, metadata(, occurred_at)] and the
# content (and chain) hashes as one bytea of 32 bytes per event each (chains null when the
# statement computes them from the head).
_ONE_EVENT = """
        SELECT %(id)s::uuid, %(type)s::text, %(schema_version)s::integer, %(payload)s::jsonb,
            %(metadata)s::jsonb, 1::bigint, %(content)b::bytea, %(chain)b::bytea,
            %(occurred)s::timestamptz"""
_EVENT_BATCH = """
        SELECT (x.item->>0)::uuid, x.item->>1, (x.item->>2)::integer, x.item->3, x.item->4, x.i,
            substring(%(contents)b::bytea FROM (32 * x.i - 31)::integer FOR 32),
            substring(%(chains)b::bytea FROM (32 * x.i - 31)::integer FOR 32),
            (x.item->>5)::timestamptz
        FROM jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS x(item, i)"""
# The chain hash of each event (docs/integrity.md): given by the client when it knows the
# head's (a new stream, or the version it last appended), else linked here to the head
# the statement located.
_LINK = """head.version + u.i) || int4send(octet_length(convert_to(head.stream_type, 'UTF8')))
        || convert_to(head.stream_type, 'UTF8') || u.content"""
_CHAIN = {
    "given": "u.chain",
    "one": f"sha256(head.chain || int8send({_LINK})",
    "batch": f"mlevents_chain(head.chain, int8send({_LINK}) OVER (ORDER BY u.i)",
}
# The in-flight marker (docs/ordering.md): the sequence's last value, held as a shared
# advisory lock until the transaction ends (also taken by an import, postgres_import).
MARKER = """
        SELECT pg_advisory_xact_lock_shared(mlevents_inflight_key(),
            ((CASE WHEN q.is_called THEN q.last_value ELSE 0 END) %% 4294967296
             - 2147483648)::integer)
        FROM event_position_seq AS q"""
# The columns an append (and an import's COPY) writes; positions come from the trigger.
WRITTEN = (
    "id, stream_id, stream_type, version, event_type, schema_version, payload, metadata, "
    "created_at, correlation_id, causation_id, content_hash, chain_hash, occurred_at"
)
_INSERT = """
    INSERT INTO event_store AS e (""" + WRITTEN + """)
    SELECT u.id, %(stream)s, head.stream_type, head.version + u.i, u.type, u.schema_version,
        u.payload, u.metadata, %(now)s, %(correlation)s, %(causation)s, u.content, {chain},
        u.occurred
    FROM ({head}) AS head (stream_type, version, chain, created_at, hot)
    CROSS JOIN LATERAL (""" + MARKER + """ OFFSET 0) AS marker
    CROSS JOIN LATERAL ({events}) AS u (id, type, schema_version, payload, metadata, i,
        content, chain, occurred)
    -- A stream's time never goes back: nothing is inserted when its head (the row read
    -- above; given by the caller, who knows its time) was recorded later than this
    -- append's time; the caller then appends again at that time (docs/temporal.md).
    -- Nor when the head is archived (its row is gone): the caller gives it instead.
    WHERE coalesce(head.created_at <= %(now)s, true) AND head.hot
    RETURNING e.stream_type, e.version, e.position, {returned}"""


def _registering(insert: str) -> str:
    """`insert`, also registering the stream in `streams` when it writes version 1."""
    return f"""
WITH appended AS ({insert}
), registered AS (
    INSERT INTO streams (stream_id, stream_type, created_at)
    SELECT %(stream)s, a.stream_type, %(now)s FROM appended AS a WHERE a.version = 1
    ON CONFLICT DO NOTHING
)
SELECT stream_type, version, position, chain_hash FROM appended"""


# (head, events) -> statement. AT and KNOWN never write a stream's first event.
_APPEND = {
    (head_name, events_name): (
        (lambda insert: insert if head_name in {"at", "known"} else _registering(insert))(
            _INSERT.format(
                head=head, events=events,
                chain=_CHAIN["given" if head_name in {"known", "new"} else events_name],
                # the client knows the chain hashes it gave: no need to send them back
                returned="NULL::bytea AS chain_hash" if head_name in {"known", "new"}
                else "e.chain_hash",
            )
        )
    )
    for head_name, head in (
        ("at", _HEAD_AT), ("known", _HEAD_GIVEN), ("new", _HEAD_GIVEN), ("latest", _HEAD_LATEST)
    )
    for events_name, events in (("one", _ONE_EVENT), ("batch", _EVENT_BATCH))
}
_JSON_STRING = json.JSONEncoder(ensure_ascii=False).encode


def _events_json(rows: Sequence[EventRow]) -> str:
    """The batch as one JSON array of [id, type, schema version, payload, metadata] (and
    occurred_at, when given); the payloads are spliced in already encoded rather than
    encoded a second time."""
    events = ",".join(
        f'["{row.id}",{_JSON_STRING(row.event_type)},{row.schema_version},'
        f"{row.payload_json},{row.metadata_json}"
        + ("]" if row.occurred_at is None else f',"{row.occurred_at}"]')
        for row in rows
    )
    return f"[{events}]"


def append_query(
    stream_id: str,
    stream_type: str | None,
    expected_version: int | None,
    rows: Sequence[EventRow],
    created_at: datetime,
    correlation_id: str | None,
    causation_id: str | None,
    *,
    head_chain: bytes | None = None,
) -> tuple[str, dict[str, Any]]:
    """The one statement that appends a batch, and its parameters. It returns (stream
    type, version, position, chain hash) per event, or no row when the stream is not at
    `expected_version`, its head was recorded after `created_at`, or the head it looked up
    is archived (postgres_heads); it raises UniqueViolation when the version or an id is
    taken.

    `head_chain`: the caller knows the stream's event at `expected_version` (>= 1) has this
    chain hash and that `stream_type` is the stream's type, so the statement skips looking
    that up and the chain hashes are computed here.
    """
    kind = stream_type or "default"
    request: dict[str, Any] = {
        "stream": stream_id, "kind": kind, "expected": expected_version,
        "now": created_at, "correlation": correlation_id, "causation": causation_id,
    }
    if expected_version is None:
        head = "latest"
        request["genesis"] = GENESIS
    elif not expected_version:
        head, head_chain = "new", GENESIS
    else:
        head = "known" if head_chain is not None else "at"
    contents, chains = append_hashes(
        rows, stream_id, timestamp_text(created_at), correlation_id, causation_id,
        canonical=True,
        head=None if head_chain is None or expected_version is None
        else (head_chain, expected_version, kind),
    )
    if chains is not None:
        request["last_chain"] = chains[-1]  # (not in the statement: for the caller)
    request["located"] = head in {"at", "latest"}  # (for the caller: the head looked up)
    if len(rows) == 1:
        row = rows[0]
        request.update(
            id=row.id, type=row.event_type, schema_version=row.schema_version,
            payload=row.payload_json, metadata=row.metadata_json, content=contents[0],
            chain=chains[0] if chains is not None else None, occurred=row.occurred_at,
        )
        events = "one"
    else:
        request["events"] = _events_json(rows)
        request["contents"] = b"".join(contents)
        request["chains"] = None if chains is None else b"".join(chains)
        events = "batch"
    return _APPEND[head, events], request

