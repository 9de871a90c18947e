"""Entry point for ``python -m cifar_tl``.

Python imports the package first: its ``threads.set_defaults()`` has run before the imports below
load torch (tests/test_threads.py checks that the command's process gets the defaults).
"""

import signal
import sys

# A Ctrl-C while torch and the rest import (the first seconds of any command) would stop an
# extension module half-loaded: a traceback, or a later "cannot load module more than once".
# So the imports run with Ctrl-C only noted, and a noted one ends the command in one line.
_pressed: list[int] = []
_default = signal.signal(signal.SIGINT, lambda signum, frame: _pressed.append(signum))
try:
    from . import pipeline  # noqa: F401  (everything any command needs, imported once, here)
    from .cli import main
finally:
    signal.signal(signal.SIGINT, _default)
if _pressed:
    sys.stderr.write("error: interrupted before the command started\n")
    sys.exit(1)

sys.exit(main())
