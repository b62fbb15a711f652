"""The SQLite store's shared texts (schema v7): a stream type, an event type or a metadata
object is stored once, in `event_texts`, and an event row holds its number. A realistic log
repeats all three in nearly every row (an asset's metadata, run id included, is the same for
each event of a run), so this is most of what a row held besides its payload.

This module owns the numbering of texts, the cache of `event_texts` each recorder keeps
(numbers never change: the table only grows, guarded like event_store; its DDL is in
sqlite_schema) and the decoding of a page's columns through it. A number a write
transaction gave is cached only once that transaction committed.

An event's column holding text instead of a number (someone wrote it there directly) reads
as that text, so `mlevents verify` sees what was written and names the event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from event_sourcing.stores.recorder import PageColumns
from event_sourcing.stores.sqlite_schema import time_of


def text_of(column: str) -> str:
    """SQL reading a shared-text column as its text (for the few statements that need the
    text in SQL; pages of events are decoded in Python, through the cache)."""
    return f"coalesce((SELECT t.text FROM event_texts AS t WHERE t.id = {column}), {column})"


# RecordedEvent's fields (the last is recorded_schema_version), the payload as its UTF-8
# bytes (decoded a page at a time: recorder.fetch_events; ids, times and the shared texts'
# numbers by SharedTexts.page).
COLUMNS = (
    "id, stream_id, stream_type, version, position, event_type, schema_version, "
    "CAST(payload AS BLOB), metadata, created_at, correlation_id, causation_id, "
    "schema_version, occurred_at"
)


# Texts a recorder keeps at most, each way: past this it starts again empty (a log whose
# every append brings new metadata would otherwise grow a long-lived process without end).
MAX_CACHED = 100_000


class SharedTexts:
    """The numbers and texts of one store's `event_texts`, as committed. Thread-safe: a
    dictionary is only added to, each addition one atomic update, or replaced by an empty
    one when full; each call works on the dictionaries it started with."""

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        self._bytes: dict[int, bytes] = {}

    def _known(self) -> dict[str, int]:
        if len(self._numbers) >= MAX_CACHED:
            self._numbers = {}
        return self._numbers

    # -- writing: inside a write transaction ----------------------------------------------
    def numbers(
        self, connection: sqlite3.Connection, texts: Iterable[str], fresh: dict[str, int]
    ) -> Callable[[str], int]:
        """Text -> its number, for each of `texts`; one stored now if it has none (in this
        transaction: the new ones go to `fresh`, to be `learn`ed once it commits)."""
        known = self._known()
        missing = [text for text in texts if text not in known]
        if not missing:  # (the usual case)
            return known.__getitem__
        for text in missing:
            if text in fresh:
                continue
            row = connection.execute(
                "SELECT id FROM event_texts WHERE text = ?", (text,)
            ).fetchone()
            if row is not None:  # committed by another connection (or process)
                known[text] = row[0]
            else:
                fresh[text] = connection.execute(
                    "INSERT INTO event_texts (text) VALUES (?)", (text,)
                ).lastrowid or 0
        return lambda text: fresh[text] if text in fresh else known[text]

    def learn(self, fresh: dict[str, int]) -> None:
        """The numbers a write transaction gave, now that it committed."""
        self._known().update(fresh)

    # -- reading ------------------------------------------------------------------------
    def known_numbers(
        self, connection: sqlite3.Connection, texts: Collection[str]
    ) -> dict[str, int]:
        """The number of each of `texts` that has one (a text without one is in no event)."""
        known = self._known()
        missing = [text for text in texts if text not in known]
        for start in range(0, len(missing), 500):
            part = missing[start:start + 500]
            known.update(connection.execute(
                f"SELECT text, id FROM event_texts WHERE text IN ({','.join('?' * len(part))})",
                part,
            ).fetchall())
        return {text: known[text] for text in texts if text in known}

    def _resolved(
        self, connection: sqlite3.Connection, values: Sequence[Any], utf8: bool
    ) -> list[Any]:
        """`values` (a page's column) as their texts (`utf8`: their UTF-8 bytes), the
        numbers not cached yet read first."""
        if len(self._texts) >= MAX_CACHED:
            self._texts, self._bytes = {}, {}
        texts, raw_texts = self._texts, self._bytes
        table: dict[int, Any] = raw_texts if utf8 else texts
        distinct = set(values)
        missing = [v for v in distinct if type(v) is int and v not in table]
        for start in range(0, len(missing), 500):
            part = missing[start:start + 500]
            for number, raw in connection.execute(
                f"SELECT id, CAST(text AS BLOB) FROM event_texts "
                f"WHERE id IN ({','.join('?' * len(part))})",
                part,
            ):
                texts[number] = raw.decode("utf-8", "surrogatepass")
                raw_texts[number] = raw
        if all(type(v) is int and v in table for v in distinct):  # (the usual case: in C)
            return list(map(table.__getitem__, values))
        # Text written in place of a number reads as itself, a number without a text as
        # its digits: what verify then finds differs from what was hashed.
        if utf8:
            return [
                table[value] if value in table else (
                    value.encode("utf-8", "surrogatepass") if type(value) is str
                    else value if type(value) is bytes else str(value).encode()
                )
                for value in values
            ]
        return [
            table[value] if value in table else (
                value.decode("utf-8", "surrogatepass") if type(value) is bytes else str(value)
            )
            for value in values
        ]

    def text(self, connection: sqlite3.Connection, value: Any) -> str:
        """One stored column value as its text."""
        text = self._texts.get(value)
        return text if text is not None else self.texts(connection, [value])[0]

    def texts(self, connection: sqlite3.Connection, values: Sequence[Any]) -> list[Any]:
        """Stored column values as their texts."""
        return self._resolved(connection, values, utf8=False)

    def utf8(self, connection: sqlite3.Connection, values: Sequence[Any]) -> list[Any]:
        """Stored column values as their texts' UTF-8 bytes."""
        return self._resolved(connection, values, utf8=True)

    def page(
        self, connection: sqlite3.Connection
    ) -> Callable[[Sequence[Sequence[Any]]], PageColumns]:
        """The decoder of a page of rows of COLUMNS on `connection`."""

        def decode(rows: Sequence[Sequence[Any]]) -> PageColumns:
            ids = [
                f"{(h := value.hex())[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
                if type(value := row[0]) is bytes else str(value)
                for row in rows
            ]
            seen: dict[Any, Any] = {}  # a batch's events share their time
            times = [
                seen[value] if (value := row[9]) in seen
                else seen.setdefault(value, time_of(value))
                for row in rows
            ]
            occurred = [
                created if (value := row[13]) is None
                else seen[value] if value in seen else seen.setdefault(value, time_of(value))
                for row, created in zip(rows, times, strict=True)
            ]
            return PageColumns(
                ids, self.texts(connection, [row[2] for row in rows]),
                self.texts(connection, [row[5] for row in rows]),
                self.utf8(connection, [row[8] for row in rows]), times, occurred,
            )

        return decode


