"""The hashes behind tamper evidence: each event's content hash, its per-stream chain link,
and RFC 6962 Merkle roots over settled positions. docs/integrity.md defines every byte.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

GENESIS = bytes(32)  # the "previous chain hash" of a stream's first event and first seal
_NULL = b"\xff\xff\xff\xff"
_sha256 = hashlib.sha256


def _field(value: str | None) -> bytes:
    if value is None:
        return _NULL
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


def content_hash(
    event_id: str,
    stream_id: str,
    event_type: str,
    schema_version: int,
    payload: str,
    metadata: str,
    created_at: str,
    correlation_id: str | None,
    causation_id: str | None,
) -> bytes:
    """SHA-256 over an event's stored content: text fields length-prefixed (4-byte
    big-endian UTF-8 length, 0xFFFFFFFF for NULL), the schema version as 8 bytes."""
    return _sha256(
        b"".join(
            (
                _field(event_id), _field(stream_id), _field(event_type),
                schema_version.to_bytes(8, "big", signed=True), _field(payload),
                _field(metadata), _field(created_at), _field(correlation_id),
                _field(causation_id),
            )
        )
    ).digest()


def chain_hash(previous: bytes, version: int, stream_type: str, content: bytes) -> bytes:
    """The event's link in its stream's chain: SHA-256(previous link || version (8 bytes)
    || stream type (length-prefixed) || content hash); a stream's first event links to
    GENESIS."""
    return _sha256(
        previous + version.to_bytes(8, "big", signed=True) + _field(stream_type) + content
    ).digest()


# -- PostgreSQL: jsonb keeps the value, not the text -------------------------------------------
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
# Only numbers PostgreSQL would print differently from Python: -0.0 and integral floats
# written with an exponent (>= 1e16). A false hit (inside a string) only costs a walk.
_RENUMBER = re.compile(r"e\+|-0\.0(?![0-9])")


def _renumber(value: Any) -> Any:
    if isinstance(value, float):
        if value == 0:
            return 0.0
        if "e+" in repr(value):
            return int(Decimal(repr(value)))  # integral: jsonb stores its exact digits
        return value
    if isinstance(value, dict):
        return {key: _renumber(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_renumber(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """The canonical text of a JSON value as PostgreSQL's jsonb stores it: keys sorted by
    code point, no whitespace, non-ASCII kept, integral numbers >= 1e16 as integers."""
    text: str = _CANONICAL(value)
    if _RENUMBER.search(text):
        text = _CANONICAL(_renumber(value))
    return text


def canonical_json_text(text: str) -> str:
    """canonical_json of the value a JSON text encodes ('{}' fast)."""
    return "{}" if text == "{}" else canonical_json(json.loads(text))


# -- Merkle trees (RFC 6962, section 2.1) ------------------------------------------------------
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(position: int, chain: bytes) -> bytes:
    """A Merkle leaf: SHA-256(0x00 || position (8 bytes) || the event's chain hash)."""
    return _sha256(b"\x00" + position.to_bytes(8, "big", signed=True) + chain).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash of leaf hashes (bottom-up: an odd node moves up as is,
    which is the same tree as the RFC's split at the largest power of two)."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        paired = [
            _sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def seal_chain(previous: bytes, from_position: int, to_position: int, count: int,
               root: bytes) -> bytes:
    """A seal's link: SHA-256(previous seal's link || from || to || count (8 bytes each)
    || Merkle root); the first seal links to GENESIS."""
    return _sha256(
        previous + b"".join(n.to_bytes(8, "big", signed=True)
                            for n in (from_position, to_position, count)) + root
    ).digest()


def fold_chain(previous: bytes, links: Iterable[tuple[int, str, bytes]]) -> list[bytes]:
    """The chain hashes of consecutive events (version, stream type, content hash)."""
    out = []
    for version, stream_type, content in links:
        previous = chain_hash(previous, version, stream_type, content)
        out.append(previous)
    return out


def timestamp_text(value: datetime) -> str:
    """An event time as hashed (and as SQLite stores it): fixed-width ISO 8601 in UTC."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
