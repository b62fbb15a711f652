"""The hashes behind tamper evidence: each event's content hash, its per-stream chain link,
and RFC 6962 Merkle roots over settled positions. docs/integrity.md defines every byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

# The store's JSON decoding: orjson.loads would turn integers beyond 64 bits into floats.
from event_sourcing.stores.values import decode

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
_ID_LENGTH = _U32(36)  # event ids are canonical UUID text


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
    occurred_at: str | None = None,
) -> bytes:
    """SHA-256 over an event's stored content: text fields length-prefixed (4-byte
    big-endian UTF-8 length, 0xFFFFFFFF for NULL), the schema version as 8 bytes. The time
    the fact occurred is hashed last, and only when it was given (not NULL): the hash of
    every event without one is what it was before business time existed."""
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
            b"" if occurred_at is None else field(occurred_at),
        ))
    ).digest()


def append_hashes(
    rows: Sequence[Any],
    stream_id: str,
    created_at: str,
    correlation_id: str | None,
    causation_id: str | None,
    *,
    canonical: bool = False,
    head: tuple[bytes, int, str] | None = None,
) -> tuple[list[bytes], list[bytes] | None]:
    """The content hash of each row of one append (EventRow: id, event_type, schema_version,
    payload_json, metadata_json, payload, canonical, occurred_at), the fields a batch shares
    encoded once; and, given the head (its chain hash, version, stream type), their chain hashes.
    `canonical`: hash the canonical JSON of payload and metadata (PostgreSQL's jsonb), which
    is their text when the row says it was written in that form."""
    sha256 = _sha256
    s = field(stream_id)
    tail = field(created_at) + (
        _NULL if correlation_id is None else field(correlation_id)
    ) + (_NULL if causation_id is None else field(causation_id))
    # (type, schema version) -> the stream, type and schema version fields, encoded once
    fixed: dict[tuple[str, int], bytes] = {}
    contents = []
    chains: list[bytes] | None = None
    if head is not None:
        chain, version, kind = head[0], head[1], field(head[2])
        chains = []
    for row in rows:
        t = fixed.get((row.event_type, row.schema_version))
        if t is None:
            t = fixed[row.event_type, row.schema_version] = s + field(row.event_type) + (
                row.schema_version.to_bytes(8, "big", signed=True)
            )
        i = row.id.encode()
        metadata = row.metadata_json
        if canonical and not row.canonical:
            p = canonical_json_bytes(
                decode(row.payload_json) if row.payload is None else row.payload
            )
            m = _EMPTY_OBJECT if metadata == "{}" else _bytes_field(
                canonical_json_bytes(decode(metadata))
            )
        else:
            p = row.payload_json.encode("utf-8", "surrogatepass")
            m = _EMPTY_OBJECT if metadata == "{}" else field(metadata)
        occurred = row.occurred_at
        content = sha256(b"".join((
            _U32(len(i)), i, t, _U32(len(p)), p, m, tail,
            b"" if occurred is None else field(occurred),
        ))).digest()
        contents.append(content)
        if chains is not None:
            version += 1
            chain = sha256(chain + version.to_bytes(8, "big", signed=True) + kind + content
                           ).digest()
            chains.append(chain)
    return contents, chains


def _bytes_field(data: bytes) -> bytes:
    return _U32(len(data)) + data


def chain_hash(previous: bytes, version: int, stream_type: str, content: bytes) -> bytes:
    """The event's link in its stream's chain: SHA-256(previous link || version (8 bytes)
    || stream type (length-prefixed) || content hash); a stream's first event links to
    GENESIS."""
    return _sha256(
        previous + version.to_bytes(8, "big", signed=True) + field(stream_type) + content
    ).digest()


# -- PostgreSQL: jsonb keeps the value, not the text -------------------------------------------
_SORTED = orjson.OPT_SORT_KEYS
# Numbers whose canonical form differs from orjson's are -0.0 and doubles >= 1e16 (written
# with an exponent e+); _renumber rewrites them.
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


def canonical_json_bytes(value: Any) -> bytes:
    """The canonical JSON of a value (docs/integrity.md), UTF-8: keys sorted, no whitespace,
    non-ASCII as is, numbers as PostgreSQL's jsonb gives them back (orjson's format)."""
    try:
        data: bytes = orjson.dumps(value, option=_SORTED)
        # (find, not `in`: `in` on bytes first tries the needle as an int, raising and
        # clearing a TypeError) A false hit only costs a walk.
        if data.find(b"e+") >= 0 or data.find(b"-0.0") >= 0:
            data = orjson.dumps(_renumber(value), option=_SORTED)
    except TypeError:  # an integer beyond 64 bits, or text that is not valid Unicode
        try:
            data = orjson.dumps(_renumber(value), option=_SORTED)
        except TypeError:
            return _PYTHON_SORTED(_renumber(value)).encode("utf-8", "surrogatepass")
    return data


def canonical_json(value: Any) -> str:
    """canonical_json_bytes as text."""
    return canonical_json_bytes(value).decode("utf-8", "surrogatepass")


def canonical_json_text(text: str) -> str:
    """canonical_json of the value a JSON text encodes ('{}' fast)."""
    return "{}" if text == "{}" else canonical_json(decode(text))


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


def fold_chain(
    previous: bytes, version: int, stream_type: str, contents: Iterable[bytes]
) -> list[bytes]:
    """The chain hashes of consecutive events after the one at `version` (whose chain hash
    is `previous`) of a stream of `stream_type`, given their content hashes."""
    sha256 = _sha256
    kind = field(stream_type)
    out = []
    for content in contents:
        version += 1
        previous = sha256(previous + version.to_bytes(8, "big", signed=True) + kind + content
                          ).digest()
        out.append(previous)
    return out


def timestamp_text(value: datetime) -> str:
    """An event time as hashed (and as SQLite stores it): fixed-width ISO 8601 in UTC,
    years padded to four digits (0001-9999; strftime("%Y") would not pad years before 1000)."""
    return value.isoformat(timespec="microseconds")
