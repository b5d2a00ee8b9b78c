"""``python -m sparsify`` — the same as the ``sparsify`` command (see `sparsify.cli`)."""

import sys

from .cli import main

sys.exit(main())
