"""Tamper evidence for the event log: per-stream hash chains, Merkle seals, verification.

`hashing` defines the bytes (docs/integrity.md); `audit` seals and verifies a store.
"""
