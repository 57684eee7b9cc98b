"""Errors a user can cause and fix: the entry points print them as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the configuration or the environment, with a message that says what to do."""


class ConfigError(UserError):
    """A configuration value is out of range or inconsistent."""


class DataError(UserError):
    """A dataset is missing, corrupt or cannot be downloaded."""
