"""The exceptions for known failures: each carries a one-line message saying what to do.

The CLI prints the message of any ``CifarTLError`` on one line and exits 1, or 2 for a
``ConfigError`` (a bad argument). Library code raises the most specific class, so notebooks and
other programs can catch exactly the failure they can handle.
"""


class CifarTLError(Exception):
    """A known failure. The CLI prints its message on one line and exits 1 (no traceback)."""


class ConfigError(CifarTLError, ValueError):
    """An argument or configuration value is invalid (the CLI exits 2)."""


class UnknownBackbone(ConfigError):
    """A backbone name torchvision does not know; the message suggests the closest names."""


class AssetMissingError(CifarTLError):
    """A dataset or pretrained weights are not on disk and could not be downloaded."""


class DataError(CifarTLError):
    """A dataset is present but cannot be used as it is (an image folder without a class, say)."""


class ImageError(CifarTLError):
    """A file given as an image cannot be read as one."""


class CheckpointError(CifarTLError):
    """A checkpoint is unreadable, unsafe, or made for a different model."""


class StorageError(CifarTLError):
    """A file cannot be written: a full disk, a read-only folder, a path that is a file."""


class TrainingDiverged(CifarTLError):
    """The loss became NaN or infinite; the last good epoch is kept."""


class OutOfMemory(CifarTLError):
    """A batch does not fit in the memory of the device, or would not (estimated before allocating)."""


class Interrupted(CifarTLError):
    """Ctrl-C, a kernel interrupt or SIGTERM stopped a job; what was completed is on disk."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single line of at most ``limit`` characters (for messages quoting other errors)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
