"""Exception types raised for bad user input (files, prompts, settings)."""


class NewBieError(Exception):
    """Base class: a problem with something the user supplied, with a message that names it."""


class CheckpointError(NewBieError, ValueError):
    """A weight file is missing, unreadable, truncated, of the wrong model, or has wrong keys or shapes."""


class ConfigError(NewBieError, ValueError):
    """A setting (dtype, resolution, step count...) is not valid."""
