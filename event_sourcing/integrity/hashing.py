"""The hashes behind tamper evidence: each event's content hash, its per-stream chain link,
and RFC 6962 Merkle roots over settled positions. docs/integrity.md defines every byte.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count, repeat
from operator import methodcaller
from typing import Any

import orjson

# The store's JSON decoding: orjson.loads would turn integers beyond 64 bits into floats.
from event_sourcing.stores.values import decode

GENESIS = bytes(32)  # the "previous chain hash" of a stream's first event and first seal
_PYTHON_SORTED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_NULL = b"\xff\xff\xff\xff"
_U32 = struct.Struct(">I").pack
_I64 = struct.Struct(">q").pack  # = n.to_bytes(8, "big", signed=True)
_sha256 = hashlib.sha256
_DIGEST = methodcaller("digest")
_UTF8 = repeat("utf-8")  # (map(str.encode, texts, _UTF8, _PASS): every text, in C)
_PASS = repeat("surrogatepass")
_FIELDS: dict[str, bytes] = {}  # field() of stream ids, types and stream types, bounded
_FIXED: dict[tuple[str, str, int], bytes] = {}  # (stream, type, schema version) fields, bounded


def field(value: str | None) -> bytes:
    """A text field as hashed: its UTF-8 length (4 bytes, big-endian), then its bytes."""
    if value is None:
        return _NULL
    data = value.encode("utf-8", "surrogatepass")
    return _U32(len(data)) + data


def _name(value: str) -> bytes:
    """field() of a name appends repeat (stream id, stream type, event type), cached."""
    found = _FIELDS.get(value)
    if found is None:
        if len(_FIELDS) >= 4096:
            _FIELDS.clear()
        found = _FIELDS[value] = field(value)
    return found


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
    occurred_at: str | None = None,
) -> bytes:
    """SHA-256 over an event's stored content: text fields length-prefixed (4-byte
    big-endian UTF-8 length, 0xFFFFFFFF for NULL), the schema version as 8 bytes. The time
    the fact occurred is hashed last, and only when it was given (not NULL): the hash of
    every event without one is what it was before business time existed."""
    i = event_id.encode()
    # (payload and metadata may come as their UTF-8 bytes already)
    p = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    m = metadata.encode("utf-8", "surrogatepass") if isinstance(metadata, str) else metadata
    c = created_at.encode()
    return _sha256(b"".join((
        _U32(len(i)), i, field(stream_id), field(event_type),
        schema_version.to_bytes(8, "big", signed=True),
        _U32(len(p)), p, _U32(len(m)), m, _U32(len(c)), c, field(correlation_id),
        field(causation_id), b"" if occurred_at is None else field(occurred_at),
    ))).digest()


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
    # The content hash's bytes: id, [stream, type, schema version], payload, metadata,
    # [created_at, correlation, causation], occurred_at; the bracketed parts are a batch's
    # (a type's) constants.
    c = created_at.encode("utf-8", "surrogatepass")
    tail = b"".join((
        _U32(len(c)), c, _NULL if correlation_id is None else field(correlation_id),
        _NULL if causation_id is None else field(causation_id),
    ))
    if not rows:
        return [], None if head is None else []
    if len(rows) == 1:  # (a single event: no per-batch machinery, every call written out)
        event_id, event_type, version, payload, metadata, value, done, occurred = rows[0]
        if canonical and not done:
            p, m = _canonical_texts(payload, metadata, value)
            m = _U32(len(m)) + m
        else:
            p = payload.encode("utf-8", "surrogatepass")
            m = _EMPTY_OBJECT if metadata == "{}" else field(metadata)
        fixed = _FIXED.get((stream_id, event_type, version))
        if fixed is None:
            fixed = _fixed(stream_id, event_type, version)
        i = event_id.encode()
        content = _sha256(b"".join((
            _U32(len(i)), i, fixed, _U32(len(p)), p, m, tail,
            b"" if occurred is None else field(occurred),
        ))).digest()
        if head is None:
            return [content], None
        return [content], [_sha256(
            head[0] + _I64(head[1] + 1) + _name(head[2]) + content
        ).digest()]
    ids, types, versions, payloads, metadatas, values, done, occurred = zip(*rows, strict=True)
    if canonical and not all(done):
        texts = [
            (p.encode("utf-8", "surrogatepass"), m.encode("utf-8", "surrogatepass"))
            if ok else _canonical_texts(p, m, value)
            for p, m, value, ok in zip(payloads, metadatas, values, done, strict=True)
        ]
        ps: list[bytes] = [p for p, _ in texts]
        ms: list[bytes] = [m for _, m in texts]
    else:
        ps = list(map(str.encode, payloads, _UTF8, _PASS))
        ms = list(map(str.encode, metadatas, _UTF8, _PASS))
    s = _name(stream_id)
    kinds = {
        key: s + _name(key[0]) + _I64(key[1])
        for key in set(zip(types, versions, strict=True))
    }
    same = (
        repeat(kinds.popitem()[1]) if len(kinds) == 1
        else map(kinds.__getitem__, zip(types, versions, strict=True))
    )
    if occurred.count(None) == len(occurred):
        last: Iterable[bytes] = repeat(b"")
    else:
        times = {text: b"" if text is None else field(text) for text in set(occurred)}
        last = map(times.__getitem__, occurred)
    encoded_ids = list(map(str.encode, ids))
    contents = list(map(_DIGEST, map(_sha256, map(b"".join, zip(
        map(_U32, map(len, encoded_ids)), encoded_ids, same,
        map(_U32, map(len, ps)), ps, map(_U32, map(len, ms)), ms, repeat(tail), last,
    )))))
    if head is None:
        return contents, None
    return contents, fold_chain(head[0], head[1], head[2], contents)


def _fixed(stream_id: str, event_type: str, version: int) -> bytes:
    """The stream, type and schema version fields of a content hash, cached."""
    if len(_FIXED) >= 4096:
        _FIXED.clear()
    fixed = _FIXED[stream_id, event_type, version] = (
        _name(stream_id) + _name(event_type) + _I64(version)
    )
    return fixed


def _canonical_texts(payload: str, metadata: str, value: Any) -> tuple[bytes, bytes]:
    """The canonical JSON of a row's payload (its decoded `value`, when given) and metadata."""
    p = canonical_json_bytes(decode(payload) if value is None else value)
    m = b"{}" if metadata == "{}" else canonical_json_bytes(decode(metadata))
    return p, m


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
    kind = _FIELDS.get(stream_type) or _name(stream_type)
    if type(contents) is list and len(contents) == 1:
        return [sha256(previous + _I64(version + 1) + kind + contents[0]).digest()]
    # Each link's bytes after the previous link: version, stream type, content hash.
    return [
        previous := sha256(previous + rest).digest()
        for rest in map(b"".join, zip(map(_I64, count(version + 1)), repeat(kind), contents))
    ]


_MINUTES: dict[tuple[int, int, int, int, int], str] = {}  # "YYYY-MM-DDTHH:MM:", bounded
_SECONDS = tuple(f"{n:02d}." for n in range(60))


def timestamp_text(value: datetime) -> str:
    """An event time as hashed (and as SQLite stores it): fixed-width ISO 8601 in UTC,
    years padded to four digits (0001-9999; strftime("%Y") would not pad years before 1000).
    That is value.isoformat(timespec="microseconds"), built from a cached minute for a time
    in UTC (isoformat costs as much as a SHA-256 of the event)."""
    if value.tzinfo is not UTC:
        return value.isoformat(timespec="microseconds")
    key = (value.year, value.month, value.day, value.hour, value.minute)
    minute = _MINUTES.get(key)
    if minute is None:
        if len(_MINUTES) >= 1024:
            _MINUTES.clear()
        minute = _MINUTES[key] = value.isoformat(timespec="microseconds")[:17]
    return minute + _SECONDS[value.second] + str(1000000 + value.microsecond)[1:] + "+00:00"
