"""User-facing errors.

Every mistake a user can make (bad file, bad config, unplugged port) raises one of these; the CLI
prints ``str(error)`` as a single line and exits non-zero, with no traceback. Anything else is a bug
and keeps its traceback.
"""


class EdgeError(Exception):
    """Base for errors caused by input or environment, not by a bug."""


class DataError(EdgeError):
    """A data set or frames file is missing, corrupt or of the wrong shape."""


class ModelError(EdgeError):
    """A model file cannot be loaded or uses something we do not support."""


class BundleError(EdgeError):
    """A bundle is missing files, altered, or incompatible."""


class ConfigError(EdgeError):
    """A config file or flag is invalid."""


class SourceError(EdgeError):
    """A frame source cannot be opened or read."""


class BackendError(EdgeError):
    """An inference backend failed or is unavailable."""
