"""The exceptions for known failures: each carries a one-line message saying what to do."""


class CifarTLError(Exception):
    """A known failure. The CLI prints its message on one line and exits 1 (no traceback)."""


class AssetMissingError(CifarTLError):
    """A dataset or pretrained weights are not on disk and could not be downloaded."""


class CheckpointError(CifarTLError):
    """A checkpoint is unreadable, unsafe, or made for a different model."""


class ImageError(CifarTLError):
    """A file given as an image cannot be read as one."""


class Interrupted(CifarTLError):
    """Ctrl-C, a kernel interrupt or SIGTERM stopped a job; what was completed is on disk."""


class ConfigError(CifarTLError, ValueError):
    """An argument or configuration value is invalid (the CLI exits 2)."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single line of at most ``limit`` characters (for messages quoting other errors)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."
