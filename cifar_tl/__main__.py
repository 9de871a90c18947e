"""Entry point for ``python -m cifar_tl``."""

import sys

from .cli import main

sys.exit(main())
