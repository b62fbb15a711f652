"""The hashes behind tamper evidence: each event's content hash, its per-stream chain link,
and RFC 6962 Merkle roots over settled positions. docs/integrity.md defines every byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

GENESIS = bytes(32)  # the "previous chain hash" of a stream's first event and first seal
_PYTHON_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_NULL = b"\xff\xff\xff\xff"
_U32 = struct.Struct(">I").pack
_sha256 = hashlib.sha256


def field(value: str | None) -> bytes:
    """A text field as hashed: its UTF-8 length (4 bytes, big-endian), then its bytes."""
    if value is None:
        return _NULL
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(4, "big") + data


_EMPTY_OBJECT = field("{}")


def content_hash(
    event_id: str,
    stream_id: str,
    event_type: str,
    schema_version: int,
    payload: str | bytes,
    metadata: str | bytes,
    created_at: str,
    correlation_id: str | None,
    causation_id: str | None,
) -> bytes:
    """SHA-256 over an event's stored content: text fields length-prefixed (4-byte
    big-endian UTF-8 length, 0xFFFFFFFF for NULL), the schema version as 8 bytes."""
    # Written out (no per-field call): every append and every verified event runs this.
    i = event_id.encode()
    s = stream_id.encode("utf-8", "surrogatepass")
    t = event_type.encode("utf-8", "surrogatepass")
    # (payload and metadata may come as their UTF-8 bytes already)
    p = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if metadata == "{}" or metadata == b"{}":
        m = _EMPTY_OBJECT
    else:
        raw = metadata.encode("utf-8", "surrogatepass") if isinstance(metadata, str) else metadata
        m = _U32(len(raw)) + raw
    c = created_at.encode()
    return _sha256(
        b"".join((
            _U32(len(i)), i, _U32(len(s)), s, _U32(len(t)), t,
            schema_version.to_bytes(8, "big", signed=True), _U32(len(p)), p, m,
            _U32(len(c)), c,
            _NULL if correlation_id is None else field(correlation_id),
            _NULL if causation_id is None else field(causation_id),
        ))
    ).digest()


def chain_hash(previous: bytes, version: int, stream_type: str, content: bytes) -> bytes:
    """The event's link in its stream's chain: SHA-256(previous link || version (8 bytes)
    || stream type (length-prefixed) || content hash); a stream's first event links to
    GENESIS."""
    return _sha256(
        previous + version.to_bytes(8, "big", signed=True) + field(stream_type) + content
    ).digest()


# -- PostgreSQL: jsonb keeps the value, not the text -------------------------------------------
_SORTED = orjson.OPT_SORT_KEYS
# Numbers whose canonical form differs from orjson's: -0.0 and doubles >= 1e16 (written with
# an exponent e+). A false hit (inside a string) only costs a walk.
_RENUMBER = re.compile(rb"e\+|-0\.0(?![0-9])")
_INT64 = range(-(2**63), 2**64)  # what orjson writes itself


def _renumber(value: Any) -> Any:
    if isinstance(value, float):
        if value == 0:
            return 0.0
        if "e+" in repr(value):  # integral: jsonb stores the exact digits of its text
            return orjson.Fragment(str(int(Decimal(repr(value)))))
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {key: _renumber(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_renumber(item) for item in value]
    return value


def canonical_json(value: Any) -> str:
    """The canonical text of a JSON value (docs/integrity.md): keys sorted, no whitespace,
    non-ASCII as is, numbers as PostgreSQL's jsonb gives them back (orjson's format)."""
    try:
        data = orjson.dumps(value, option=_SORTED)
        if _RENUMBER.search(data):
            data = orjson.dumps(_renumber(value), option=_SORTED)
    except TypeError:  # an integer beyond 64 bits, or text that is not valid Unicode
        try:
            data = orjson.dumps(_renumber(value), option=_SORTED)
        except TypeError:
            return _PYTHON_SORTED(_renumber(value))
    return data.decode()


def canonical_json_text(text: str) -> str:
    """canonical_json of the value a JSON text encodes ('{}' fast)."""
    return "{}" if text == "{}" else canonical_json(orjson.loads(text))


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
    sha256 = _sha256
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + left + right).digest()
            for left, right in zip(level[::2], level[1::2], strict=False)
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
