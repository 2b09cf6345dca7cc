"""The exceptions autoprune raises on purpose.

Every error a user can cause derives from :class:`AutoPruneError`; the CLI turns one into a
single line on stderr and exit code 2. Anything else that escapes is a bug.
"""

from __future__ import annotations


class AutoPruneError(Exception):
    """Root of autoprune's own errors; the message says what to do about it."""


class UnknownNameError(AutoPruneError, KeyError):
    """A registry lookup (model, dataset, ...) with a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(AutoPruneError):
    """A dataset directory or file is missing, unreadable or malformed."""


class ModelError(AutoPruneError):
    """A model factory failed or returned something that is not an ``nn.Module``."""


class CheckpointError(AutoPruneError):
    """A checkpoint is corrupt, is not a state_dict, or does not fit the model."""


class ConfigError(AutoPruneError, ValueError):
    """A config value out of range (a ValueError too, as a dataclass's checks raise)."""


class TaskError(AutoPruneError):
    """Your own task (``--task``) cannot be loaded, lacks what autoprune asks of it, or failed."""


class DivergedError(AutoPruneError):
    """Training produced a non-finite or exploding loss."""
