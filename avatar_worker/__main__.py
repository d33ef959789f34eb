"""``python -m avatar_worker``: see :mod:`avatar_worker.cli`."""

import sys

from .cli import main

sys.exit(main())
