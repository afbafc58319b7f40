"""Errors a user can cause. Each message is one line naming the cause and the fix; the CLI prints it without a
traceback."""


class VanillaNetError(Exception):
    """Base class: a problem the user can fix (bad path, wrong checkpoint, bad config, bad data)."""


class ConversionError(VanillaNetError):
    """The train form cannot be converted to an equivalent deploy form (e.g. act_learn != 1)."""


class CheckpointError(VanillaNetError):
    """A checkpoint file is missing, unreadable, unsafe or does not fit the model."""


class ConfigError(VanillaNetError):
    """A configuration value, recipe or command-line option is wrong."""


class DataError(VanillaNetError):
    """A dataset path, folder layout or image is wrong."""
