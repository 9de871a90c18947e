"""What a person reads: library notices as plain lines, and text made safe for any terminal."""

from __future__ import annotations

import logging
import re
import sys

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_HANDLER_NAME = "cifar_tl.console"


def safe_text(text: object, encoding: str | None = None) -> str:
    """``text`` with control characters escaped (a class name from a folder or a shared checkpoint
    can carry terminal escape codes) and, for ``encoding``, every character it cannot encode
    written as an escape: printing never fails, whatever PYTHONIOENCODING says."""
    s = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    if encoding:
        s = s.encode(encoding, errors="backslashreplace").decode(encoding)
    return s


def say(text: object = "", file=None) -> None:
    """print() for anything that may hold outside text: escaped, and never an encoding error."""
    file = file or sys.stdout
    file.write(safe_text(text, getattr(file, "encoding", None) or "utf-8") + "\n")
    file.flush()


def tell(en: object, zh: object, file=None) -> None:
    """A sentence for a student in both of the course's languages: the English, then its Chinese
    on the next line, indented, as the exercises' verdicts are said. The notebooks print through
    it so that their output reads in either language (a test requires Chinese in every one)."""
    if not str(zh).strip():
        raise ValueError(f"tell() needs the Chinese of {str(en)[:60]!r}")
    say(f"{en}\n    {zh}", file)


class _SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record))


class _SafeStream(logging.Handler):
    """Writes each notice to ``stream``, or to whatever ``sys.stdout`` is at that moment (a notebook
    cell's output, a test's capture), never failing on the terminal's encoding."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record), self.stream or sys.stdout)
        except Exception:  # a closed stream: notices are never worth a crash
            pass


def enable_notices(level: int = logging.INFO, stream=None, prefix: str = "") -> None:
    """Show cifar_tl's notices (the profile chosen, cache hits, fallbacks) as plain lines.

    The library only logs; a program decides what to show. The CLI and the notebooks call it
    (``stream=None``: the current ``sys.stdout``). Calling it again replaces the earlier handler.
    """
    logger = logging.getLogger("cifar_tl")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler = _SafeStream(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_SafeFormatter(prefix + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
