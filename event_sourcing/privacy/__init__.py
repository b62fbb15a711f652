"""Personal data: Personal() marks, per-subject AES-256-GCM keys, forgetting by crypto-shredding.

See docs/privacy.md for what is encrypted, how to plug a KMS, and what forgetting guarantees.
"""

from event_sourcing.privacy.crypto import KEK_ENV, KeyProvider, LocalKeyProvider
from event_sourcing.privacy.marking import (
    ERASED_OBJECT,
    ERASED_TEXT,
    SUBJECT_METADATA_KEY,
    Personal,
    is_erased,
    personal_spec,
)

__all__ = [
    "ERASED_OBJECT",
    "ERASED_TEXT",
    "KEK_ENV",
    "SUBJECT_METADATA_KEY",
    "KeyProvider",
    "LocalKeyProvider",
    "Personal",
    "is_erased",
    "personal_spec",
]
