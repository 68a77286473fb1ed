"""Errors that a user can fix. The CLI prints them as one line with exit code 2; the library raises them."""

from __future__ import annotations

from personafuse.data.jsonl import JsonlError
from personafuse.traits import PersonaError


class UserError(ValueError):
    """Bad input from the user: the message names the value and the fix."""


class ModelLoadError(UserError):
    """A model alias/path that cannot be resolved or loaded, or a checkpoint that does not fit the base."""


class ConfigError(UserError):
    """One or more invalid configuration values, collected into one message."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, PersonaError, JsonlError, FileNotFoundError)
