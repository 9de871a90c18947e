"""Entry point for ``python -m cifar_tl``."""

import os
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing: one line, as any interruption
    sys.stderr.write("error: interrupted before the command started\n")
    sys.stderr.flush()
    os._exit(1)  # at once: a half-imported torch must not run its exit handlers

sys.exit(main())
