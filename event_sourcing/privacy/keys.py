"""The subject key table: one data key per subject (by keyed hash), wrapped by the KEK.

The only data the store ever deletes. Created with the store's schema (stores/sqlite.py,
stores/postgres.py run DDL), so roles without CREATE can append personal data; stores made
before that get it on first use (by a role that may create it) or from `mlevents grant`.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from event_sourcing.errors import EventValidationError
from event_sourcing.privacy.crypto import KeyProvider, LocalKeyProvider, unwrap_key, wrapped_text

if TYPE_CHECKING:
    from event_sourcing.stores.store import EventStore

TABLE = "mlevents_subject_keys"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key_id       TEXT PRIMARY KEY,
    subject_hash TEXT NOT NULL UNIQUE,
    wrapped_key  TEXT NOT NULL,
    kek_id       TEXT NOT NULL,
    created_at   TEXT NOT NULL
)"""
_LOCK = 0x6D6C6B79  # "mlky": serializes the CREATE on PostgreSQL
# The store's secret for keyed hashes of subject ids: a row never deleted (its subject
# hash is no hex digest, so no forget can match it).
_HASH_KEY_ID = "hash-key"
_HASH_KEY_SUBJECT = "-"
_HASH_CACHE = 10_000
KEY_CACHE_SECONDS = 1.0
KEY_CACHE_TIME = timedelta(seconds=KEY_CACHE_SECONDS)
_SELECT = f"SELECT key_id, wrapped_key, kek_id FROM {TABLE}"


def check_subject_id(subject_id: object) -> None:
    if not isinstance(subject_id, str) or not subject_id:
        raise EventValidationError(f"a subject id must be a non-empty string, got {subject_id!r}")


class SubjectKeys:
    """Data keys of subjects: created on a subject's first personal event, deleted by forget."""

    def __init__(self, store: EventStore, provider: KeyProvider | None) -> None:
        self.store = store
        self._provider = provider
        self._provider_read = provider is not None
        self._ready = False
        self._hash_key: bytes | None = None
        self._hashes: dict[str, str] = {}  # subject id -> keyed hash (never changes)
        # subject hash -> (valid until, key id, key): the appends' key cache (key_for)
        self._live: dict[str, tuple[datetime, str, AESGCM]] = {}
        self._forgets = 0
        # Unwrapped keys by (key id, wrapped text); every use first reads the table, so
        # a key forgotten by another process is never used from here.
        self._unwrapped: dict[tuple[str, str], AESGCM] = {}

    @property
    def provider(self) -> KeyProvider | None:
        if not self._provider_read:
            self._provider = LocalKeyProvider.from_env()
            self._provider_read = True
        return self._provider

    def _required_provider(self) -> KeyProvider:
        provider = self.provider
        if provider is None:
            from event_sourcing.errors import KeyEncryptionKeyError

            raise KeyEncryptionKeyError(
                "this event holds personal data of a subject, and no key-encryption key is "
                "configured to encrypt it: set $MLEVENTS_KEK to base64 of 32 random bytes "
                "(or pass key_provider= to connect); see docs/privacy.md"
            )
        return provider

    # -- the table ---------------------------------------------------------------------
    def table_exists(self) -> bool:
        if self._ready:
            return True
        if self.store.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 WHERE to_regclass(?) IS NOT NULL"
        self._ready = bool(self.store.recorder.query(sql, [TABLE]))
        return self._ready

    def holds_any(self) -> bool:
        """Whether any key (or the store's hash secret) was ever made here: without one,
        nothing was sealed or forgotten, and no subject can be named without a KEK."""
        return self.table_exists() and bool(
            self.store.recorder.query(f"SELECT 1 FROM {TABLE} LIMIT 1", [])
        )

    def _ensure_table(self) -> None:
        if self.table_exists():
            return
        with self.store.transaction() as tx:
            tx.lock(_LOCK)
            tx.execute(DDL)
        self._ready = True

    def _rows(self, where: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self.store.recorder.query(f"{_SELECT} WHERE {where}", params)

    def _insert(self, key_id: str, subject_hash: str, key: bytes, provider: KeyProvider) -> None:
        wrapped = wrapped_text(provider, key, key_id)
        now = self.store.clock().astimezone(UTC).isoformat(timespec="microseconds")
        with self.store.transaction() as tx:
            _secure_delete(tx)
            tx.execute(
                f"INSERT INTO {TABLE} (key_id, subject_hash, wrapped_key, kek_id, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [key_id, subject_hash, wrapped, provider.kek_id, now],
            )

    def _unwrap(self, row: tuple[Any, ...]) -> AESGCM:
        key_id, wrapped, kek_id = row
        cached = self._unwrapped.get((key_id, wrapped))
        if cached is None:
            cached = AESGCM(unwrap_key(self.provider, wrapped, kek_id, key_id))
            self._unwrapped[(key_id, wrapped)] = cached
        return cached

    # -- subjects ----------------------------------------------------------------------
    def subject_hash(self, subject_id: str) -> str:
        """The keyed hash (HMAC-SHA256 under the store's secret) naming a subject."""
        check_subject_id(subject_id)
        cached = self._hashes.get(subject_id)
        if cached is not None:
            return cached
        if self._hash_key is None:
            self._ensure_table()
            for _ in range(2):
                rows = self._rows("key_id = ?", [_HASH_KEY_ID])
                if rows:
                    key_id, wrapped, kek_id = rows[0]
                    self._hash_key = unwrap_key(self.provider, wrapped, kek_id, key_id)
                    break
                self._insert(
                    _HASH_KEY_ID, _HASH_KEY_SUBJECT, secrets.token_bytes(32),
                    self._required_provider(),
                )
        assert self._hash_key is not None
        found = hmac.digest(self._hash_key, subject_id.encode(), "sha256").hex()
        if len(self._hashes) >= _HASH_CACHE:
            self._hashes.clear()
        self._hashes[subject_id] = found
        return found

    def key_for(self, subject_id: str) -> tuple[str, AESGCM]:
        """The live data key of a subject, made if it has none (a fresh one after forget).

        Remembered for KEY_CACHE_SECONDS (by the store's clock) for appends: a forget in
        this process drops it at once; one in another process is seen within that time
        (until then, appends for the subject are sealed under the destroyed key: erased)."""
        subject_hash = self.subject_hash(subject_id)
        now, forgets = self.store.clock(), self._forgets
        cached = self._live.get(subject_hash)
        if cached is not None and now < cached[0]:
            return cached[1], cached[2]
        while True:
            rows = self._rows("subject_hash = ?", [subject_hash])
            if rows:
                key = rows[0][0], self._unwrap(rows[0])
                if len(self._live) >= _HASH_CACHE:
                    self._live.clear()
                if forgets == self._forgets:  # no forget here since the read: not stale
                    self._live[subject_hash] = (now + KEY_CACHE_TIME, *key)
                return key
            self._insert(
                secrets.token_hex(8), subject_hash, AESGCM.generate_key(bit_length=256),
                self._required_provider(),
            )

    def keys(self, key_ids: set[str]) -> dict[str, AESGCM]:
        """The data keys still held among `key_ids` (forgotten ones are absent)."""
        if not key_ids or not self.table_exists():
            return {}
        ids = sorted(key_ids)
        found: dict[str, AESGCM] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self._rows(f"key_id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((row[0], self._unwrap(row)) for row in rows)
        return found

    def destroy(self, subject_hash: str) -> list[str]:
        """Delete the subject's keys (SQLite: overwriting the bytes); their ids."""
        self._ensure_table()
        self._forgets += 1
        with self.store.transaction() as tx:
            _secure_delete(tx)
            rows = tx.execute(
                f"SELECT key_id FROM {TABLE} WHERE subject_hash = ?", [subject_hash]
            ).fetchall()
            tx.execute(f"DELETE FROM {TABLE} WHERE subject_hash = ?", [subject_hash])
        ids = [row[0] for row in rows]
        self._forgets += 1
        self._live.pop(subject_hash, None)
        for cached in [k for k in self._unwrapped if k[0] in ids]:
            del self._unwrapped[cached]
        checkpoint = getattr(self.store.recorder, "checkpoint", None)
        if checkpoint is not None:
            checkpoint()  # the WAL still holds the deleted row's old page until then
        return ids


def _secure_delete(tx: Any) -> None:
    """SQLite: deleted bytes are overwritten with zeros from now on, on this connection (left
    on: later page rebalancing of the key table must not leave copies behind either)."""
    if tx.dialect == "sqlite":
        tx.execute("PRAGMA secure_delete = ON")
