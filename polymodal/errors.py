"""The one base class of errors whose message is written for a person.

The `polymodal` command prints such an error as one line and exits 2 (`--debug` shows the
traceback); anything else is a bug and keeps its traceback. Torch-free, so the command can catch
these without importing the packages that raise them.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked (a config, a path, a dataset) rather than in polymodal; the
    message names what to change."""


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range; the
    message names the field (`model.num_latents: expected int, got 'many'`)."""
