"""Dagster code versions of the pipeline's assets: sha256 over the code that shapes each one.

Where an event records a code hash (feature code, training function), the asset uses that one.
"""

import hashlib
from pathlib import Path

__all__ = ["module_code_version"]


def module_code_version(module_file: str) -> str:
    """sha256 of a module's source file: any edit to the module is a new code version."""
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()
