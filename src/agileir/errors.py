"""Exceptions that carry a one-line, actionable message for the user.

The command line prints these without a traceback; library users can catch them.
"""


class AgileIRError(Exception):
    """Base class for errors caused by user input (files, weights, options)."""


class ModelLoadError(AgileIRError, ValueError):
    """Weights that cannot be turned into a model (unknown layout, wrong shapes)."""


class ConfigError(AgileIRError, ValueError):
    """An impossible model or run configuration."""


class ImageError(AgileIRError, ValueError):
    """An image that cannot be read, written or used (format, size, channels)."""
