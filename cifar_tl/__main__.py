"""Entry point for ``python -m cifar_tl``."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is still importing
    sys.exit(1)

sys.exit(main())
