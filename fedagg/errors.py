"""The exceptions every layer may raise; this module imports nothing from fedagg.

- :class:`ConfigError`: a config value that cannot work, raised before any
  runtime starts or any client trains (the CLI prints it as one line, exit 2).
- :class:`InvalidUpdate`: a client reply the server refuses (logged, counted).
- :class:`ResumeError`: a checkpoint that this config cannot continue exactly.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad config: raised before any training starts."""


class InvalidUpdate(ValueError):
    """A client reply that fails validation; the round goes on without it."""


class ResumeError(ValueError):
    """A resume that could not continue exactly."""
