"""Errors of reproducible training and inference logging.

All derive from EventStoreError; each message says what was wrong and what to do.
"""

from __future__ import annotations

from event_sourcing.errors import EventStoreError


class TrainingError(EventStoreError):
    """A training-run operation was refused or could not be carried out."""


class TrainingNotFoundError(TrainingError, LookupError):
    """No training_started event exists for the given training id."""


class TrainingStateError(TrainingError):
    """The run is not in a state that allows the operation (e.g. stepping a completed run)."""


class TrainingFunctionNotFoundError(TrainingError, LookupError):
    """A run names a training function that is neither registered nor importable."""


class InferenceNotFoundError(EventStoreError, LookupError):
    """No logged prediction exists for the given inference id."""
