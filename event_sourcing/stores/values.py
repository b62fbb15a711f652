"""Payload and metadata values as JSON text: one canonical form, checked and sized once.

Every backend stores this text as given, so what is accepted reads back equal, type included.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal
from itertools import accumulate
from typing import Any

import orjson

from event_sourcing.errors import EventValidationError

MAX_NESTING_DEPTH = 100
"""Objects and arrays nest at most this deep (the payload or metadata object is level 1)."""

# Built once: json.dumps(**kwargs) would construct an encoder per call on the hot path.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
_SORTED = orjson.OPT_SORT_KEYS
decode = json.JSONDecoder().decode
_orjson_loads = orjson.loads
# orjson reads an integer beyond 64 bits as a float: text holding a run of 19+ digits (an
# integer that may not fit, or a long written-out float) is read by the exact decoder.
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_LENIENT = json.JSONEncoder(ensure_ascii=False, default=str)

# A JSON string, or a number PostgreSQL's jsonb would not read back as the same float:
# jsonb keeps numbers as `numeric`, which prints 1e+23 as 100000000000000000000000 (an int
# to a reader) and has no negative zero. (Python writes positive exponents as e+NN.)
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSONB_UNSAFE = re.compile(rf"{_STRING}|(-?\d+(?:\.\d+)?e\+\d+|-0\.0(?=[,\]}}]))")
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash + u0000
_STRINGS = re.compile(_STRING)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STEP = {"{": 1, "[": 1, "}": -1, "]": -1}


def _jsonb_safe(match: re.Match[str]) -> str:
    number = match.group(1)
    if number is None:
        return match.group(0)  # a string: unchanged
    if number == "-0.0":
        return "0.0"
    # A float of 16+ integer digits, written out with a decimal point so that it stays a
    # float (the same decimal value, so it parses back to exactly the same float).
    return f"{Decimal(number):f}.0"


def decode_all(texts: Sequence[bytes]) -> list[Any]:
    """The values of stored JSON texts (UTF-8: a page's payloads or metadata), exactly as
    `decode` reads them, types included: through orjson wherever that reads the same."""
    if texts.count(b"{}") == len(texts):  # a page of events without metadata
        return [{} for _ in texts]
    try:
        if _LONG_RUN not in b"\n".join(texts).translate(_DIGITS_AS_ZEROS):  # the whole page
            return list(map(_orjson_loads, texts))
        return [
            decode(text.decode()) if _LONG_RUN in text.translate(_DIGITS_AS_ZEROS)
            else _orjson_loads(text)
            for text in texts
        ]
    except orjson.JSONDecodeError:  # text orjson refuses (not written by this store)
        return [decode(text.decode()) for text in texts]


_SCALARS = frozenset({str, int, float, bool, type(None)})


def decode_repeated(texts: Sequence[bytes]) -> list[Any]:
    """`decode_all` of a column whose texts repeat (metadata: a batch's, or a run's, is the
    same for each of its events): each distinct text decoded once; an object holding only
    scalars is copied for each event (a fresh object, as decoding gives), any other value
    decoded for each."""
    if texts.count(b"{}") == len(texts):  # a page of events without metadata
        return [{} for _ in texts]
    distinct = list(dict.fromkeys(texts))
    if len(distinct) == len(texts):
        return decode_all(texts)
    shared = {
        text: value for text, value in zip(distinct, decode_all(distinct), strict=True)
        if type(value) is dict and _SCALARS.issuperset(map(type, value.values()))
    }
    if len(shared) == len(distinct):  # (the usual case)
        copy = dict.copy
        return [copy(shared[text]) for text in texts]
    others = [text for text in texts if text not in shared]
    decoded = iter(decode_all(others))
    return [shared[text].copy() if text in shared else next(decoded) for text in texts]


def _depth(text: str) -> int:
    """How deep the objects and arrays of `text` nest (strings skipped)."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def encode(value: Any, what: str) -> tuple[str, int, Any]:
    """`value` as JSON text, its size in UTF-8 bytes, and the value as every reader will
    decode it: `encode_marked` without the mark."""
    text, size, decoded, _ = encode_marked(value, what)
    return text, size, decoded


def encode_marked(value: Any, what: str) -> tuple[str, int, Any, bool]:
    """`value` as JSON text (keys sorted, unless the json module writes it), its size in
    UTF-8 bytes, the value as every reader will decode it, and whether the text is the
    canonical JSON of that value, which PostgreSQL's content hash covers
    (integrity.hashing.canonical_json): orjson's text with sorted keys is, unless a number
    had to be rewritten or the json module wrote it.

    Refused (EventValidationError, saying what to do): values JSON cannot carry (sets,
    bytes, objects, NaN and Infinity), values that would read back different (keys that
    are not strings; tuples, which come back as lists), nesting deeper than
    MAX_NESTING_DEPTH, integers of more than 4,300 digits, and strings or keys holding NUL
    or a lone surrogate, which neither UTF-8 nor PostgreSQL text can hold. -0.0 is written
    as 0.0 (PostgreSQL has no negative zero; the two compare equal).
    """
    try:
        # orjson refuses keys that are not str, lone surrogates, ints beyond 64 bits and
        # foreign types, but writes NaN as null and tuples as lists: the comparison below
        # catches those.
        data = orjson.dumps(value, option=_SORTED)
    except TypeError:
        text = _encode_slowly(value, what)
        decoded = decode(text)  # orjson.loads would turn ints beyond 64 bits into floats
        canonical = False
    else:
        written = data.decode()
        text = _checked(written, what)
        decoded = orjson.loads(text)
        canonical = text is written and "e+" not in text and "-0.0" not in text
    if decoded != value:
        _encode_slowly(value, what)  # the precise error, if there is one (NaN, objects...)
        raise EventValidationError(f"{what} would not read back as written: {_difference(value)}")
    return text, len(text) if text.isascii() else _utf8_size(text, what), decoded, canonical


def encode_serialized(value: dict[str, Any], what: str) -> tuple[str, int, Any, bool]:
    """`encode_marked` of a payload pydantic's JSON mode wrote (a typed event's): plain
    dicts with str keys, lists, str, int, float, bool and None, which orjson writes as
    they read back, types included, except NaN and infinity (written as null): text
    without null is returned with `value` as its decoded value, without reading it back.
    Anything else (null, an integer beyond 64 bits, a lone surrogate, a number jsonb would
    rewrite) takes `encode_marked`'s path."""
    try:
        data = orjson.dumps(value, option=_SORTED)
    except TypeError:
        return encode_marked(value, what)
    # (str, not bytes: `in` on bytes first tries the needle as an int, raising and clearing
    # a TypeError each time)
    text = data.decode()
    if "null" in text or "e+" in text or "-0.0" in text:
        return encode_marked(value, what)
    if (text.count("{") + text.count("[") > MAX_NESTING_DEPTH
            or "\\u0000" in text):  # (the rare deep or NUL-holding text: the full checks)
        _checked(text, what)
    return text, len(data), value, True


def _encode_slowly(value: Any, what: str) -> str:
    """The json module's text for `value`, or the error that says what is wrong with it."""
    try:
        text = _ENCODER.encode(value)
    except TypeError as exc:
        raise EventValidationError(
            f"{what} is not JSON-serialisable ({exc}); use lists instead of sets, "
            "base64 text or an artifact reference instead of bytes"
        ) from None
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as exc:
        if "Circular" in str(exc):
            advice = "a value contains itself; pass a tree, not a graph"
        elif "digits" in str(exc):
            advice = "integers have at most 4,300 digits; record a huge number as a string"
        else:
            advice = "NaN and Infinity have no JSON form, record them as null or as a string"
        raise EventValidationError(f"{what} is not valid JSON ({exc}); {advice}") from None
    text = _checked(text, what)
    _utf8_size(text, what)
    return text


def _checked(text: str, what: str) -> str:
    """`text` with jsonb-unsafe numbers rewritten, once its depth and NULs are checked."""
    if "e+" in text or "-0.0" in text:
        text = _JSONB_UNSAFE.sub(_jsonb_safe, text)
    if (text.count("{") + text.count("[") > MAX_NESTING_DEPTH
            and _depth(text) > MAX_NESTING_DEPTH):
        raise _too_deep(what)
    if "\\u0000" in text and _NUL.search(text):
        raise EventValidationError(
            f"{what} contains a NUL character (\\u0000) in a string or key; PostgreSQL "
            "cannot store it. Remove it, or encode binary data as base64 text"
        )
    return text


def _utf8_size(text: str, what: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise _surrogate(what, exc) from None


def refuse_lone_surrogates(source: Any, what: str) -> None:
    """Refuse `source` if it holds a lone surrogate anywhere (run when a typed payload's
    text holds U+FFFD: pydantic's JSON mode silently puts it in place of one in a key)."""
    try:
        _LENIENT.encode(source).encode()
    except UnicodeEncodeError as exc:
        raise _surrogate(what, exc) from None
    except (TypeError, ValueError, RecursionError):
        return  # not plain enough to check; pydantic validated it


def _difference(value: Any, path: str = "") -> str:
    """Where `value` stops being plain JSON (keys that are not str, tuples)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (
                    f"key {key!r} at {path or 'top level'} is a {type(key).__name__}, which "
                    "JSON turns into a string; use string keys"
                )
            found = _difference(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list | tuple):
        if isinstance(value, tuple):
            return f"{path or 'a value'} is a tuple, which reads back as a list; use a list"
        for index, item in enumerate(value):
            found = _difference(item, f"{path}[{index}]")
            if found:
                return found
    return "" if path else "use plain JSON values (dict with str keys, list, str, int, float)"


def _surrogate(what: str, exc: UnicodeEncodeError) -> EventValidationError:
    return EventValidationError(
        f"{what} contains a lone surrogate ({exc.object[exc.start]!r}) in a string or "
        "key, which is not Unicode text; decode bytes with errors='replace' or "
        "encode them as base64 before recording them"
    )


def _too_deep(what: str) -> EventValidationError:
    return EventValidationError(
        f"{what} nests objects and arrays more than {MAX_NESTING_DEPTH} levels deep; "
        "flatten it, or put the document in the artifact store and record its URI"
    )


def same(a: Any, b: Any) -> bool:
    """Equal JSON values of the same types (1, 1.0 and True differ), key order aside."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(item, b[key]) for key, item in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
