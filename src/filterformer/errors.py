"""The library's exceptions: every message names the bad input and what to do about it."""


class FilterformerError(Exception):
    """Base class for errors a user can fix (bad path, bad file, bad config value)."""


class DataError(FilterformerError, ValueError):
    """A dataset folder, image, mask or anomaly map is missing or malformed."""


class ConfigError(FilterformerError, ValueError):
    """An unknown name or an inconsistent value in the configuration."""


class CheckpointError(FilterformerError, ValueError):
    """A checkpoint or weights file is missing or does not fit the model."""


class SubmissionError(FilterformerError, ValueError):
    """A benchmark-server submission folder fails one of the upload checks."""


class NonFiniteLossError(FilterformerError, RuntimeError):
    """The training loss became NaN or infinite (the message says what the run folder kept)."""


class FolderLockedError(FilterformerError, RuntimeError):
    """Another process is writing the run or output folder (its message names that process)."""
